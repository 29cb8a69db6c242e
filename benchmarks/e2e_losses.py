"""Side by side: the logged training losses of two `tasktune train` run folders (e.g. --compile off vs
cudagraphs on the same model, data and seed), step by step, and each run's record.

    python benchmarks/e2e_losses.py RUN_A RUN_B
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> int:
    runs = [Path(a) for a in argv]
    if len(runs) != 2:
        print(__doc__)
        return 2
    hist = [{h["step"]: h["loss"] for h in json.loads((r / "train_history.json").read_text())} for r in runs]
    print(f"step | {runs[0].name} | {runs[1].name} | difference")
    worst = 0.0
    for step in sorted(set(hist[0]) | set(hist[1])):
        a, b = hist[0].get(step), hist[1].get(step)
        diff = "" if a is None or b is None else f"{b - a:+.4f}"
        if diff:
            worst = max(worst, abs(b - a))
        print(f"{step} | {'' if a is None else f'{a:.4f}'} | {'' if b is None else f'{b:.4f}'} | {diff}")
    print(f"largest difference on common steps: {worst:.4f}")
    from tasktune.tuning.run import RunFolder

    for r in runs:
        rec = RunFolder(r).raw_record()
        print(r.name, {k: rec.get(k) for k in ("steps", "final_loss", "train_seconds")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
