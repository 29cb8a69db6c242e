"""Seeded train/dev split: `random` (by text), `template` (by content template) or `slot` (held-out values).

Every strategy splits whole groups, per step, so that identical clean texts never straddle the
split (a one-turn text an earlier step made too goes to that step's side); `template` and `slot` additionally
keep templates / slot values disjoint between the sides.
"""

from __future__ import annotations

import math
from collections import defaultdict
import random
from operator import attrgetter
from typing import Any, Callable

from tasktune.datagen.expand import Example
from tasktune.datagen.spec import SplitSpec


def _stratum(example: Example) -> str:
    return example.step + ("+chain" if example.history else "")


def shuffle(items: list, rng: random.Random) -> None:
    """`rng.shuffle(items)`, the same permutation and rng state, ~1.6x faster: CPython's algorithm (Fisher-Yates
    with `_randbelow_with_getrandbits`) with its per-item method call inlined. Any other kind of rng (a subclass
    may draw differently) gets its own `shuffle`; tests/datagen/test_split.py checks the two agree."""
    if type(rng) is not random.Random:
        rng.shuffle(items)
        return
    getrandbits = rng.getrandbits
    for i in reversed(range(1, len(items))):
        n = i + 1
        k = n.bit_length()
        j = getrandbits(k)
        while j >= n:
            j = getrandbits(k)
        items[i], items[j] = items[j], items[i]


def _group_split(examples: list[Example], share: float, key: Callable[[Example], Any],
                 rng: random.Random) -> tuple[list[Example], list[Example]]:
    """Shuffle the groups of `key` and move whole groups to dev until `share` of the records are there."""
    keys = list(map(key, examples))
    target = round(share * len(examples))
    if len(set(keys)) == len(keys):
        # every group is one example (the usual case): shuffling the examples is shuffling the groups (the
        # same permutation: it depends only on the length and the rng), and the loop below would give dev
        # the first `target` of them (all of them when target >= their number)
        order = list(examples)
        shuffle(order, rng)
        cut = min(target, len(order) - 1)  # at least one example stays for training
        return order[cut:], order[:cut]
    groups: dict[Any, list[Example]] = defaultdict(list)  # (insertion order = first occurrence, as a dict)
    for k, example in zip(keys, examples):
        groups[k].append(example)
    order = list(groups)
    shuffle(order, rng)
    train: list[Example] = []
    dev: list[Example] = []
    for i, k in enumerate(order):
        # keep at least one group for training: the last goes to dev only when train has one already (it read
        # `or not train`, which sent a step of one distinct text wholly to dev: train empty, on every seed)
        if len(dev) < target and (i < len(order) - 1 or train):
            dev.extend(groups[k])
        else:
            train.extend(groups[k])
    return train, dev


_text_key: Callable[[Example], tuple[str, str]] = attrgetter("key")  # the clean (content, summary)


def held_out_values(examples: list[Example], slot: str, share: float, rng: random.Random) -> set:
    """The values of `slot` reserved for dev: `share` of its distinct values (at least one, never all)."""
    values = sorted({e.slots[slot] for e in examples if slot in e.slots}, key=lambda v: (str(type(v)), str(v)))
    if len(values) < 2:
        return set()
    shuffle(values, rng)
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
        warnings.append(f"split: {_why_no_held_values(examples, spec.slot)}; split at random instead")
    train: list[Example] = []
    dev: list[Example] = []
    explained = False  # a warning below says why dev got none of a step
    placed: dict[tuple[str, str], bool] = {}  # clean text of a one-turn record split so far -> in dev
    last_one_turn = next((name for name in reversed(strata) if not name.endswith("+chain")), None)
    for name, part in strata.items():
        # a text another step made too goes where that step's went: two steps with one content and answer
        # template put the same record in train and dev (a dev score on records trained on)
        ahead = [e for e in part if e.key in placed] if placed and not name.endswith("+chain") else []
        rest = [e for e in part if e.key not in placed] if ahead else part
        t, d = _split_part(name, rest, spec, held, rng, warnings)
        if ahead:
            t, d = [e for e in ahead if not placed[e.key]] + t, [e for e in ahead if placed[e.key]] + d
            warnings.append(f"split: step {name!r} makes {len(ahead)} of its records with the same text (content and "
                            "answer) as an earlier step's; each went to that one's side of the split")
        if not name.endswith("+chain") and name != last_one_turn:  # (no later step to read them)
            placed.update(dict.fromkeys((e.key for e in t), False))
            placed.update(dict.fromkeys((e.key for e in d), True))
        train.extend(t)
        dev.extend(d)
        if not t and not ahead:  # (only a `slot` split can: every record of the step holds a held-out value)
            warnings.append(f"split: step {name!r} has all of its {len(d)} records in dev and none to train on: each "
                            f"holds a held-out value of slot {spec.slot!r} ({_listed(held)}), e.g. a content's `fix`; "
                            "the model never learns this step (give it other values, or split another slot)")
            explained = True
        # a step of a few distinct texts cannot be cut at the share asked: say so where it is far off
        elif (round(spec.dev * len(part)) >= 1 and not d) or len(d) > max(3 * spec.dev, spec.dev + 0.25) * len(part):
            warnings.append(f"split: step {name!r} has {len(d)} of its {len(part)} records in dev against the "
                            f"{spec.dev:g} asked: too few distinct texts (or groups) to split finer")
            explained = explained or not d
    if examples and not dev and not explained:  # every step's share of dev rounded to no record
        warnings.append(_empty_dev({name: len(part) for name, part in strata.items()}, spec.dev))
    shuffle(train, rng)
    shuffle(dev, rng)
    return train, dev


def _split_part(name: str, part: list[Example], spec: SplitSpec, held: set, rng: random.Random,
                warnings: list[str]) -> tuple[list[Example], list[Example]]:
    """Train and dev examples of one step's records, by the spec's strategy."""
    if spec.strategy == "template":
        if len({e.template for e in part}) >= 2:
            return _group_split(part, spec.dev, lambda e: e.template, rng)
        warnings.append(f"split: step {name!r} has one content template; split it by text instead")
        return _group_split(part, spec.dev, _text_key, rng)
    if spec.strategy == "slot" and held:
        with_slot = [e for e in part if spec.slot in e.slots]
        t = [e for e in with_slot if e.slots[spec.slot] not in held]
        d = [e for e in with_slot if e.slots[spec.slot] in held]
        rest_t, rest_d = _group_split([e for e in part if spec.slot not in e.slots], spec.dev, _text_key, rng)
        return t + rest_t, d + rest_d
    return _group_split(part, spec.dev, _text_key, rng)


def _listed(values: set, most: int = 5) -> str:
    shown = sorted(map(repr, values))
    return ", ".join(shown[:most]) + (f" and {len(shown) - most} more" if len(shown) > most else "")


def _why_no_held_values(examples: list[Example], slot: str) -> str:
    """Why a `slot` split holds no value out: the slot is in no record (no template reads it), or has one value."""
    used = set().union(*(e.slots for e in examples))
    if slot in used:
        return f"slot {slot!r} has fewer than 2 values in the records"
    return (f"slot {slot!r} is in no record: no template (content, summary or pattern) reads it, nor does any step's "
            f"`arguments` or `fix`; the records hold {', '.join(map(repr, sorted(used))) or 'no slot'}")


def _empty_dev(sizes: dict[str, int], share: float) -> str:
    """The warning for a dev set left empty because `share` of every step's records rounds to none (steps are split
    apart). A warning, not an error: train.json is whole and trains as it is (a few records make a fair smoke test);
    `tasktune eval` refuses the empty dev.json, naming it."""
    need = max(2, math.floor(0.5 / share))  # the fewest records of which `share` rounds to one (one stays in train)
    while round(share * need) < 1:
        need += 1
    if len(sizes) == 1:
        (total,) = sizes.values()
        why = f"split.dev {share:g} of {total:,} records rounds to none; raise n (or --n) to at least {need:,}"
    else:
        listed = ", ".join(f"{name!r} {size:,}" for name, size in sizes.items())
        why = (f"split.dev {share:g} of each step's records rounds to none (each step is split on its own: {listed}); "
               f"raise n (or --n) so that a step has at least {need:,}")
    return f"split: dev.json is empty (`tasktune eval` needs dev records): {why}, or raise split.dev"
