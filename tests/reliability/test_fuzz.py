"""Property tests: any spec, template or text gives schema-valid output or a SpecError, never a deep traceback.

The default profile is small (fast suite); `pytest -m slow tests/reliability/test_fuzz.py` runs a longer one.
"""

from __future__ import annotations

import copy
import random
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasktune.datagen.noise import OP_FUNCTIONS, add_noise
from tasktune.datagen.pipeline import generate
from tasktune.datagen.render import Compiled
from tasktune.datagen.spec import NoiseSpec, parse_spec
from tasktune.datagen.validate import validate_records
from tasktune.errors import SpecError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
LONG = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

VALID = {
    "name": "fuzz",
    "n": 12,
    "slots": {
        "place": {"values": ["济南", "青岛", "烟台", "潍坊"]},
        "check": {"choices": ["人数检测", "安全检查"], "weights": [2, 1]},
        "expected": {"range": [1, 9]},
        "present": {"expr": "range(0, expected + 1)"},
    },
    "steps": [
        {"name": "greet", "pattern": "步骤#问候*语音#{{ utterance }}", "count": 2, "contents": ["你好", "您好"],
         "summary": "您好"},
        {"name": "args", "pattern": "语音#{{ utterance }}", "arguments": ["place", "check"],
         "contents": [{"text": "查查{{ place }}的人数", "fix": {"check": "人数检测"}}, "检查{{ place }}的{{ check }}"],
         "summary": "地名为{{ place }}, 任务为{{ check }}"},
        {"name": "sum", "pattern": "应到{{ expected }}人*实到{{ present }}人", "contents": [""], "spoken": False,
         "summary": [{"when": "present == expected", "text": "无人缺勤"}, {"text": "缺勤{{ expected - present }}人"}]},
    ],
    "noise": {"rate": 0.3, "ops": {"mask": 1, "homophone": 1, "delete": 1, "insert": 1}},
    "split": {"strategy": "random", "dev": 0.25},
}
KEYS = ["name", "n", "seed", "slots", "steps", "noise", "split", "chains", "values", "file", "range", "choices",
        "weights", "expr", "pattern", "contents", "summary", "label", "arguments", "count", "share", "unique",
        "spoken", "text", "when", "fix", "rate", "ops", "mask", "strategy", "dev", "slot", "utterance"]
FRAGMENTS = ["{{", "}}", "{%", "%}", "{#", "#}", " place ", " check ", " expected ", " present ", " utterance ",
             "|upper", "|length", "|int", "|join(',')", "|replace('a','b')", "|truncate(3)", "|center(5)", " ~ ",
             " + ", " - ", " * ", " / ", " // ", " % ", " ** ", "(", ")", "[", "]", "'济南'", "0", "1", "-1",
             "if ", " else ", " endif ", "for x in ", "range(3)", " endfor ", " and ", " not ", " == ", ".x",
             ".__class__",
             "lipsum()", "cycler(1)", "self", "loop.index", "none", "true", "人", "\n", " "]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**7, 10**7), st.floats(allow_nan=True),
                      st.text(max_size=12), st.sampled_from(FRAGMENTS))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=4)),
    max_leaves=20)
template_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=12).map("".join)


def _check_generated(spec) -> None:
    """Generate a little data; whatever comes out must pass the output schema."""
    try:
        splits = generate(spec, seed=0, n=min(spec.n, 12))
    except SpecError:
        return
    validate_records(splits.train + splits.dev, "chatglm")
    assert len(splits.train) + len(splits.dev) <= 12


def _load(data) -> None:
    try:
        spec = parse_spec(data, Path("fuzz.yaml"))
    except SpecError:
        return
    _check_generated(spec)


def _mutate(data, rng: random.Random, replacement) -> dict:
    """Replace, delete or add one node somewhere in a deep copy of `data`."""
    data = copy.deepcopy(data)
    node, parents = data, []
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        parents.append((node, key))
        node = node[key]
    if not parents:
        return data
    parent, key = parents[-1]
    action = rng.random()
    if action < 0.6:
        parent[key] = replacement
    elif action < 0.8:
        del parent[key]
    elif isinstance(parent, dict):
        parent[rng.choice(KEYS)] = replacement
    else:
        parent.insert(key, replacement)
    return data


def _prop_arbitrary_dicts(data):
    _load(data)


def _prop_mutated_specs(seed, replacement, times):
    rng = random.Random(seed)
    data = VALID
    for _ in range(times):
        data = _mutate(data, rng, replacement)
    _load(data)


def _prop_templates(text, place, expected):
    values = {"place": place, "check": "人数检测", "expected": expected, "present": 0}
    try:
        compiled = Compiled(text, "fuzz.yaml:1: $.steps[0].summary")
        compiled.check_refs(set(values))
        result = compiled(values)
    except SpecError as exc:
        assert str(exc).startswith("fuzz.yaml:1: $.steps[0].summary")
        return
    assert isinstance(result, str)


def _prop_template_in_a_spec(text):
    data = copy.deepcopy(VALID)
    data["steps"][1]["summary"] = text
    _load(data)


noise_specs = st.builds(
    NoiseSpec,
    rate=st.floats(0, 1),
    ops=st.dictionaries(st.sampled_from(sorted(OP_FUNCTIONS)), st.floats(0, 10), min_size=1).filter(
        lambda ops: sum(ops.values()) > 0),
    mask_token=st.text(min_size=1, max_size=6),
    insert_chars=st.text(max_size=4),
)
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["请尝试查看济南的工地的人数情况", "hello World", "", "  ", "Ω≈ç√∫", "\u4e00\u9fff\u3000", "a\tb\nc"])


def _prop_noise(text, spec, seed):
    noisy, spans = add_noise(text, random.Random(seed), spec)
    assert isinstance(noisy, str)
    rebuilt, last = [], 0
    for span in spans:  # the spans describe exactly the edits made, in order
        assert span["op"] in OP_FUNCTIONS
        assert text[span["start"]:span["end"]] == span["before"]
        assert noisy[span["at"]:span["at"] + len(span["after"])] == span["after"]
        rebuilt.append(text[last:span["start"]] + span["after"])
        last = span["end"]
    assert "".join(rebuilt) + text[last:] == noisy
    record = {"content": "语音#" + noisy, "summary": "好", "history": [], "meta": {"step": "s", "template": "s/0", "slots": {},
                                                                   "noise": spans}}
    validate_records([record], "chatglm")


def _prop_each_op(char, spec, seed):
    for name, op in OP_FUNCTIONS.items():
        out = op(char, random.Random(seed), spec)
        assert isinstance(out, str), name


CASES = [
    (_prop_arbitrary_dicts, (json_value,)),
    (_prop_arbitrary_dicts, (st.fixed_dictionaries({"name": st.just("x"), "steps": json_value}, optional={
        "slots": json_value, "noise": json_value, "split": json_value, "chains": json_value}),)),
    (_prop_mutated_specs, (st.integers(0, 2**32), json_value, st.integers(1, 3))),
    (_prop_templates, (template_text, st.text(max_size=5), st.integers(-5, 10**6))),
    (_prop_template_in_a_spec, (template_text,)),
    (_prop_noise, (any_text, noise_specs, st.integers(0, 2**32))),
    (_prop_each_op, (st.characters(blacklist_categories=("Cs",)), noise_specs, st.integers(0, 2**32))),
]
IDS = ["spec-any-json", "spec-any-sections", "spec-mutated", "template", "template-in-spec", "noise", "noise-ops"]


@pytest.mark.parametrize("prop, strategies", CASES, ids=IDS)
def test_fuzz(prop, strategies):
    FAST(given(*strategies)(prop))()


@pytest.mark.slow
@pytest.mark.parametrize("prop, strategies", CASES, ids=IDS)
def test_fuzz_long(prop, strategies):
    LONG(given(*strategies)(prop))()


def test_the_valid_seed_spec_generates():
    spec = parse_spec(copy.deepcopy(VALID), Path("fuzz.yaml"))
    splits = generate(spec, seed=0)
    assert len(splits.train) + len(splits.dev) == 12
    assert any(r["meta"]["noise"] for r in splits.train)


def test_mutation_changes_the_spec():
    rng = random.Random(3)
    assert any(_mutate(VALID, rng, "x") != VALID for _ in range(5))
    assert set(string.ascii_lowercase) & set("".join(KEYS))


def test_subnormal_weights_found_by_fuzzing():
    """Regression (found by test_fuzz_long): r * total rounded up to total and indexed past the end."""
    assert add_noise("0", random.Random(0), NoiseSpec(rate=1.0, ops={"insert": 5e-324}))[0] == "00"
    assert add_noise("01", random.Random(0), NoiseSpec(rate=1.0, ops={"delete": 5e-324}))[0] in ("0", "1")  # one kept
    data = copy.deepcopy(VALID)
    data["slots"]["check"]["weights"] = [5e-324, 5e-324]
    data["steps"][1]["contents"] = [{"text": "查查{{ place }}", "weight": 5e-324},
                                    {"text": "看看{{ place }}", "weight": 5e-324}]
    splits = generate(parse_spec(data, Path("fuzz.yaml")), seed=0)
    assert len(splits.train) + len(splits.dev) == 12
