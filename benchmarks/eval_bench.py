"""Eval generation benchmark (issues #4, #6): batched greedy generation (`tuning.model.generate.generate_batched`,
the path `tasktune eval` takes) vs the reference recipe's one-prompt-at-a-time `model.generate` loop, on the
same prompts, model and prefix; checks that both give the same answers and reports the speed-up.

    python benchmarks/eval_bench.py --size 6b --model-dir /tmp/glm6b --out $OUT/eval.json   # GPU machine
    python benchmarks/eval_bench.py --tiny                                                  # CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmodel  # noqa: E402

CUDA = torch.cuda.is_available()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@torch.inference_mode()
def generate_one_by_one(model, tokenizer, prompts: list[str], max_new_tokens: int,
                        margins: list[float] | None = None) -> list[str]:
    """The reference recipe's loop: one prompt, one `generate` call, greedy. `margins` collects the gap between
    the best and second-best logit of each answer's first token (near-ties flip under other kernels)."""
    device = next(model.parameters()).device
    answers = []
    for prompt in prompts:
        batch = tokenizer(prompt, return_tensors="pt").to(device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             output_scores=margins is not None, return_dict_in_generate=True)
        if margins is not None:
            top = out.scores[0][0].float().topk(2).values
            margins.append(float(top[0] - top[1]))
        answers.append(tokenizer.decode(out.sequences[0, batch["input_ids"].shape[1]:],
                                        skip_special_tokens=True).strip())
    return answers


def first_token(text: str, tokenizer) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:1]


def profile_batched(model, tokenizer, prompts, batch_size: int, kwargs: dict, path: Path) -> None:
    """torch.profiler over one batched generation (8 new tokens): where the decode time goes."""
    from torch.profiler import ProfilerActivity, profile

    from tasktune.tuning.model.generate import generate_batched

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        generate_batched(model, tokenizer, prompts, batch_size=batch_size, **{**kwargs, "max_new_tokens": 8})
        sync()
        wall = time.perf_counter() - started
    events = prof.key_averages()
    device_time = sum(getattr(e, "self_device_time_total", 0) for e in events
                      if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
    sort = "self_device_time_total" if CUDA else "self_cpu_time_total"
    path.write_text(f"wall {wall:.3f}s, GPU kernel time {device_time:.3f}s, 8 new tokens, batch {batch_size}\n\n"
                    + events.table(sort_by=sort, row_limit=30, max_name_column_width=60) + "\n\nby CPU time:\n"
                    + events.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=60))


def timed(fn):
    sync()
    started = time.perf_counter()
    value = fn()
    sync()
    return value, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmodel.add_model_arguments(parser)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="32,16,8", help="batched runs to time")
    parser.add_argument("--caches", default="auto",
                        help="KV caches to time for each batch size: auto (generate_batched's default: static on "
                             "CUDA, dynamic on CPU), static, dynamic; comma-separated")
    parser.add_argument("--profile", help="write a torch.profiler table of one batched run here")
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.pre_seq_len = "tiny", min(args.pre_seq_len, 8)

    from tasktune.tuning.model.generate import generate_batched
    from tasktune.tuning.model.load import load_model, load_tokenizer
    from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix

    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix=f"glm-{args.size}-"))
    benchmodel.build_model_dir(args.size, model_dir)
    quant = None if args.quantization_bit == "none" else int(args.quantization_bit)
    model = load_model(model_dir, quantization_bit=quant)
    if not CUDA or quant is None:
        model.to("cuda" if CUDA else "cpu")
    tokenizer = load_tokenizer(model_dir, padding_side="left")
    torch.manual_seed(0)
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=args.pre_seq_len))
    model.eval()
    prompts = benchmodel.grid_prompts(args.prompts)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    new = args.max_new_tokens
    batched_kwargs = dict(max_new_tokens=new, reserved_positions=args.pre_seq_len, progress=False)

    # warm-up: kernels, cuBLAS handles, bitsandbytes' first calls
    generate_one_by_one(model, tokenizer, prompts[:2], 4)
    generate_batched(model, tokenizer, prompts[:4], batch_size=4, **{**batched_kwargs, "max_new_tokens": 4})
    # the loop first: its answers are the reference for "same answers"

    margins: list[float] = []
    loop_answers, loop_s = timed(lambda: generate_one_by_one(model, tokenizer, prompts, new, margins))
    rows = [{"mode": "one-by-one loop", "batch_size": 1, "seconds": round(loop_s, 3), "speedup": 1.0,
             "same_answers": len(prompts), "same_first_token": len(prompts)}]
    first_batched = None
    caches = {"auto": "auto", "static": "static", "dynamic": None}
    modes = [(f"generate_batched ({cache})", int(b), caches[cache]) for b in args.batch_sizes.split(",") if b
             for cache in args.caches.split(",")]
    for mode, size, cache in modes:
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        row = {"mode": mode, "batch_size": size}
        run = lambda: generate_batched(model, tokenizer, prompts, batch_size=size,  # noqa: E731
                                       cache_implementation=cache, **batched_kwargs)
        try:
            _, row["first_call_seconds"] = timed(run)  # new shapes: cuDNN plans, static cache allocation
            (answers, _), seconds = timed(run)
        except Exception as exc:  # noqa: BLE001  (an optional variant: record why it did not run)
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        first_batched = first_batched or answers
        row.update(seconds=round(seconds, 3), speedup=round(loop_s / seconds, 2),
                   same_answers=sum(a == b for a, b in zip(answers, loop_answers)),
                   same_first_token=sum(first_token(a, tokenizer) == first_token(b, tokenizer)
                                        for a, b in zip(answers, loop_answers)),
                   same_as_first_batched=sum(a == b for a, b in zip(answers, first_batched)))
        if CUDA:
            row["max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.profile:
        profile_batched(model, tokenizer, prompts, modes[0][1], {**batched_kwargs, "cache_implementation": modes[0][2]},
                        Path(args.profile))
    for row in rows:
        if "seconds" in row:
            row["new_tokens_per_s"] = round(len(prompts) * new / row["seconds"], 1)
    margins.sort()
    result = {"size": args.size, "quantization_bit": quant, "pre_seq_len": args.pre_seq_len, "prompts": len(prompts),
              "prompt_tokens_min_max": [min(lengths), max(lengths)], "max_new_tokens": new,
              "gpu": torch.cuda.get_device_name(0) if CUDA else "CPU", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
              "first_token_margin_min_median": [round(margins[0], 4), round(margins[len(margins) // 2], 4)],
              "example": {"prompt": prompts[0], "loop": loop_answers[0]}}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"\n== eval bench: {args.size} GLM, {quant}-bit, P={args.pre_seq_len}, {len(prompts)} prompts "
          f"({min(lengths)}-{max(lengths)} tokens), {new} new tokens, greedy, {result['gpu']}")
    print(f"first-token logit margin (loop): min {margins[0]:.4f}, median {margins[len(margins) // 2]:.4f}")
    print("mode | batch_size | seconds | new_tokens_per_s | speedup | same_answers | same_first_token | error")
    for row in rows:
        print(f"{row['mode']} | {row['batch_size']} | {row.get('seconds')} | {row.get('new_tokens_per_s')} | "
              f"{row.get('speedup')} | {row.get('same_answers')}/{len(prompts)} | "
              f"{row.get('same_first_token')}/{len(prompts)} | {row.get('error', '')}")
    tuner.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main())
