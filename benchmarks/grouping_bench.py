"""CPU step time of `tasktune train` on real data by batch grouping (issue #3): what `--group-by-length step` saves.

Runs `tuning.training.train.fit` itself for `--steps` optimizer steps per case on a model folder and a data folder and
prints a table: seconds per step (after the first `--skip` steps, which warm up), examples/s and padded tokens per
step. Cases are GLOBALxMICRO:GROUPING[:full], e.g. 32x8:step = batch 32 per step as 4 micro-batches of 8 re-cut by
length; a trailing :full computes the LM head over every position (`--answer-logits false`) instead of the answers
(without grouping: 32x32::full).

    python benchmarks/grouping_bench.py --model models/tiny-glm --data data/grid \\
        --cases 16x16:none,16x4:step,32x32:none,32x8:step --steps 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_case(text: str) -> tuple[int, int, str, bool]:
    sizes, _, rest = text.partition(":")
    grouping, _, logits = rest.partition(":")
    total, micro = (int(x) for x in sizes.split("x"))
    if total % micro:
        raise SystemExit(f"case {text!r}: the global batch {total} is not a multiple of the micro-batch {micro}")
    if logits not in ("", "full"):
        raise SystemExit(f"case {text!r}: the third part can only be 'full' (LM head over every position)")
    return total, micro, grouping or "none", logits != "full"


def run_case(model: str, data: str, case: str, steps: int, skip: int, threads: int, source: int) -> dict:
    from tasktune.tuning.config import TrainConfig
    from tasktune.tuning.training.train import fit

    total, micro, grouping, answer_logits = parse_case(case)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=model, data=data, out=out, pre_seq_len=64, learning_rate=0.1,
                          per_device_train_batch_size=micro, gradient_accumulation_steps=total // micro,
                          group_by_length=grouping, answer_logits=answer_logits, max_steps=steps, logging_steps=1,
                          save_steps=10 ** 6,
                          max_source_length=source, max_target_length=64, gradient_checkpointing=False,
                          quantization_bit="none", num_threads=threads, resume="never")
        started = time.perf_counter()
        result = fit(cfg, log=lambda *_: None)
        wall = time.perf_counter() - started
    marks = {h["step"]: h["seconds"] for h in result.history}
    per_step = (marks[steps] - marks[skip]) / (steps - skip)
    return {"case": case, "global_batch": total, "micro_batch": micro, "grouping": grouping,
            "s_per_step": round(per_step, 3), "examples_per_s": round(total / per_step, 1),
            "wall_s": round(wall, 1), "final_loss": round(result.final_loss, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder (e.g. from `tasktune tiny-model`)")
    ap.add_argument("--data", default="data/grid")
    ap.add_argument("--cases", default="16x16:none,16x4:step,32x32:none,32x8:step")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="steps left out of the timing (warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--source", type=int, default=160, help="max_source_length")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if not 0 <= args.skip < args.steps:
        raise SystemExit("--skip must be at least 0 and below --steps")
    rows = [run_case(args.model, args.data, c, args.steps, args.skip, args.threads, args.source)
            for c in args.cases.split(",")]
    print(f"\n{args.model}, {args.steps} steps per case ({args.skip} warm-up steps not timed), {args.threads} threads\n")
    print("| case | global batch | micro-batch | grouping | s/step | examples/s | wall s | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['global_batch']} | {r['micro_batch']} | {r['grouping']} | {r['s_per_step']} | "
              f"{r['examples_per_s']} | {r['wall_s']} | {r['final_loss']} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
