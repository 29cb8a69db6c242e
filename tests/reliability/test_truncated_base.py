"""Issue 21, class 6: a base model whose weight file is cut short (an interrupted download or copy) is a clear
error naming the file, before anything trains (was: a safetensors/loader traceback)."""

from __future__ import annotations

import shutil

import pytest

from reliability_util import run_cli, train_argv
from tasktune.errors import ConfigError
from tasktune.tuning.model.load import load_model


def _cut(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


CUTS = {
    "two thirds": lambda n: n * 2 // 3,
    "one byte short": lambda n: n - 1,
    "inside the header": lambda n: 20,
    "four bytes": lambda n: 4,
    "empty": lambda n: 0,
}


@pytest.fixture
def cut_model(tiny_glm, tmp_path, request):
    model = tmp_path / "model"
    shutil.copytree(tiny_glm, model)
    _cut(model / "model.safetensors", CUTS[request.param])
    return model


@pytest.mark.parametrize("cut_model", list(CUTS), indirect=True)
def test_truncated_base_weights_are_named(cut_model):
    with pytest.raises(ConfigError, match=r"model\.safetensors: (truncated|not a readable)"):
        load_model(cut_model)


@pytest.mark.parametrize("cut_model", ["two thirds"], indirect=True)
def test_train_on_truncated_base_weights_exits_2_naming_the_file(cut_model, train_data, tmp_path, capsys):
    capsys.readouterr()
    code = run_cli(train_argv(cut_model, train_data, tmp_path / "run", max_steps=2))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{cut_model / 'model.safetensors'}: truncated" in err and "download or copy it again" in err, err
