"""tasktune.datagen.schemacheck: the compiled predicate accepts exactly what fastjsonschema accepts."""

from __future__ import annotations

import copy
import random
from decimal import Decimal

import fastjsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasktune.datagen.formats import FORMATS, convert
from tasktune.datagen.pipeline import generate
from tasktune.datagen.schemacheck import Unsupported, compile_check
from tasktune.datagen.validate import checker, format_schema

FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def accepts(schema, value) -> bool:
    try:
        fastjsonschema.compile(schema)(value)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


@pytest.fixture(scope="module")
def grid_records():
    splits = generate("templates/grid/spec.yaml", seed=3, n=1200)
    return splits.train[:300] + splits.dev[:60]


def test_generated_records_pass_in_every_format(grid_records):
    for fmt in FORMATS:
        if fmt == "classification":
            continue
        check = compile_check(format_schema(fmt))
        assert all(check(convert(r, fmt, meta)) for r in grid_records for meta in (True, False))
    intent = generate("templates/grid/intent.yaml", seed=3, n=60)
    check = compile_check(format_schema("classification"))
    assert all(check(convert(r, "classification", True)) for r in intent.train + intent.dev)


leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=16),
                 st.sampled_from([0.0, 2.0, -1.0, 1.5, Decimal("2"), "", "x", "mask", "swap", "human", "gpt",
                                  "arguments/0", "a/b", "step/1\n", "^x$", "^x$\n", "content", "meta", True]))
value = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.sampled_from(["content", "summary", "meta", "op", "start", "x", "label"]), inner, max_size=3),
), max_leaves=8)


def _nodes(tree, path=()):
    """Every (path, node) of a JSON-like tree."""
    yield path, tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _nodes(v, path + (i,))


def _replace(tree, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, head: _replace(tree[head], rest, new)}
    items = list(tree)
    items[head] = _replace(items[head], rest, new)
    return type(tree)(items)


@FAST
@given(st.sampled_from(FORMATS), st.integers(0, 10**6), value, st.sampled_from(["replace", "delete", "add"]))
def test_mutated_records_are_judged_like_fastjsonschema(grid_records, fmt, seed, new, how):
    rng = random.Random(seed)
    record = convert(grid_records[rng.randrange(len(grid_records))], "chatglm" if fmt == "classification" else fmt)
    if fmt == "classification":
        record = {"text": record["content"], "label": record["summary"], "meta": {**record["meta"], "label": True}}
    path, node = rng.choice(list(_nodes(record)))
    if how == "replace":
        mutated = _replace(record, path, new)
    elif how == "delete" and path:
        parent = path[:-1]
        container = dict(_nodes(record))[parent]
        if isinstance(container, dict):
            smaller = {k: v for k, v in container.items() if k != path[-1]}
        else:
            smaller = type(container)(v for i, v in enumerate(container) if i != path[-1])
        mutated = _replace(record, parent, smaller)
    elif isinstance(node, dict):
        mutated = _replace(record, path, {**node, rng.choice(["x", "content", "label", "history", "arguments"]): new})
    elif isinstance(node, (list, tuple)):
        mutated = _replace(record, path, type(node)([*node, new]))
    else:
        mutated = copy.deepcopy(record)
    schema = format_schema(fmt)
    assert compile_check(schema)(mutated) == accepts(schema, mutated), (path, how, mutated)


@FAST
@given(value)
def test_arbitrary_values_are_judged_like_fastjsonschema(v):
    for fmt in FORMATS:
        schema = format_schema(fmt)
        assert compile_check(schema)(v) == accepts(schema, v)


class Text(str):
    pass


class Int(int):
    pass


KEYWORDS = [
    ({"type": "integer", "minimum": 0}, [0, 3, 2.0, -1, -1.0, 1.5, True, "1", None]),
    ({"type": "number", "maximum": 2}, [0, 2, 2.5, Decimal("1.5"), False, "x"]),
    ({"type": ["string", "integer", "number", "boolean"]}, ["a", 1, 1.5, True, None, [], {}]),
    ({"type": ["string", "null"]}, ["a", None, 1]),
    ({"type": "string", "minLength": 2, "maxLength": 3}, ["a", "ab", "abc", "abcd", "人人", 5]),
    ({"type": "string", "pattern": "^a.*b$"}, ["ab", "axb", "ab\n", "xab", 3]),
    ({"pattern": "^a$", "minLength": 1}, ["a", "b", 1, None, ["a"]]),
    ({"enum": ["x", "y"]}, ["x", "z", ["x"], 1]),
    ({"enum": [1, "x", None, [1, 2]]}, [1, 1.0, True, "x", None, [1, 2], (1, 2), [2, 1]]),
    ({"const": True}, [True, 1, 1.0, "true"]),
    ({"const": 2}, [2, 2.0, True, "2"]),
    ({"const": {"a": [1]}}, [{"a": [1]}, {"a": (1,)}, {"a": [True]}, {"a": [1], "b": 1}]),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}, [[1], (1, 2), [], [1, 2, 3], ["a"]]),
    ({"items": {"type": "string"}}, [["a"], [1], "ab", 3]),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
      "additionalProperties": {"type": "string"}}, [{"a": 1}, {"a": 1, "b": "x"}, {"a": 1, "b": 2}, {"b": "x"}, {}]),
    ({"type": "object", "additionalProperties": False}, [{}, {"a": 1}]),
    ({"properties": {"a": False}}, [{"a": 1}, {"b": 1}, 3]),
    ({"required": ["a"]}, [{"a": 1}, {}, [], "a"]),
    ({"additionalProperties": {"type": ["string", "integer", "number", "boolean"]}},
     [{"a": 1, "b": "x", "c": True, "d": 1.5}, {"a": None}, {"a": Decimal("1")}, {"a": Text("x")}, {"a": [1]}, {}]),
    ({"additionalProperties": {"type": "integer"}}, [{"a": True}, {"a": 1.0}, {"a": 1.5}, {"a": 1}, {"a": Int(2)}]),
    ({"type": "string", "pattern": "^a"}, ["ab", "ab", Text("ab"), Text("ba"), "ba"]),  # (matches are remembered)
    ({"required": ["x"], "additionalProperties": False}, [{"x": 1}, {}, {"y": 1}]),
    ({"required": ["x"], "properties": {"y": {"type": "string"}}, "additionalProperties": False},
     [{"x": 1}, {"y": "a"}, {"x": 1, "y": "a"}]),
    ({"required": ["x", "y"], "properties": {"y": {"type": "string"}}}, [{"x": 1, "y": "a"}, {"y": "a"}, {"x": 1}]),
    (True, [1, None]),
    (False, [1, None]),
]


@pytest.mark.parametrize("schema, values", KEYWORDS)
def test_each_keyword_matches_fastjsonschema(schema, values):
    check = compile_check(schema)
    for v in values:
        assert check(v) == accepts(schema, v), v


@pytest.mark.parametrize("schema", [{"anyOf": [{"type": "string"}]}, {"type": "strin"},
                                    {"items": [{"type": "string"}]}, {"properties": {"a": {"format": "email"}}}])
def test_unknown_keywords_are_refused_not_ignored(schema):
    with pytest.raises(Unsupported):
        compile_check(schema)


def test_output_formats_use_the_compiled_check():
    for fmt in FORMATS:
        assert getattr(checker(fmt), "source", "").startswith("def check(")
