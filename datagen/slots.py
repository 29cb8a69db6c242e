"""Slot filling: draw every slot a template needs, in dependency order, from one seeded rng."""

from __future__ import annotations

import bisect
import itertools
import random
from typing import Any

from datagen.render import Compiled
from datagen.spec import SlotSpec
from tasktune.errors import SpecError


class SlotSampler:
    """Draws slot values. Derived (`expr`) slots are evaluated after the slots they read."""

    def __init__(self, slots: dict[str, SlotSpec]):
        self.slots = slots
        self.exprs = {n: Compiled(s.expr, f"{s.where}.expr", "expr") for n, s in slots.items() if s.kind == "expr"}
        for compiled in self.exprs.values():
            compiled.check_refs(set(slots))
        self._cum = {
            n: (tuple(itertools.accumulate(s.weights)), s.values)
            for n, s in slots.items()
            if s.kind == "choices" and s.weights
        }
        self._orders: dict[frozenset[str], tuple[str, ...]] = {}

    def deps(self, name: str) -> tuple[str, ...]:
        return self.exprs[name].refs if name in self.exprs else ()

    def order(self, names: set[str] | frozenset[str]) -> tuple[str, ...]:
        """The slots `names` need (dependencies included), each after the slots it reads."""
        names = frozenset(names)
        if names not in self._orders:
            self._orders[names] = self._order(names)
        return self._orders[names]

    def _order(self, names: frozenset[str]) -> tuple[str, ...]:
        done: list[str] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in done:
                return
            if name not in self.slots:
                raise SpecError(f"unknown slot {name!r} (declared: {', '.join(self.slots) or 'none'})")
            if name in visiting:
                cycle = " -> ".join(visiting[visiting.index(name):] + [name])
                raise SpecError(f"{self.slots[name].where}: derived slots form a cycle: {cycle}")
            visiting.append(name)
            for dep in self.deps(name):
                visit(dep)
            visiting.pop()
            done.append(name)

        for name in sorted(names):
            visit(name)
        return tuple(done)

    def compile(self, order: tuple[str, ...]) -> tuple[tuple[str, int, Any], ...]:
        """A draw plan for `order`: (name, kind, data) with kind 0 = pool/range, 1 = weighted, 2 = derived."""
        plan = []
        for name in order:
            slot = self.slots[name]
            if name in self._cum:
                plan.append((name, 1, self._cum[name]))
            elif slot.kind == "expr":
                plan.append((name, 2, self.exprs[name]))
            else:
                plan.append((name, 0, slot.values))
        return tuple(plan)

    def draw(self, plan: tuple[tuple[str, int, Any], ...], fixed: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Values for every slot of `plan` (from `compile`); `fixed` values (from a content template) are kept."""
        values = dict(fixed)
        rand = rng.random
        for name, kind, data in plan:
            if name in values:
                continue
            if kind == 0:
                values[name] = data[int(rand() * len(data))]
            elif kind == 2:
                result = data(values)
                if result.__class__ is tuple:  # a list/range: draw one element
                    if not result:
                        raise SpecError(f"{self.slots[name].where}.expr: gave an empty list for slots {values}")
                    result = result[int(rand() * len(result))]
                values[name] = result
            else:
                weights, choices = data
                # min(): r * total can round up to total itself (tiny or subnormal weights)
                values[name] = choices[min(bisect.bisect_right(weights, rand() * weights[-1]), len(choices) - 1)]
        return values

    def size(self, order: tuple[str, ...], fixed: dict[str, Any]) -> int | None:
        """How many distinct assignments `order` has, or None when unknown (a derived slot)."""
        total = 1
        for name in order:
            if name in fixed:
                continue
            domain = self.slots[name].domain()
            if domain is None:
                return None
            total *= len(domain)
        return total
