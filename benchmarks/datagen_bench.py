"""Throughput of `datagen.generate` (expand + split + noise + per-record schema validation).

Usage: python benchmarks/datagen_bench.py [--n 100000] [--spec templates/grid/spec.yaml] [--profile]
Prints a table of records/s per stage. Target: >= 50,000 records/s on one core for the grid spec.

At N=100,000 the grid's summary step cannot have that many *unique* texts (about 6,000 exist), so
the benchmark turns `unique` off for steps whose share would exceed their combinations; everything
else (noise on train, dev clean, validation of every record) runs as in `tasktune data`.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasktune.datagen import generate, load_spec, write_splits  # noqa: E402
from tasktune.datagen.noise import homophone_table  # noqa: E402


def bench_spec(path: str):
    spec = load_spec(path)
    steps = tuple(dataclasses.replace(s, unique=False) if s.count is None and s.share is None else s for s in spec.steps)
    return dataclasses.replace(spec, steps=steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="templates/grid/spec.yaml")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print the top cProfile entries of generate()")
    args = parser.parse_args()
    spec = bench_spec(args.spec)
    homophone_table()  # built once per process; not part of the per-record cost
    # CPU time of this (single-threaded) process = one core, robust to other load on the machine;
    # best of --repeat runs.
    best: dict[str, tuple[float, float]] = {}
    total = 0
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        splits = generate(spec, seed=args.seed, n=args.n)
        gen = (time.process_time() - cpu, time.perf_counter() - wall)
        total = len(splits.train) + len(splits.dev)
        with tempfile.TemporaryDirectory() as out:
            wall, cpu = time.perf_counter(), time.process_time()
            write_splits(splits, out)
            wrote = (time.process_time() - cpu, time.perf_counter() - wall)
        for name, t in (("generate (expand+split+noise+validate)", gen), ("write_splits (convert+validate+write)", wrote),
                        ("end to end", (gen[0] + wrote[0], gen[1] + wrote[1]))):
            best[name] = min(best.get(name, t), t)
    print(f"spec {args.spec}  n {args.n}  seed {args.seed}  python {sys.version.split()[0]}  best of {args.repeat}")
    print(f"{'stage':<42}{'records':>9}{'cpu s':>8}{'wall s':>8}{'records/s (cpu)':>17}")
    for name, (cpu_s, wall_s) in best.items():
        print(f"{name:<42}{total:>9}{cpu_s:>8.2f}{wall_s:>8.2f}{total / cpu_s:>17,.0f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        generate(spec, seed=args.seed, n=args.n)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
