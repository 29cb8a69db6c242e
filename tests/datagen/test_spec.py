"""tasktune.datagen.spec: schema check before anything else, errors with file:line and JSON path, pool files."""

import pytest

from tasktune.datagen.spec import load_spec
from datagen_testutil import MINI, write_spec
from tasktune import TEMPLATES
from tasktune.errors import SpecError


def test_grid_spec_loads_with_every_step_and_pool():
    spec = load_spec(TEMPLATES / "grid" / "spec.yaml")
    assert [s.name for s in spec.steps] == ["greet", "arguments", "summary"]
    assert len(spec.slots["place"].values) >= 60
    assert len(spec.steps[1].contents) == 12
    assert sum(1 for c in spec.steps[1].contents if c.fix == {"check": "人数检测"}) == 4
    assert spec.chains.steps == ("greet", "arguments", "summary")


def test_mini_spec_fields(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert spec.n == 40 and spec.split.strategy == "random" and spec.noise.splits == ("train",)
    assert spec.slots["expected"].values == tuple(range(1, 21))
    assert spec.steps[2].cases[0].when == "present == expected"


@pytest.mark.parametrize("bad, where", [
    ("name: mini\nsteps: []\n", "$.steps"),
    ("name: mini\nsteps:\n  - {name: a, contents: [x]}\n", "$.steps[0]"),  # neither summary nor label
    ("name: mini\nnoise: {rate: 2}\nsteps:\n  - {name: a, contents: [x], summary: y}\n", "$.noise.rate"),
    ("name: mini\nslots: {p: {values: [a], range: [1, 2]}}\nsteps:\n  - {name: a, contents: [x], summary: y}\n",
     "$.slots.p"),
    ("name: mini\nsplit: {strategy: slot}\nsteps:\n  - {name: a, contents: [x], summary: y}\n", "$.split"),
])
def test_schema_errors_name_the_json_path(tmp_path, bad, where):
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, bad))
    assert where in str(err.value) and "spec.yaml:" in str(err.value)


def test_schema_error_points_at_the_yaml_line(tmp_path):
    text = MINI.replace("  rate: 0.3", "  rate: high")
    line = text.splitlines().index("  rate: high") + 1
    with pytest.raises(SpecError, match=rf"spec.yaml:{line}: \$\.noise\.rate"):
        load_spec(write_spec(tmp_path, text))


def test_invalid_yaml(tmp_path):
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(write_spec(tmp_path, "name: [unclosed\n"))


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "nope.yaml")


def test_pool_file_is_read_relative_to_the_spec(tmp_path):
    text = MINI.replace("place: {values: [济南, 青岛, 烟台, 潍坊, 临沂, 德州]}", "place: {file: pool.txt}")
    spec = load_spec(write_spec(tmp_path, text, pool__txt="# comment\n济南\n\n青岛\n济南\n"))
    assert spec.slots["place"].values == ("济南", "青岛")  # comments, blanks and repeats dropped


def test_pool_file_outside_the_spec_folder_is_refused(tmp_path):
    (tmp_path / "secret.txt").write_text("x\n", encoding="utf-8")
    text = MINI.replace("place: {values: [济南, 青岛, 烟台, 潍坊, 临沂, 德州]}", "place: {file: ../secret.txt}")
    with pytest.raises(SpecError, match="outside the spec's folder"):
        load_spec(write_spec(tmp_path / "specs", text))


@pytest.mark.parametrize("pool", ["{values: []}", "{file: empty.txt}"])
def test_empty_pool(tmp_path, pool):
    text = MINI.replace("{values: [济南, 青岛, 烟台, 潍坊, 临沂, 德州]}", pool)
    with pytest.raises(SpecError, match=r"\$\.slots\.place: empty pool"):
        load_spec(write_spec(tmp_path, text, empty__txt="# nothing\n"))


@pytest.mark.parametrize("old, new, message", [
    ("fix: {check: 人数检测}", "fix: {task: 人数检测}", "unknown slot 'task'"),
    ("fix: {check: 人数检测}", "fix: {check: 跑步}", "not a value of slot 'check'"),
    ("arguments: [place, check]", "arguments: [place, city]", "unknown slot 'city'"),
    ("split: {strategy: random, dev: 0.25}", "split: {strategy: slot, slot: town}", "unknown slot 'town'"),
    ("expected: {range: [1, 20]}", "expected: {range: [20, 1]}", "low 20 is above high 1"),
    ("check: {choices: [人数检测, 安全检查]}", "check: {choices: [人数检测, 安全检查], weights: [1]}", "1 weights for 2"),
    ("  - name: summary", "  - name: greet", "duplicate step name"),
])
def test_semantic_errors(tmp_path, old, new, message):
    assert old in MINI
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(tmp_path, MINI.replace(old, new, 1)))


def test_unknown_chain_step(tmp_path):
    with pytest.raises(SpecError, match=r"\$\.chains\.steps\[1\]: unknown step 'nope'"):
        load_spec(write_spec(tmp_path, MINI + "chains: {steps: [greet, nope], count: 2}\n"))


@pytest.mark.parametrize("old, new, key, line", [
    ("n: 40\n", "n: 40\nn: 30\n", "n", 3),
    ("  check: {choices: [人数检测, 安全检查]}\n", "  check: {choices: [人数检测, 安全检查]}\n  place: {values: [x]}\n",
     "place", 6),
])
def test_a_key_given_twice_is_refused_at_its_line(tmp_path, old, new, key, line):
    """PyYAML keeps the last of two equal keys silently: `n: 40` then `n: 30` made 30 records, a second slot of
    one name replaced the first."""
    with pytest.raises(SpecError, match=rf"spec.yaml:{line}: invalid YAML: duplicate key '{key}'"):
        load_spec(write_spec(tmp_path, MINI.replace(old, new, 1)))


def test_merge_keys_still_override(tmp_path):
    text = MINI.replace("slots:\n", "slots:\n  base: &base {values: [a]}\n  other: {<<: *base, values: [b]}\n", 1)
    assert load_spec(write_spec(tmp_path, text)).slots["other"].values == ("b",)


def test_plain_scalars_are_read_as_yaml_1_2_reads_them(tmp_path):
    """YAML 1.1 (PyYAML) made slot values on/off/yes True and False, 010 eight and 0x1F 31: seven values
    collapsed to five, and `turn {{ a }} the light` read `turn True the light`. Only true/false are booleans now."""
    text = MINI.replace("  check: {choices: [人数检测, 安全检查]}\n",
                        "  check: {choices: [人数检测, 安全检查]}\n  switch: {values: [on, off, yes, no, 010, 0x1F, 7]}\n")
    assert load_spec(write_spec(tmp_path, text)).slots["switch"].values == ("on", "off", "yes", "no", "010", "0x1F", 7)


def test_a_schema_error_quotes_a_long_value_cut_short(tmp_path):
    """A seventh probe: a data file given as a spec (`tasktune data train.json`, `tiny-model --spec train.json`)
    printed all its records on one line (jsonschema quotes the whole value); the quote is cut at 200 characters."""
    import json

    records = [{"content": f"查查第{i}个工地的人数", "summary": "好的" * 20} for i in range(300)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}:1: $: [{{'content': '查查第0个工地的人数'") and len(message) < 500, message
    assert message.endswith("... (list of 300 items) is not of type 'object'"), message
