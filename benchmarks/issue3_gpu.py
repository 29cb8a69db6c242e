"""Issue #3, GPU part: train a ~1B random GLM in 4-bit through `tasktune train`, reload it through
`tasktune eval`, and report peak GPU memory, step time and tokens/s of each.

    python benchmarks/issue3_gpu.py --model /tmp/glm1b --data data/grid --run /tmp/run1b --out issue3.json

Both commands go through `tasktune.cli.main`, i.e. the project's real code path; this script only adds the
CUDA memory counters around them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def useful_tokens(data: Path, model: Path, limit: int) -> float:
    """Mean prompt+answer tokens per example after the src/tgt limits (the tokens that training sees)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    records = json.loads((data / "train.json").read_text(encoding="utf-8"))[:500]
    sizes = [min(limit, len(tokenizer(r["content"])["input_ids"]) + 16) + min(limit, len(tokenizer(r["summary"])
                                                                                   ["input_ids"]) + 1)
             for r in records]
    return sum(sizes) / len(sizes)


def run_cli(argv: list[str]) -> dict:
    from tasktune.cli import main

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    row = {"argv": " ".join(argv), "exit": code, "seconds": round(seconds, 1)}
    if torch.cuda.is_available():
        row["max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
        row["max_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2 ** 30, 3)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
              "parameters": json.loads((Path(args.model) / "benchmodel.json").read_text())["parameters"]}
    train = run_cli(["train", "--model", args.model, "--data", args.data, "--out", args.run, "--quantization-bit", "4",
                     "--max-steps", str(args.steps), "--per-device-train-batch-size", str(args.batch),
                     "--gradient-accumulation-steps", str(args.accumulation), "--save-steps", str(args.steps // 2),
                     "--logging-steps", "5", "--resume", "never"])
    record = json.loads((Path(args.run) / "tasktune_run.json").read_text())
    per_example = useful_tokens(Path(args.data), Path(args.model), 64)
    examples = record["steps"] * args.batch * args.accumulation
    train.update(train_seconds=record["train_seconds"], final_loss=record["final_loss"],
                 step_s=round(record["train_seconds"] / record["steps"], 3),
                 examples_per_s=round(examples / record["train_seconds"], 1),
                 useful_tokens_per_s=round(examples * per_example / record["train_seconds"], 1),
                 history=[(h["step"], h["loss"]) for h in json.loads((Path(args.run) / "train_history.json").read_text())])
    result["train"] = train
    print(json.dumps(train), flush=True)
    result["run_files"] = sorted(p.name for p in Path(args.run).iterdir())
    evaluation = run_cli(["eval", args.run, "--limit", "16"])
    metrics = json.loads((Path(args.run) / "eval" / "metrics.json").read_text())
    evaluation["metrics_keys"] = sorted(metrics)[:10]
    preds = (Path(args.run) / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    evaluation["first_prediction"] = json.loads(preds[0]) if preds else None
    result["eval"] = evaluation
    print(json.dumps(evaluation, ensure_ascii=False), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
