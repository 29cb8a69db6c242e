"""tasktune.datagen.segments: a template rendered from its cached pieces equals the whole Jinja render, errors included."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasktune.datagen.render import MAX_TEXT, Compiled
from tasktune.datagen.split import shuffle
from tasktune.errors import SpecError

FAST = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
VALUES = [{"a": a, "b": b, "c": c} for a, b, c in itertools.product([0, 1, 3], ["", "x", "人"], [True, None, 2.5])]


def whole_and_split(source: str) -> tuple[Compiled, Compiled]:
    whole = Compiled(source, "spec.yaml:1: $.t")
    whole._ops = None  # the plain Jinja render: the reference
    return whole, Compiled(source, "spec.yaml:1: $.t")


def outcome(template: Compiled, values: dict):
    try:
        return "ok", template(values)
    except SpecError as exc:
        return "error", str(exc)


outputs = st.sampled_from(["{{ a }}", "{{ b }}", "{{ c }}", "{{ a ~ b }}", "{{ a + 1 }}", "{{ b|length }}",
                           "{{ b * 2 }}", "{{ c is none }}", "{{ a / 0 }}", "{{ b.upper() }}", "{{ [a, b]|join('-') }}",
                           "{{ b.missing }}", "{{ b.missing.x }}", "{{ '%s!'|format(a) }}", "{{ a if b else c }}"])
texts = st.text(alphabet="xy人 #*,\n", max_size=4)
tests = st.recursive(
    st.sampled_from(["a", "b", "c", "a == 1", "b == 'x'", "a < 3", "a > b", "c is none", "a is even", "b|length > 0",
                     "b.missing", "b.missing.x", "a in [1, 3]", "true", "false"]),
    lambda inner: st.one_of(st.tuples(inner, inner).map(lambda t: f"({t[0]} and {t[1]})"),
                            st.tuples(inner, inner).map(lambda t: f"({t[0]} or {t[1]})"),
                            inner.map(lambda t: f"not ({t})")),
    max_leaves=4)


def _if(parts):
    first, elifs, else_ = parts
    text = f"{{% if {first[0]} %}}{first[1]}"
    text += "".join(f"{{% elif {t} %}}{body}" for t, body in elifs)
    return text + (f"{{% else %}}{else_}" if else_ is not None else "") + "{% endif %}"


bodies = st.recursive(
    st.lists(st.one_of(outputs, texts), max_size=3).map("".join),
    lambda inner: st.lists(st.one_of(outputs, texts, st.tuples(
        st.tuples(tests, inner), st.lists(st.tuples(tests, inner), max_size=2), st.none() | inner).map(_if)),
        max_size=4).map("".join),
    max_leaves=8)


@FAST
@given(bodies)
def test_split_render_equals_the_whole_render(source):
    whole, split = whole_and_split(source)
    for values in VALUES:
        assert outcome(split, values) == outcome(whole, values), (source, values)


def test_the_grid_frame_is_split_and_renders_as_jinja():
    source = ("应到{{ expected }}人*实到{{ present }}人{% if check == '安全检查' %}*{{ ok }}人佩戴"
              "{% elif check == '设备检查' %}*{{ present - ok }}人未携带{% endif %}*任务类型#{{ utterance }}")
    whole, split = whole_and_split(source)
    assert split._ops is not None
    for check, present, ok in itertools.product(["人数检测", "安全检查", "设备检查"], [0, 5], [0, 3]):
        values = {"expected": 9, "present": present, "ok": ok, "check": check, "utterance": "\x00u\x00"}
        assert split(values) == whole(values)


@pytest.mark.parametrize("source", [
    "{% set x = a %}{{ x }}{{ b }}",                      # binds a name: pieces would not see it
    "{% for i in range(a) %}{{ i }}{% endfor %}{{ b }}",  # a loop
    "{% macro m() %}{{ a }}{% endmacro %}{{ m() }}{{ b }}",
    "{{ a }}",                                            # one slot: nothing to gain
])
def test_only_output_and_if_templates_are_split(source):
    whole, split = whole_and_split(source)
    assert split._ops is None
    assert outcome(split, VALUES[4]) == outcome(whole, VALUES[4])


@pytest.mark.parametrize("source", ["你好", "", " a}b %} #} ", "x\ty\u2028z"])
def test_plain_text_renders_as_itself_without_jinja(source):
    from tasktune.datagen.render import _ENV

    plain = Compiled(source, "w")
    assert plain.refs == () and plain({}) == plain.uncached({"a": 1}) == _ENV.from_string(source).render()
    assert plain._fn is None  # never parsed nor compiled
    assert Compiled(source + "\n", "w")._fn is None and Compiled(source + "\n", "w")._tree is not None


def test_pieces_are_shared_between_templates():
    pieces: dict = {}
    one = Compiled("{{ a }}-{{ b }}", "w", pieces=pieces)
    two = Compiled("{% if b %}{{ a }}{% endif %}{{ b }}", "w", pieces=pieces)
    assert one._ops is not None and two._ops is not None
    assert len(pieces) == 3  # {{ a }}, {{ b }} and the test `b`


def test_output_bound_holds_for_the_sum_of_pieces():
    _, split = whole_and_split("{{ a }}{{ b }}")
    half = "x" * (MAX_TEXT // 2 + 1)
    with pytest.raises(SpecError, match="longer than 100,000 characters"):
        split({"a": half, "b": half})


def test_a_failing_piece_reports_the_whole_template_error():
    whole, split = whole_and_split("{{ a }}{% if b.missing.x %}1{% endif %}")
    assert outcome(split, VALUES[0])[0] == "error" and outcome(split, VALUES[0]) == outcome(whole, VALUES[0])
    assert "with slots {'a': 0, 'b': ''}" in outcome(split, VALUES[0])[1]


@pytest.mark.parametrize("n", [*range(0, 12), 100, 1000, 65537])
def test_split_shuffle_is_random_shuffle(n):
    for seed in range(3):
        mine, theirs = random.Random(seed), random.Random(seed)
        a, b = list(range(n)), list(range(n))
        shuffle(a, mine)
        theirs.shuffle(b)
        assert a == b and mine.getstate() == theirs.getstate()
