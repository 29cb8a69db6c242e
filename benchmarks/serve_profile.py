"""Where a decode step of `tasktune serve` goes: the engine alone (no HTTP), slots or dynamic decoding, at a few
batch sizes, with CUDA-event step times and a torch.profiler table of the busiest kernels.

    python benchmarks/serve_profile.py RUN --rows 1,32 --decode slots --out prof.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--rows", default="1,32")
    parser.add_argument("--decode", default="slots")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--decode-weights", default="nf4", choices=("nf4", "bf16"),
                        help="bf16: the 4-bit base dequantised once (tasktune serve --decode-weights bf16)")
    parser.add_argument("--fuse", default="off", choices=("on", "off"),
                        help="on: the decode step's decoder layers compiled (tasktune serve --decode-compile on)")
    parser.add_argument("--out", help="profiler tables go here")
    args = parser.parse_args()

    import torch

    from tasktune.tuning.inference.bank import load_bank
    from tasktune.tuning.inference.engine import Engine, Request, SamplingParams
    from tasktune.tuning.data import encode_prompts, format_prompt

    bank = load_bank([(None, args.run)])
    if args.decode_weights == "bf16":
        from tasktune.tuning.model.dequantize import dequantize_4bit_linears

        dequantize_4bit_linears(bank.model)
    name = next(iter(bank.runs))
    tok = bank.tokenizer
    ids = encode_prompts(tok, [format_prompt(tok, "步骤#理解并基于输入拆分函数参数*语音#查查济南的人数", [])], "auto")[0]
    started = time.perf_counter()
    engine = Engine(bank, max_batch_size=args.max_batch_size, decode=args.decode,
                    slot_width=len(ids) + args.tokens + 8, fuse=args.fuse).start()
    compiled = ", layers compiled" if args.fuse == "on" else ""
    print(f"engine ready in {time.perf_counter() - started:.1f} s (graphs captured{compiled})", flush=True)
    steps: list[tuple[int, float]] = []
    prefills: list[float] = []  # admissions: prefill, placement in the slots, first token
    engine.stats.observers.append(lambda n, v: steps.append((engine.stats.running, v)) if n == "step_seconds" else None)
    engine.stats.observers.append(lambda n, v: prefills.append(v) if n == "prefill_seconds" else None)

    def wave(rows: int) -> None:
        done = [threading.Event() for _ in range(rows)]
        for event in done:
            engine.submit(Request(ids, name, SamplingParams(max_new_tokens=args.tokens, ignore_eos=True),
                                  lambda e, ev=event: ev.set() if e.finish_reason else None))
        for event in done:
            event.wait(300)

    report = []
    for rows in [int(r) for r in args.rows.split(",")]:
        wave(rows)  # warm-up (graph capture, allocator)
        steps.clear()
        prefills.clear()
        started = time.perf_counter()
        wave(rows)
        wall = time.perf_counter() - started
        full = [v for n, v in steps if n == rows] or [0.0]
        line = (f"decode={engine.decode} weights={args.decode_weights} fuse={args.fuse} rows={rows}: "
                f"step p50 {1000 * statistics.median(full):.1f} ms, "
                f"admissions {len(prefills)} taking {1000 * sum(prefills):.1f} ms in all "
                f"(largest {1000 * max(prefills, default=0):.1f} ms), "
                f"{rows * args.tokens / wall:.0f} tokens/s in {wall:.2f} s")
        print(line, flush=True)
        report.append(line)
        if torch.cuda.is_available():
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                wave(rows)
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
            report.append(table)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8), flush=True)
    engine.shutdown()
    if args.out:
        Path(args.out).write_text("\n\n".join(report), encoding="utf-8")


if __name__ == "__main__":
    main()
