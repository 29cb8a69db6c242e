"""tasktune.datagen.slots: dependency order, cycles, fixed values, weighted choices, derived (expr) slots."""

import random
from collections import Counter

import pytest

from tasktune.datagen.slots import SlotSampler
from tasktune.datagen.spec import SlotSpec
from tasktune.errors import SpecError


def sampler(**extra):
    slots = {
        "place": SlotSpec("place", "pool", "w", values=("a", "b", "c")),
        "check": SlotSpec("check", "choices", "w", values=("x", "y"), weights=(9.0, 1.0)),
        "expected": SlotSpec("expected", "range", "w", values=tuple(range(1, 11))),
        "present": SlotSpec("present", "expr", "w", expr="[expected] if check == 'x' else range(0, expected)"),
    }
    slots.update({k: SlotSpec(k, "expr", "w", expr=v) for k, v in extra.items()})
    return SlotSampler(slots)


def test_order_puts_dependencies_first_and_adds_them():
    order = sampler().order({"present"})
    assert set(order) == {"present", "check", "expected"}
    assert order.index("present") > order.index("check") and order.index("present") > order.index("expected")


def test_cycle_is_a_spec_error():
    s = sampler(a="b + 1", b="a + 1")
    with pytest.raises(SpecError, match="cycle"):
        s.order({"a"})


def test_unknown_slot_reference_in_expr():
    with pytest.raises(SpecError, match="undefined variable 'nope'"):
        sampler(a="nope + 1")


def test_draw_keeps_fixed_values_and_derives_from_them():
    s = sampler()
    plan = s.compile(s.order({"present"}))
    rng = random.Random(0)
    for _ in range(200):
        v = s.draw(plan, {"check": "x"}, rng)
        assert v["check"] == "x" and v["present"] == v["expected"]
        v = s.draw(plan, {"check": "y"}, rng)
        assert 0 <= v["present"] < v["expected"]


def test_weighted_choices_follow_weights_and_pools_cover_values():
    s = sampler()
    plan = s.compile(s.order({"check", "place"}))
    rng = random.Random(1)
    draws = [s.draw(plan, {}, rng) for _ in range(5000)]
    checks = Counter(d["check"] for d in draws)
    assert 0.85 < checks["x"] / 5000 < 0.95
    assert set(d["place"] for d in draws) == {"a", "b", "c"}


def test_draw_is_deterministic_for_a_seed():
    s = sampler()
    plan = s.compile(s.order({"present", "place"}))
    a = [s.draw(plan, {}, random.Random(7)) for _ in range(3)]
    b = [s.draw(plan, {}, random.Random(7)) for _ in range(3)]
    assert a == b


def test_size_counts_combinations_or_none_for_derived():
    s = sampler()
    assert s.size(s.order({"place", "check"}), {}) == 6
    assert s.size(s.order({"place", "check"}), {"check": "x"}) == 3
    assert s.size(s.order({"present"}), {}) is None


def test_empty_expr_result_is_an_error():
    s = sampler(none="range(0, 0)")
    with pytest.raises(SpecError, match="empty list"):
        s.draw(s.compile(s.order({"none"})), {}, random.Random(0))


@pytest.mark.parametrize("expr, kind", [("{'k': 1}", "dict"), ("[{'k': 1}]", "dict"), ("[[1, 2]]", "list"),
                                        ("none", "NoneType")])
def test_an_expr_value_that_is_not_a_scalar_is_an_error_naming_it(expr, kind):
    """A dict (or a list inside the list) reached the expander as a slot value, whose memo then raised
    'unhashable type' (a traceback); None failed only at the output's schema check, without the slot's line."""
    s = sampler(none=expr)
    with pytest.raises(SpecError, match=rf"expr: gave {kind} .*a slot value must be a string, a number or a boolean"):
        s.draw(s.compile(s.order({"none"})), {}, random.Random(0))
