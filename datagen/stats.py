"""Dataset statistics (stats.json) and the table `tasktune data` prints."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from datagen.expand import Example


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}


def _noise(examples: list[Example]) -> dict[str, Any]:
    spoken = [e for e in examples if e.spoken]
    noised = [e for e in spoken if e.noise]
    # characters before noise: today's length minus what the edits added
    chars = sum(len(e.utterance) for e in spoken)
    chars -= sum(len(s["after"]) - len(s["before"]) for e in noised for s in e.noise)
    edits = sum(len(e.noise) for e in noised)
    ops = Counter(s["op"] for e in noised for s in e.noise)
    return {
        "records_noised": len(noised),
        "spoken_chars": chars,
        "edits": edits,
        "rate": round(edits / chars, 4) if chars else 0.0,
        "ops": dict(sorted(ops.items())),
    }


def compute_stats(train: list[Example], dev: list[Example], *, seed: int, spec_name: str,
                  warnings: list[str]) -> dict[str, Any]:
    """Counts per split/step/template/slot value, noise, length percentiles and unique ratio."""
    both = {"train": train, "dev": dev}
    steps: dict[str, dict[str, int]] = {}
    templates: dict[str, dict[str, int]] = {}
    for side, part in both.items():
        for (step, chained), count in Counter((e.step, e.chain is not None) for e in part).items():
            steps.setdefault(step + ("+chain" if chained else ""), {"train": 0, "dev": 0})[side] += count
        for template, count in Counter(e.template for e in part).items():
            templates.setdefault(template, {"train": 0, "dev": 0})[side] += count
    everything = train + dev
    slot_values: dict[str, Counter] = {}
    for (k, v), count in Counter(itertools.chain.from_iterable(e.slots.items() for e in everything)).items():
        slot_values.setdefault(k, Counter())[str(v)] += count
    return {
        "spec": spec_name,
        "seed": seed,
        "records": {side: len(part) for side, part in both.items()},
        "steps": dict(sorted(steps.items())),
        "templates": dict(sorted(templates.items(), key=lambda kv: (kv[0].split("/")[0], int(kv[0].split("/")[1])))),
        "slot_values": {k: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for k, c in sorted(slot_values.items())},
        "noise": {side: _noise(part) for side, part in both.items()},
        "length": {
            "content": _percentiles([len(e.content) for e in everything]),
            "summary": _percentiles([len(e.summary) for e in everything]),
        },
        "unique_ratio": round(len({e.content for e in everything}) / len(everything), 4) if everything else 0.0,
        "warnings": list(warnings),
    }


def format_table(stats: dict[str, Any]) -> str:
    """A plain-text summary of `stats` for the terminal."""
    rows = [f"spec {stats['spec']}  seed {stats['seed']}  train {stats['records']['train']}  dev {stats['records']['dev']}"
            f"  unique ratio {stats['unique_ratio']:.3f}"]
    rows.append(f"{'step':<24}{'train':>8}{'dev':>8}")
    rows += [f"{name:<24}{c['train']:>8}{c['dev']:>8}" for name, c in stats["steps"].items()]
    rows.append(f"{'template':<24}{'train':>8}{'dev':>8}")
    rows += [f"{name:<24}{c['train']:>8}{c['dev']:>8}" for name, c in stats["templates"].items()]
    rows.append("slot values (distinct; most common)")
    for slot, counts in stats["slot_values"].items():
        top = ", ".join(f"{v}:{n}" for v, n in list(counts.items())[:4])
        rows.append(f"  {slot:<14}{len(counts):>6}  {top}")
    for side, noise in stats["noise"].items():
        ops = " ".join(f"{k}={v}" for k, v in noise["ops"].items()) or "-"
        rows.append(f"noise {side:<5} rate {noise['rate']:.3f}  records noised {noise['records_noised']}  ops {ops}")
    for field, p in stats["length"].items():
        rows.append(f"length {field:<8} p50 {p['p50']}  p90 {p['p90']}  p99 {p['p99']}  max {p['max']}")
    rows += [f"warning: {w}" for w in stats["warnings"]]
    return "\n".join(rows)
