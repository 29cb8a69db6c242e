"""Seeded train/dev split: `random` (by text), `template` (by content template) or `slot` (held-out values).

Every strategy splits whole groups, per step, so that identical clean texts never straddle the
split; `template` and `slot` additionally keep templates / slot values disjoint between the sides.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

from datagen.expand import Example
from datagen.spec import SplitSpec


def _stratum(example: Example) -> str:
    return example.step + ("+chain" if example.history else "")


def _group_split(examples: list[Example], share: float, key: Callable[[Example], Any],
                 rng: random.Random) -> tuple[list[Example], list[Example]]:
    """Shuffle the groups of `key` and move whole groups to dev until `share` of the records are there."""
    keys = [key(e) for e in examples]
    if len(set(keys)) == len(keys):  # every group is one example (the usual case): skip the grouping
        groups: dict[Any, list[Example]] = {k: [e] for k, e in zip(keys, examples)}
    else:
        groups = {}
        for k, example in zip(keys, examples):
            groups.setdefault(k, []).append(example)
    order = list(groups)
    rng.shuffle(order)
    target = round(share * len(examples))
    train: list[Example] = []
    dev: list[Example] = []
    for i, k in enumerate(order):
        # keep at least one group for training
        if len(dev) < target and (i < len(order) - 1 or not train):
            dev.extend(groups[k])
        else:
            train.extend(groups[k])
    return train, dev


def _text_key(example: Example) -> tuple[str, str]:
    return example.key


def held_out_values(examples: list[Example], slot: str, share: float, rng: random.Random) -> set:
    """The values of `slot` reserved for dev: `share` of its distinct values (at least one, never all)."""
    values = sorted({e.slots[slot] for e in examples if slot in e.slots}, key=lambda v: (str(type(v)), str(v)))
    if len(values) < 2:
        return set()
    rng.shuffle(values)
    k = min(max(1, math.ceil(share * len(values))), len(values) - 1)
    return set(values[:k])


def split(examples: list[Example], spec: SplitSpec, rng: random.Random,
          warnings: list[str] | None = None) -> tuple[list[Example], list[Example]]:
    """Train and dev examples, each list shuffled so that steps interleave."""
    warnings = [] if warnings is None else warnings
    strata: dict[str, list[Example]] = {}
    for example in examples:
        strata.setdefault(_stratum(example), []).append(example)
    held = held_out_values(examples, spec.slot, spec.dev, rng) if spec.strategy == "slot" else set()
    if spec.strategy == "slot" and not held:
        warnings.append(f"split: slot {spec.slot!r} has fewer than 2 values; split at random instead")
    train: list[Example] = []
    dev: list[Example] = []
    for name, part in strata.items():
        if spec.strategy == "template":
            if len({e.template for e in part}) >= 2:
                t, d = _group_split(part, spec.dev, lambda e: e.template, rng)
            else:
                warnings.append(f"split: step {name!r} has one content template; split it by text instead")
                t, d = _group_split(part, spec.dev, _text_key, rng)
        elif spec.strategy == "slot" and held:
            with_slot = [e for e in part if spec.slot in e.slots]
            t = [e for e in with_slot if e.slots[spec.slot] not in held]
            d = [e for e in with_slot if e.slots[spec.slot] in held]
            rest_t, rest_d = _group_split([e for e in part if spec.slot not in e.slots], spec.dev, _text_key, rng)
            t, d = t + rest_t, d + rest_d
        else:
            t, d = _group_split(part, spec.dev, _text_key, rng)
        train.extend(t)
        dev.extend(d)
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev
