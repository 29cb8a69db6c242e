"""What is allocated at the CUDA peak of a `tasktune` command: torch's allocator history, replayed, with the blocks
live at the peak grouped by the code that allocated them (issue 23: the bf16 training peak).

    python benchmarks/mem_peak.py --top 15 -- train --model /tmp/glm6b --data data/grid --max-steps 6 ...

Everything after `--` is the `tasktune` command line, run in this process with the allocator's history recorded
(`torch.cuda.memory._record_memory_history`, Python stacks). Printed: the peak (replayed and as torch counts it),
the live bytes at the peak by the innermost frame outside torch, and by the innermost frame in tasktune's own code
(blocks allocated by autograd's engine in backward have no Python frame). `--snapshot FILE` keeps the raw pickle
for https://pytorch.org/memory_viz.
"""

from __future__ import annotations

import argparse
import collections
import pickle
import runpy
import sys

GIB = 2**30


def _where(frames: list[dict], own: bool) -> str:
    for frame in frames:
        name = frame.get("filename", "")
        if own and "tasktune" not in name and "/tuning/" not in name:
            continue
        if not own and ("/torch/" in name or name.startswith("<")):
            continue
        return f"{'/'.join(name.split('/')[-2:])}:{frame.get('line')} {frame.get('name')}"
    return "<no python frame>" if not frames else "<torch only>"


def replay(events: list[dict]) -> tuple[int, int, dict]:
    """(peak bytes, index of the event at the peak, live blocks at the peak: addr -> event)."""
    current = peak = 0
    at = -1
    live: dict[int, dict] = {}
    for i, event in enumerate(events):
        if event["action"] == "alloc":
            live[event["addr"]] = event
            current += event["size"]
            if current > peak:
                peak, at = current, i
        elif event["action"] == "free_completed" and event["addr"] in live:
            current -= live.pop(event["addr"])["size"]
    live.clear()
    for event in events[:at + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
    return peak, at, live


def report(snapshot: dict, top: int) -> None:
    import torch

    events = snapshot["device_traces"][0] if snapshot.get("device_traces") else []
    peak, at, live = replay(events)
    print(f"events recorded: {len(events)}; replayed peak {peak / GIB:.3f} GiB at event {at}; torch's "
          f"max_memory_allocated {torch.cuda.max_memory_allocated() / GIB:.3f} GiB, "
          f"max_memory_reserved {torch.cuda.max_memory_reserved() / GIB:.3f} GiB")
    for own in (False, True):
        groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for event in live.values():
            key = _where(event.get("frames") or [], own)
            groups[key][0] += event["size"]
            groups[key][1] += 1
        title = "innermost tasktune frame" if own else "innermost frame outside torch"
        print(f"\nlive at the peak, by {title} (GiB, blocks):")
        for key, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
            print(f"  {size / GIB:8.3f}  {count:6d}  {key}")
    sizes = collections.Counter()
    for event in live.values():
        sizes[event["size"]] += 1
    print("\nlargest block sizes at the peak (MiB x count):",
          ", ".join(f"{s / 2**20:.1f} x {n}" for s, n in sorted(sizes.items(), reverse=True)[:12]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=15, help="groups to print (default: 15)")
    parser.add_argument("--max-entries", type=int, default=4_000_000, help="allocator events kept (default: 4M)")
    parser.add_argument("--snapshot", help="write the raw snapshot pickle here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the tasktune command line")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the tasktune command after --")

    import torch

    torch.cuda.memory._record_memory_history(max_entries=args.max_entries, stacks="python")
    sys.argv = ["tasktune", *command]
    try:
        runpy.run_module("tasktune", run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            print(f"tasktune exited with {exc.code}", file=sys.stderr)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    if args.snapshot:
        with open(args.snapshot, "wb") as f:
            pickle.dump(snapshot, f)
    report(snapshot, args.top)


if __name__ == "__main__":
    main()
