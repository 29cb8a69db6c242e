"""Slot filling: draw every slot a template needs, in dependency order, from one seeded rng."""

from __future__ import annotations

import bisect
import itertools
import random
from typing import Any, Callable

from tasktune.datagen.render import Compiled
from tasktune.datagen.spec import SlotSpec
from tasktune.errors import SpecError

_MISSING = object()
#: draws of the other slots tried for one whose fixed value of a derived slot its expression must give
FIX_TRIES = 1000


class Unsatisfiable(SpecError):
    """A content's `fix` gives derived slot `slot` a value its expression gave for none of FIX_TRIES draws of the
    slots it reads (`datagen.expand` names the content)."""

    def __init__(self, slot: str, value: Any, expr: str):
        super().__init__(f"{value!r} is not a value the expression of slot {slot!r} gives ({expr}): none of "
                         f"{FIX_TRIES:,} draws of the slots it reads gave it")
        self.slot, self.value = slot, value


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
        self._plans: dict[tuple[str, ...], tuple[tuple[str, int, Any], ...]] = {}

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

    def compile(self, order: tuple[str, ...]) -> Callable[[dict[str, Any], random.Random], dict[str, Any]]:
        """A draw plan for `order` (built once per order): `plan(fixed, rng) -> values`, see `_compile`."""
        plan = self._plans.get(order)
        if plan is None:
            plan = self._plans[order] = self._compile(order)
        return plan

    def _compile(self, order: tuple[str, ...]) -> Callable[[dict[str, Any], random.Random], dict[str, Any]]:
        """`draw(fixed, rng)`: `fixed` plus a value for every other slot of `order`, drawn in that order.

        One generated function per order (the hot path of expansion: no loop over slot kinds, constants
        folded). Each slot: a pool or range takes `values[int(random() * n)]`; weighted choices bisect the
        cumulative weights; a derived slot evaluates its expression (through its memo) and, when that gives
        a list or range, draws one element the same way. A derived slot that `fixed` gives is checked instead: its
        expression must give that value (or a list holding it) for the values drawn, else the draw starts again
        (at most FIX_TRIES times, then Unsatisfiable): `fix: {b: q}` wrote records with a `b` the expression
        never gives. Slot names reach the code through repr, values and expressions only as names in its
        namespace."""
        names: dict[str, Any] = {"_MISSING": _MISSING, "bisect_right": bisect.bisect_right, "_empty": self._empty,
                                 "_not_scalar": self._not_scalar, "_SCALARS": frozenset({str, int, float, bool}),
                                 "_unsatisfiable": self._unsatisfiable}
        lines = ["def draw(fixed, rng):", "    rand = rng.random", f"    for _ in range({FIX_TRIES}):",
                 "    values = dict(fixed)"]
        for k, name in enumerate(order):
            slot = self.slots[name]
            lines.append(f"    if {name!r} not in values:")
            if name in self._cum:
                weights, choices = self._cum[name]
                names[f"W{k}"], names[f"D{k}"], names[f"T{k}"] = weights, choices, weights[-1]
                # min(): r * total can round up to total itself (tiny or subnormal weights)
                lines.append(f"        values[{name!r}] = D{k}[min(bisect_right(W{k}, rand() * T{k}), {len(choices) - 1})]")
            elif slot.kind == "expr":
                compiled = self.exprs[name]
                names[f"C{k}"], names[f"M{k}"] = compiled, compiled.memo_view()[1]
                evaluate = [f"        r = M{k}.get({compiled.key_source('values')}, _MISSING)",
                            "        if r is _MISSING:",
                            f"            r = C{k}(values)"]
                lines += evaluate + [
                    "        if r.__class__ is tuple:  # a list/range: draw one element",
                    "            if not r:",
                    f"                _empty({name!r}, values)",
                    "            r = r[int(rand() * len(r))]",
                    "        if r.__class__ not in _SCALARS:",
                    f"            _not_scalar({name!r}, r, values)",
                    f"        values[{name!r}] = r",
                    "    else:  # fixed by the content: the expression must give it for this draw"]
                lines += evaluate + [f"        if not (values[{name!r}] in r if r.__class__ is tuple else "
                                     f"values[{name!r}] == r):",
                                     f"            failed = {name!r}",
                                     "            continue"]
            else:
                names[f"D{k}"] = slot.values
                lines.append(f"        values[{name!r}] = D{k}[int(rand() * {len(slot.values)})]")
        lines = [*lines[:3], *("    " + line for line in lines[3:]), "        return values",
                 "    _unsatisfiable(fixed, failed)"]
        exec(compile("\n".join(lines) + "\n", "<datagen.slots>", "exec"), names)  # noqa: S102 (see docstring)
        return names["draw"]

    def _unsatisfiable(self, fixed: dict[str, Any], name: str) -> None:
        """No draw in FIX_TRIES agreed with every fixed derived slot; `name` is the one the last draw missed."""
        raise Unsatisfiable(name, fixed[name], self.slots[name].expr)

    def _empty(self, name: str, values: dict[str, Any]) -> None:
        raise SpecError(f"{self.slots[name].where}.expr: gave an empty list for slots {values}")

    def _not_scalar(self, name: str, value: Any, values: dict[str, Any]) -> None:
        """A value must be text, a number or a boolean: a dict (or a list inside the list) reached the expander as
        a slot value, whose memo keys then failed with 'unhashable type' (a traceback)."""
        raise SpecError(f"{self.slots[name].where}.expr: gave {type(value).__name__} {str(value)[:60]} for slots "
                        f"{values}; a slot value must be a string, a number or a boolean (or a list of them to draw "
                        f"from)")

    def draw(self, plan: Callable[[dict[str, Any], random.Random], dict[str, Any]], fixed: dict[str, Any],
             rng: random.Random) -> dict[str, Any]:
        """Values for every slot of `plan` (from `compile`); `fixed` values (from a content template) are kept."""
        return plan(fixed, rng)

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
