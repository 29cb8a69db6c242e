"""Numbers in specs and API configs (issue 21, class 3): NaN and ±inf are schema errors wherever they appear,
and a count of 0 or below is refused, never silently read as "all" or "none"."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tasktune.cli import main
from tasktune.errors import ConfigError, SpecError
from tasktune.datagen.spec import parse_spec
from tasktune.tuning.evaluation.eval import EvalConfig

SPEC = {
    "name": "numbers", "n": 10, "seed": 1,
    "slots": {"a": {"choices": ["x", "y"], "weights": [1, 1]}, "b": {"range": [1, 3]}},
    "steps": [{"name": "s", "pattern": "语音#{{ utterance }}", "contents": ["{{ a }}{{ b }}"], "summary": "ok",
               "unique": False}],
    "noise": {"rate": 0.1, "ops": {"mask": 1.0}},
    "split": {"dev": 0.2},
}
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("path, value", [
    (("slots", "a", "weights", 0), NAN), (("slots", "a", "weights", 1), INF), (("noise", "rate"), NAN),
    (("noise", "ops", "mask"), INF), (("split", "dev"), NAN), (("split", "dev"), -INF),
    (("slots", "b", "range", 1), INF), (("n",), NAN),
])
def test_nan_and_inf_anywhere_in_a_spec_are_schema_errors(path, value):
    data = copy.deepcopy(SPEC)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SpecError, match=r"\$\." + r"\.".join(str(k) for k in path if isinstance(k, str)) +
                       r".*is not a finite number"):
        parse_spec(data, Path("spec.yaml"))


def test_the_valid_spec_parses():
    assert parse_spec(copy.deepcopy(SPEC), Path("spec.yaml")).n == 10


def test_a_nan_in_a_yaml_spec_names_its_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nn: 10\nsplit:\n  dev: .nan\nsteps:\n  - name: s\n    pattern: '{{ utterance }}'\n"
                    "    contents: [a]\n    summary: b\n", encoding="utf-8")
    assert main(["data", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:4: $.split.dev: nan is not a finite number" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value", [("limit", 0), ("limit", -1), ("batch_size", 0), ("max_new_tokens", -5),
                                          ("limit", 2.5)])
def test_eval_config_refuses_counts_below_one(field, value):
    with pytest.raises(ConfigError, match=field):
        EvalConfig(run_dir="run", **{field: value})
    assert EvalConfig(run_dir="run", limit=None).limit is None  # None: every record


@pytest.mark.parametrize("written, value", [("1e-3", 0.001), ("1E-2", 0.01), ("0.001e0", 0.001), ("1.5e-3", 0.0015),
                                            ("0.5e+0", 0.5), (".5", 0.5), ("+5e-1", 0.5), ("0.25", 0.25)])
def test_yaml_12_float_forms_are_numbers_in_a_spec(tmp_path, written, value):
    """`rate: 1e-3` was refused ("'1e-3' is not of type 'number'"): YAML 1.1 wants a dot and a signed exponent."""
    from tasktune.datagen.spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t\nn: 10\nnoise: {{rate: {written}}}\nsplit: {{dev: {written}}}\nsteps:\n  - name: s\n"
                    "    contents: ['{{{{ a }}}}']\n    summary: b\n    unique: false\nslots: {a: {values: [x]}}\n",
                    encoding="utf-8")
    loaded = load_spec(spec)
    assert loaded.noise.rate == value and loaded.split.dev == value


def test_yaml_12_floats_leave_other_scalars_as_they_were():
    from tasktune.yamlread import load_spec_text

    data = load_spec_text("[1E2, 1.0e308, 1e309, -.inf, .nan, 10, -0, 010, 0x1F, 1e, e3, ., 1.2.3, 1_0, on, yes, ~]")
    assert data[:3] == [100.0, 1e308, INF] and data[3] == -INF and data[4] != data[4]
    assert data[5:] == [10, 0, "010", "0x1F", "1e", "e3", ".", "1.2.3", "1_0", "on", "yes", None]
    assert type(data[5]) is int


def test_a_float_too_large_is_refused_as_not_finite(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nnoise: {rate: 1e309}\nsteps: [{name: s, contents: [a], summary: b}]\n", encoding="utf-8")
    assert main(["data", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert f"{spec}:2: $.noise.rate: inf is not a finite number" in capsys.readouterr().err
