"""Peak memory and time of `tasktune data` as N grows (issue #7: 1,000,000 records, bounded memory).

Usage: python benchmarks/datagen_scale.py [--n 10000 100000 1000000] [--spec templates/grid/spec.yaml]
Runs each N in a fresh process under `/usr/bin/time -v` (apt-get install time) and prints a table:
wall seconds, peak RSS, the bytes of peak RSS per record, and the size of the files written. An N whose memory
estimate exceeds half of the machine's memory is refused up front (datagen/budget.py): its row shows the
refusal, with the time and peak RSS it took to refuse.

The grid spec cannot have 1,000,000 *unique* records (its summary step has ~6,000 texts), so the spec
is copied with `unique: false` on every step; everything else (noise, split, schema checks, atomic
writes) runs exactly as a user's `tasktune data` does.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def scale_spec(spec: Path, folder: Path) -> Path:
    """Copy `spec` (and the pool files beside it) into `folder` with `unique: false` on every step."""
    for item in spec.parent.iterdir():
        if item.is_file() and item.suffix == ".txt":
            shutil.copy(item, folder / item.name)
    data = yaml.safe_load(spec.read_text(encoding="utf-8"))
    for step in data["steps"]:
        step["unique"] = False
    out = folder / spec.name
    out.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


def parse_time_v(text: str) -> dict[str, float]:
    """Peak RSS (bytes) and wall seconds from GNU time's -v report."""
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) * 1024
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1))
    return {"rss": rss, "wall": seconds, "user": user}


def measure(spec: Path, n: int, out: Path, fmt: str) -> dict[str, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "tasktune", "data", str(spec), "--out", str(out),
           "--n", str(n), "--seed", "0", "--quiet", "--format", fmt]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    refusal = re.search(r"error: (--n [\d,]+: generating this set needs about .*)", proc.stderr)
    if proc.returncode == 2 and refusal:  # refused up front (datagen/budget.py): how fast, with what message
        return {**parse_time_v(proc.stderr), "refused": refusal.group(1), "bytes_out": 0}
    if proc.returncode != 0:
        raise SystemExit(f"N={n} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = parse_time_v(proc.stderr)
    result["bytes_out"] = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "templates/grid/spec.yaml"))
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--format", default="chatglm")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs GNU time: apt-get install time")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = scale_spec(Path(args.spec), Path(tmp))
        for n in args.n:
            out = Path(tmp) / f"out-{n}"
            rows.append((n, measure(spec, n, out, args.format)))
            shutil.rmtree(out, ignore_errors=True)
    print(f"spec {args.spec} (unique: false)  format {args.format}  python {sys.version.split()[0]}")
    print(f"{'records':>10}{'wall s':>9}{'user s':>9}{'peak RSS MiB':>14}{'output MiB':>12}{'RSS B/record':>14}")
    base_n, base = rows[0]
    for n, r in rows:
        if "refused" in r:
            print(f"{n:>10,}{r['wall']:>9.1f}{r['user']:>9.1f}{r['rss'] / 2**20:>14.0f}  refused: {r['refused']}")
            continue
        slope = (r["rss"] - base["rss"]) / (n - base_n) if n > base_n else float("nan")
        print(f"{n:>10,}{r['wall']:>9.1f}{r['user']:>9.1f}{r['rss'] / 2**20:>14.0f}{r['bytes_out'] / 2**20:>12.0f}"
              f"{slope:>14,.0f}")
    print("RSS B/record: extra peak RSS per extra record against the smallest N (the O(N) part).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
