"""The Python API (tasktune/api.py) checks its arguments as the CLI does: every bool and path parameter by its
annotation (tuning/config.py `checked_arguments`), and train()'s settings against the method."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest

import tasktune
from tasktune.errors import ConfigError
from tasktune.tuning.config import TrainConfig

API_FUNCTIONS = sorted(name for name, module in tasktune._API.items() if module == "tasktune.api")


def _parameters(name: str, kind) -> list[str]:
    func = getattr(tasktune, name)
    hints = typing.get_type_hints(func)
    return [p for p in inspect.signature(func).parameters
            if p in hints and (hints[p] is kind or kind in typing.get_args(hints[p]))]


def _valid_arguments(name: str, tmp_path: Path) -> dict:
    """Arguments that pass the checks (each test makes one of them wrong)."""
    func = getattr(tasktune, name)
    hints = typing.get_type_hints(func)
    out = {}
    for p, parameter in inspect.signature(func).parameters.items():
        if p in _parameters(name, Path):
            out[p] = str(tmp_path / p)
        elif hints.get(p) is bool:
            out[p] = True
    return out


def test_every_public_api_function_checks_its_arguments():
    assert API_FUNCTIONS and all(getattr(getattr(tasktune, n), "checked_arguments", False) for n in API_FUNCTIONS)


@pytest.mark.parametrize("name", API_FUNCTIONS)
def test_a_bool_parameter_takes_only_true_or_false(name, tmp_path):
    """generate_data(meta="no") wrote records with meta: "no" is a non-empty string, so it was true."""
    for p in _parameters(name, bool):
        for wrong in ("no", "false", 0, None):
            with pytest.raises(ConfigError, match=rf"^{name}: {p}: expected True or False, got "):
                getattr(tasktune, name)(**{**_valid_arguments(name, tmp_path), p: wrong})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", API_FUNCTIONS)
def test_a_path_parameter_takes_only_a_path(name, tmp_path):
    """None reached pathlib (a bare TypeError) or became the folder "None"."""
    for p in _parameters(name, Path):
        for wrong, says in ((None, "got NoneType None"), (5, "got int 5"), (b"d", "got bytes"), ("", "an empty one"),
                            ("a\0b", "NUL")):
            with pytest.raises(ConfigError, match=rf"^{name}: {p}: expected a path, .*{says}"):
                getattr(tasktune, name)(**{**_valid_arguments(name, tmp_path), p: wrong})
    assert list(tmp_path.iterdir()) == []


def test_the_checked_parameters_are_the_ones_probed():
    assert _parameters("generate_data", bool) == ["meta"]
    assert _parameters("generate_data", Path) == ["spec", "out"] and _parameters("evaluate", Path) == ["run_dir"]


def test_generate_data_writes_with_a_real_bool(tmp_path):
    import json

    tasktune.generate_data("smarthome", tmp_path / "d", seed=3, n=200, meta=False)
    records = json.loads((tmp_path / "d" / "train.json").read_text(encoding="utf-8"))
    assert records and not any("meta" in record for record in records)


def test_train_refuses_a_setting_the_method_does_not_read(tmp_path, monkeypatch):
    """tasktune.train(method="prefix", lora_r=4) trained a prefix and ignored the rank, as the CLI did."""
    import tasktune.tuning.training.train as training

    monkeypatch.setattr(training, "fit", lambda cfg: cfg)  # no training here: only what reaches it
    out = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^--lora-r: --method prefix does not use it"):
        tasktune.train(out=out, method="prefix", lora_r=4)
    with pytest.raises(ConfigError, match=r"^--lora-r: --method prefix does not use it"):
        tasktune.train(TrainConfig(out=out, method="prefix", lora_r=4))
    with pytest.raises(ConfigError, match=r"^--quantization-bit none: --method qlora"):
        tasktune.train(TrainConfig(out=out, quantization_bit="none"), method="qlora")
    assert tasktune.train(out=out, method="lora", lora_r=4).lora_r == 4
    assert tasktune.train(TrainConfig(out=out, method="lora"), method="prefix").method == "prefix"  # defaults only
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("run", [None, "", 3])
def test_assistant_from_run_checks_its_run_folders(run):
    """`tasktune.Assistant.from_run(None)` was a bare TypeError from pathlib; the API's other entry points said
    which argument was wrong."""
    with pytest.raises(ConfigError, match="^Assistant.from_run: run_dirs: expected a path"):
        tasktune.Assistant.from_run(run)


@pytest.mark.parametrize("call, says", [
    (lambda: tasktune.train(model="m", data="d", out="o", max_step=2), "train: unknown setting 'max_step'; did you "
                                                                       "mean max_steps"),
    (lambda: tasktune.train(nosuch=1), "train: unknown setting 'nosuch'; the settings are TrainConfig's fields"),
    (lambda: tasktune.evaluate("run", limt=1), "evaluate: unknown setting 'limt'; did you mean limit"),
    (lambda: tasktune.evaluate("run", log=None), "evaluate: log: expected a function taking one line"),
    (lambda: tasktune.evaluate("run", log="print"), "evaluate: log: expected a function"),
    (lambda: tasktune.Assistant(), "Assistant(): nothing to answer with; make one with Assistant.from_run"),
])
def test_wrong_keywords_and_objects_are_tasktunes_errors_before_any_work(call, says):
    """A seventh probe: these were bare errors from deep inside (TrainConfig.__init__'s TypeError; `log=None` a
    TypeError once the whole eval had run and written its report; a bare Assistant() an AttributeError on
    'NoneType' at its first answer)."""
    with pytest.raises(ConfigError) as err:
        call()
    assert says in str(err.value)
