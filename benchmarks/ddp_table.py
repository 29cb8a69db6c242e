"""Table of `tasktune train` runs that should follow each other (1 GPU vs N GPUs at equal global batch, and N GPUs
at N x the batch): steady seconds per step, examples/s, the loss at a few steps, peak GPU memory per device.

    python benchmarks/ddp_table.py RUN_DIR[=LABEL] ... [--memory nvidia-smi.csv --windows START-END,...]

`--memory` reads an `nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader,nounits -lms 500` log;
`--windows` gives each run's wall-clock span as unix seconds (from `date +%s` around it), in the runs' order; a run on
P processes is taken to use GPUs 0..P-1. A run folder without a finished run prints a row saying so.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path


def steady_seconds_per_step(history: list[dict], skip: int = 10) -> float | None:
    """Mean s/step after the first `skip` logged steps (load, autotuning and allocator warm-up excluded)."""
    rows = [h for h in history if h["step"] > skip]
    if len(rows) < 2:
        return None
    return (rows[-1]["seconds"] - rows[0]["seconds"]) / (rows[-1]["step"] - rows[0]["step"])


def peak_memory(csv_path: Path, start: float, end: float) -> dict[int, int]:
    """Max memory.used (MiB) per GPU index between two unix times."""
    peaks: dict[int, int] = {}
    for line in csv_path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        try:
            when = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            index, used = int(parts[1]), int(parts[2])
        except ValueError:  # a header, or "[N/A]"
            continue
        if start <= when <= end:
            peaks[index] = max(peaks.get(index, 0), used)
    return peaks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders, each optionally RUN=LABEL")
    ap.add_argument("--memory", type=Path, help="nvidia-smi CSV log (see above)")
    ap.add_argument("--windows", default="", help="START-END unix seconds per run, comma-separated")
    ap.add_argument("--steps", default="1,10,20,40", help="steps whose loss is shown")
    args = ap.parse_args(argv)
    windows = [tuple(map(float, w.split("-"))) for w in args.windows.split(",") if w]
    show = [int(s) for s in args.steps.split(",")]
    print("| run | processes x per-device x accumulation | steps | train s | steady s/step | examples/s | "
          + " | ".join(f"loss @{s}" for s in show) + " | peak MiB per GPU (nvidia-smi) |")
    print("|---" * (7 + len(show)) + "|")
    for i, spec in enumerate(args.runs):
        path, _, label = spec.partition("=")
        run = Path(path)
        if not (run / "tasktune_run.json").exists() or not (run / "train_history.json").exists():
            print(f"| {label or run.name} | no finished run in {run} |")
            continue
        record = json.loads((run / "tasktune_run.json").read_text())
        history = json.loads((run / "train_history.json").read_text())
        cfg = record["config"]
        per_step = record["fingerprint"]["global_batch"]  # per-device x processes x accumulation
        world = per_step // (cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"])
        sps = steady_seconds_per_step(history)
        losses = {h["step"]: h["loss"] for h in history}
        memory = "-"
        if args.memory and i < len(windows):
            peaks = peak_memory(args.memory, *windows[i])  # the run's GPUs: indices 0..processes-1
            memory = " / ".join(f"{peaks[k]}" for k in sorted(peaks) if k < world) or "-"
        speed = f"{sps:.3f} | {per_step / sps:.1f}" if sps else "- | -"
        cells = [label or run.name,
                 f"{world} x {cfg['per_device_train_batch_size']} x {cfg['gradient_accumulation_steps']}",
                 str(record["steps"]), f"{record['train_seconds']:.1f}", speed,
                 *(f"{losses[s]:.4f}" if s in losses else "-" for s in show), memory]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
