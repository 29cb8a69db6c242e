"""A seventh probe: adapter files another program (or hand) wrote into a run folder. adapter_config.json's values
and the weights' tensors are checked against each other, exit 2 naming the file and the field, never a traceback
or an adapter that silently loads as something else (docs/reliability.md, "A seventh probe")."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from reliability_util import ADAPTER, run_cli, train_argv
from tasktune.tuning.model import methods


@pytest.fixture(scope="module")
def runs(tiny_glm, train_data, tmp_path_factory):
    """One finished 1-step run per adapter family: ours (ptuning-v2), PEFT's lora and prompt, BitFit, full."""
    out = {}
    for method in ("ptuning-v2", "lora", "prompt", "bitfit", "full"):
        folder = tmp_path_factory.mktemp("third-party") / method
        assert run_cli(train_argv(tiny_glm, train_data, folder, method=method, max_steps=1, save_steps=1)) == 0
        out[method] = folder
    return out


def _copy(runs, method, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[method], run)
    return run


def _edit_config(run, **changes):
    path = run / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def _eval(run, capsys):
    capsys.readouterr()
    code = run_cli(["eval", str(run), "--limit", "1", "--max-new-tokens", "2"])
    return code, capsys.readouterr().err


CONFIG_VALUES = [  # (method, edit of adapter_config.json, what the message says)
    ("ptuning-v2", {"num_virtual_tokens": 4.0}, "num_virtual_tokens: expected an integer, got float 4.0"),  # TypeError
    ("ptuning-v2", {"num_virtual_tokens": "4"}, "num_virtual_tokens: expected an integer, got str '4'"),
    ("ptuning-v2", {"num_virtual_tokens": ...}, "num_virtual_tokens: missing"),
    ("ptuning-v2", {"num_transformer_submodules": "x"}, "num_transformer_submodules: expected an integer"),
    ("ptuning-v2", {"prefix_projection": "yes"}, "prefix_projection: expected true or false, got 'yes'"),
    ("lora", {"r": "8"}, "r: expected an integer, got str '8'"),  # TypeError from PEFT's `<=`
    ("lora", {"r": 8.5}, "r: expected an integer, got float 8.5"),
    ("lora", {"r": 4}, "gives r 4"),  # the weights' rank is 8: was PEFT's cut "Error(s) in loading state_dict"
    ("lora", {"lora_alpha": "nan"}, "lora_alpha: expected a finite float"),  # TypeError
    ("lora", {"target_modules": 5}, "target_modules: expected a module name or a list of them"),  # TypeError
    ("lora", {"use_dora": "yes"}, "use_dora: expected true or false"),  # loaded as DoRA without its weights, exit 0
    ("prompt", {"num_virtual_tokens": 10**9}, "num_virtual_tokens: expected int >= 1 and <= 4096"),  # 256 GB alloc
    ("prompt", {"num_virtual_tokens": "16"}, "num_virtual_tokens: expected an integer"),  # TypeError
    ("prompt", {"num_virtual_tokens": 8}, "gives num_virtual_tokens 8"),  # cut "Error(s) in loading state_dict"
]


@pytest.mark.parametrize("method,changes,said", CONFIG_VALUES,
                         ids=[f"{m}-{'-'.join(c)}={list(c.values())[0]!r:.12}" for m, c, _ in CONFIG_VALUES])
def test_adapter_config_values_are_checked_before_the_base_loads(runs, method, changes, said, tmp_path, capsys,
                                                                 monkeypatch):
    run = _copy(runs, method, tmp_path)
    _edit_config(run, **changes)

    def no_base(*args, **kwargs):
        raise AssertionError("the base was loaded before adapter_config.json was checked")

    monkeypatch.setattr(methods, "load_base", no_base)
    code, err = _eval(run, capsys)
    assert code == 2 and "Traceback" not in err and "AssertionError" not in err, err
    assert f"{run / 'adapter_config.json'}" in err and said in err, err
    assert not (run / "eval").exists()


def _nan(tensors):
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    return tensors


def _extra(tensors):
    return {**tensors, "base_model.model.extra.weight": torch.zeros(3)}


def _drop_first(tensors):
    return {k: v for k, v in tensors.items() if k != sorted(tensors)[0]}


def _grow_first(tensors):
    name = sorted(tensors)[0]
    return {**tensors, name: torch.zeros(*[n + 1 for n in tensors[name].shape])}


WEIGHTS = [  # (method, weight file, change, what the message says); each loaded with exit 0 or was a traceback
    ("lora", ADAPTER, _nan, "NaN or infinite"),
    ("lora", ADAPTER, lambda t: {k: v.to(torch.int32) for k, v in t.items()}, "adapter weights are floating point"),
    ("lora", ADAPTER, _extra, "1 tensor(s) the model has no place for (base_model.model.extra.weight)"),
    ("lora", ADAPTER, _drop_first, "no tensor for 1 weight(s) of the adapter"),
    ("prompt", ADAPTER, _nan, "NaN or infinite"),
    ("prompt", ADAPTER, _extra, "the model has no place for"),
    ("prompt", ADAPTER, lambda t: {}, "lacks the tensor 'prompt_embeddings'"),  # was "peft could not ...: 'prompt_e…"
    ("bitfit", "tasktune_bitfit.safetensors", _drop_first, "lacks 1 of the"),
    ("bitfit", "tasktune_bitfit.safetensors", lambda t: {}, "biases of"),
    ("bitfit", "tasktune_bitfit.safetensors", _grow_first, "the base's bias has"),  # RuntimeError traceback
    ("full", "tasktune_full.safetensors", _nan, "holds NaN or infinite values"),
    ("full", "tasktune_full.safetensors", lambda t: {k: v.to(torch.int32) for k, v in t.items()}, "is I32"),
    ("full", "tasktune_full.safetensors", _extra, "Unexpected key(s) in state_dict"),  # (the heading alone before)
]


@pytest.mark.parametrize("method,file,change,said", WEIGHTS,
                         ids=[f"{m}-{i}" for i, (m, *_rest) in enumerate(WEIGHTS)])
def test_adapter_weights_that_do_not_fit_are_refused(runs, method, file, change, said, tmp_path, capsys):
    run = _copy(runs, method, tmp_path)
    path = run / file
    save_file(change(load_file(str(path))), str(path))
    code, err = _eval(run, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert str(path) in err and said in err, err
    assert not (run / "eval").exists()


def test_an_untouched_third_party_style_folder_still_evaluates(runs, tmp_path, capsys):
    """The checks pass what PEFT itself writes (every family, f16 weights too)."""
    for method in ("lora", "prompt"):
        run = _copy(runs, method, tmp_path / method)
        tensors = load_file(str(run / ADAPTER))
        save_file({k: v.half() for k, v in tensors.items()}, str(run / ADAPTER))
        code, err = _eval(run, capsys)
        assert code == 0, err


@pytest.mark.parametrize("targets, with_embeddings", [(["q_proj"], True), (["q_proj", "embed_tokens"], False)])
def test_lora_files_peft_saves_either_way_load_without_asking_the_hub(tiny_glm, tmp_path, monkeypatch, targets,
                                                                       with_embeddings):
    """The check that every tensor found its place compared the file with PEFT's default save
    (save_embedding_layers="auto"): a LoRA saved with the embedding layers (or an embedding-targeted one saved
    without) was refused, and every load asked the hub whether the base's vocabulary changed."""
    import peft
    import peft.utils.save_and_load as peft_save
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tasktune.tuning.model.load import load_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_glm),
                           LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=targets))
    folder = tmp_path / "adapter"
    model.save_pretrained(folder, save_embedding_layers=with_embeddings)
    (folder / "tasktune_method.json").write_text(json.dumps({"method": "lora", "task": "causal-lm", "labels": None}))
    asked = []
    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", lambda *a, **k: asked.append(a) or False)
    adapter = methods.load(load_model(tiny_glm), folder)
    assert isinstance(adapter.model, peft.PeftModel) and asked == []


@pytest.mark.parametrize("changes, said", [({"num_virtual_tokens": 4.0}, "num_virtual_tokens: expected an integer"),
                                           ({"num_layers": "2"}, "num_layers: expected an integer, got str '2'")])
def test_the_shared_base_of_serve_checks_adapter_config_before_loading(runs, tmp_path, monkeypatch, changes, said):
    """`tasktune serve` / Assistant.from_run(batching="engine") read the prefix without eval's checks: 4.0 was
    torch's TypeError traceback once the base had loaded, "2" an error saying 2 layers differ from 2 layers."""
    import tasktune
    from tasktune.errors import ConfigError

    run = _copy(runs, "ptuning-v2", tmp_path)
    _edit_config(run, **changes)

    def no_base(*args, **kwargs):
        raise AssertionError("the base was loaded before adapter_config.json was checked")

    monkeypatch.setattr(methods, "load_base", no_base)
    with pytest.raises(ConfigError) as err:
        tasktune.Assistant.from_run(run, runs["ptuning-v2"], batching="engine")
    assert str(err.value).startswith(f"{run / 'adapter_config.json'}: {said}"), err.value


def test_an_adapter_naming_another_existing_base_than_the_record_is_said(runs, tmp_path, capsys):
    """A seventh probe: adapter_config.json's base_model_name_or_path (read first, so a run evaluates from any
    folder) edited to another model folder of the same shapes was loaded without a word, while tasktune_run.json's
    config.model, the base it was trained on, still existed."""
    from tests.tuning.conftest import build_tiny_model_dir

    other = build_tiny_model_dir(tmp_path / "other-base", "glm", seed=5)
    run = _copy(runs, "ptuning-v2", tmp_path)
    trained_on = json.loads((run / "tasktune_run.json").read_text())["config"]["model"]
    _edit_config(run, base_model_name_or_path=str(other))
    code, err = _eval(run, capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("tasktune eval: warning:")]
    assert warning == [f"tasktune eval: warning: {run}: adapter_config.json names the base {other}, but its "
                       f"tasktune_run.json was trained on {trained_on} (config.model), which exists too; loading "
                       f"{other}. If that is not the base, fix \"base_model_name_or_path\" in "
                       f"{run / 'adapter_config.json'}"], err


def test_lora_layouts_whose_rank_is_not_one_axis_are_left_to_peft(tmp_path):
    """The rank check refused valid PEFT files: MoE experts' LoRA (target_parameters: r x experts rows) and a
    grouped Conv2d's lora_B (r / groups columns); a plain 2-D tensor of another rank is still refused."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.model.methods.peft_files import _check_shapes

    config, weights = tmp_path / "adapter_config.json", tmp_path / ADAPTER
    moe = {"peft_type": "LORA", "r": 4, "target_parameters": ["mlp.experts.gate_up_proj"]}
    _check_shapes(moe, config, weights, {"m.experts.lora_A.weight": [16, 32], "m.experts.lora_B.weight": [128, 16]})
    conv = {"peft_type": "LORA", "r": 4}
    _check_shapes(conv, config, weights, {"conv.lora_A.weight": [4, 8, 3, 3], "conv.lora_B.weight": [8, 2, 1, 1]})
    for shapes in ({"q.lora_A.weight": [8, 32]}, {"q.lora_B.weight": [32, 2]}, {"conv.lora_A.weight": [8, 8, 3, 3]}):
        with pytest.raises(ConfigError, match="gives r 4"):
            _check_shapes(conv, config, weights, shapes)
