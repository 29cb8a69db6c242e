"""A seventh probe: base model folders whose config.json (or tokenizer files) do not describe their weights. Each is
exit 2 naming the file before anything is written (it trained on random weights with exit 0, or was a traceback)."""

from __future__ import annotations

import json
import shutil

import pytest

from reliability_util import run_cli, train_argv


def _edit(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


CASES = [  # (file, change, what the message says)
    # GLM weights (fused gate_up_proj) under a Llama config: the missing weights were initialised at random
    ("config.json", dict(model_type="llama", architectures=["LlamaForCausalLM"]),
     "does not match its weights: 6 weight(s) it needs are not in the weight files"),
    ("config.json", dict(num_hidden_layers=0), "num_hidden_layers: expected a positive integer, got 0"),  # exit 0
    ("config.json", dict(num_key_value_heads=0), "num_key_value_heads: expected a positive integer"),  # ZeroDivision
    ("config.json", dict(hidden_size=0), "hidden_size: expected a positive integer"),
    ("tokenizer_config.json", None, "holds a JSON list, not an object"),  # AttributeError traceback
]


@pytest.mark.parametrize("file,change,said", CASES, ids=[f"{f}-{c}" for f, c, _ in CASES])
def test_a_base_whose_config_does_not_describe_its_weights_is_refused(tiny_glm, train_data, tmp_path, capsys, file,
                                                                      change, said):
    model = tmp_path / "model"
    shutil.copytree(tiny_glm, model)
    if change is None:
        (model / file).write_text("[]")
    else:
        _edit(model / file, **change)
    out = tmp_path / "runs" / "run"
    capsys.readouterr()
    code = run_cli(train_argv(model, train_data, out, max_steps=1))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert said in err and str(model) in err, err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_run_folder_given_as_the_model_says_which_base_to_give(train_data, tmp_path, capsys):
    """A seventh probe: `--model RUN` (an adapter folder) said `RUN has no tokenizer files ...; copy the model's
    tokenizer into it`, advice that would make it worse."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base-7b",
                                                         "peft_type": "PREFIX_TUNING"}))
    capsys.readouterr()
    code = run_cli(train_argv(run, train_data, tmp_path / "out", max_steps=1))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert (f"{run} has no tokenizer files (looked for tokenizer.json, tokenizer.model, vocab.json, vocab.txt, "
            "spiece.model, sentencepiece.bpe.model) and no config.json: it is not a model folder; it holds an adapter, "
            "trained on /models/base-7b (adapter_config.json): give that base model") in err
    assert "copy the model's tokenizer" not in err and not (tmp_path / "out").exists()


def test_tensors_the_config_has_no_place_for_are_a_warning_not_a_refusal(tiny_glm, tmp_path):
    """Published checkpoints carry tensors transformers does not use (a draft head, old buffers): they load, with a
    warning naming them; weights the config needs and the files lack stay a refusal (above)."""
    from tasktune.errors import TaskTuneWarning
    from tasktune.tuning.model.load import load_model

    model = tmp_path / "model"
    shutil.copytree(tiny_glm, model)
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    _edit(model / "config.json", num_hidden_layers=layers - 1)
    unused = rf"tensor\(s\) of the weight files have no place .*layers\.{layers - 1}\."
    with pytest.warns(TaskTuneWarning, match=unused):
        loaded = load_model(model)
    assert loaded.config.num_hidden_layers == layers - 1


def test_a_size_given_per_layer_is_a_list_of_positive_integers():
    """Gemma3n's text config gives intermediate_size per layer ([128, 128]): it was refused as not an integer."""
    from types import SimpleNamespace

    from tasktune.errors import ConfigError
    from tasktune.tuning.model.load import _check_sizes

    _check_sizes(SimpleNamespace(intermediate_size=[128, 128], hidden_size=64), "c.json")
    for bad in ([128, 0], [], [1.5], 0):
        with pytest.raises(ConfigError, match="c.json: intermediate_size: expected a positive integer"):
            _check_sizes(SimpleNamespace(intermediate_size=bad), "c.json")
