"""Adapter configs name the base model so that loading works from any working directory."""

from __future__ import annotations

import json
import shutil

import pytest

from tasktune.errors import ConfigError
from tasktune.tuning.model import methods
from tasktune.tuning.evaluation.eval import EvalConfig, evaluate
from tasktune.tuning.training.train import fit
from tests.tuning.runs import fast_config, write_data


def _train(tiny_model_dir, root, monkeypatch, **overrides):
    """Train from `root` with the base given as the relative path models/tiny; return (run, base folder)."""
    base = root / "models" / "tiny"
    shutil.copytree(tiny_model_dir("glm"), base)
    data = write_data(root / "data")
    monkeypatch.chdir(root)
    fit(fast_config("models/tiny", data, root / "run", max_steps=2, **overrides), log=lambda *_: None)
    return root / "run", base


@pytest.mark.parametrize("method", ["ptuning-v2", "lora"])
def test_a_local_base_is_recorded_by_its_absolute_path(tiny_model_dir, tmp_path, monkeypatch, method):
    run, base = _train(tiny_model_dir, tmp_path, monkeypatch, method=method)
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    info = json.loads((run / methods.METHOD_FILE).read_text())
    assert info["base_model"] == str(base.resolve()) and info["base_model_given"] == "models/tiny"
    assert json.loads((run / "tasktune_run.json").read_text())["config"]["model"] == "models/tiny"  # as given
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # models/tiny does not resolve here; the recorded absolute path does
    assert methods.base_source("models/tiny", run) == str(base.resolve())
    out = evaluate(EvalConfig(run_dir=str(run), max_new_tokens=2, limit=2), log=lambda *_: None)
    assert out["info"]["n"] == 2


def test_a_hub_id_is_recorded_as_given(tmp_path):
    assert methods.base_model_reference("THUDM/chatglm2-6b") == "THUDM/chatglm2-6b"
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "THUDM/chatglm2-6b"}))
    assert methods.base_source("THUDM/chatglm2-6b", tmp_path) == "THUDM/chatglm2-6b"


def test_a_moved_base_folder_is_a_clear_error_naming_both_paths(tiny_model_dir, tmp_path, monkeypatch):
    run, base = _train(tiny_model_dir, tmp_path, monkeypatch)
    moved = tmp_path / "moved"
    base.rename(moved)
    with pytest.raises(ConfigError) as err:
        evaluate(EvalConfig(run_dir=str(run), max_new_tokens=2, limit=2), log=lambda *_: None)
    message = str(err.value)
    assert str(base.resolve()) in message and "'models/tiny'" in message and "adapter_config.json" in message
    assert "does not exist any more" in message
    # the fix the message names: the new place in adapter_config.json
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(moved)}))
    assert methods.base_source("models/tiny", run) == str(moved)
    # a folder under the given name from the current directory is used, with a warning naming the old one
    moved.rename(base)
    (run / "adapter_config.json").write_text(json.dumps(config))
    shutil.move(str(tmp_path / "models"), str(tmp_path / "models2"))
    (tmp_path / "other").mkdir()
    shutil.copytree(tmp_path / "models2", tmp_path / "other" / "models")
    monkeypatch.chdir(tmp_path / "other")
    with pytest.warns(UserWarning, match="no longer exists"):
        assert methods.base_source("models/tiny", run) == "models/tiny"
