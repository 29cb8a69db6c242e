"""Tests for tuning/model/save.py: PEFT-format round trips, clear errors, atomic saves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tasktune.errors import ConfigError
from tasktune.tuning.model import save as save_module
from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix
from tasktune.tuning.model.save import CONFIG_NAME, ENCODER_NAME, RECORD_NAME, WEIGHTS_NAME, load_adapter, save_adapter

P = 4


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _ids():
    return torch.randint(3, 250, (2, 6), generator=torch.Generator().manual_seed(1))


def _trained_tuner(path, projection=False, seed=0):
    """A tuner whose prefix is random (as if trained), on a fresh copy of the base."""
    torch.manual_seed(seed)
    model = _load(path)
    config = PrefixConfig(pre_seq_len=P, prefix_projection=projection, prefix_hidden_size=24)
    return attach_prefix(model, config)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("arch", ["glm", "llama", "qwen2"])
@pytest.mark.parametrize("projection", [False, True])
def test_peft_loads_our_adapter_with_same_logits(tiny_model_dir, tmp_path, arch, projection):
    from peft import PeftModel

    path = tiny_model_dir(arch)
    tuner = _trained_tuner(path, projection)
    out = save_adapter(tuner, tmp_path / "run", base_model=str(path))
    peft_model = PeftModel.from_pretrained(_load(path), out).eval()
    ids = _ids()
    torch.testing.assert_close(_logits(peft_model, ids), _logits(tuner.model, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("projection", [False, True])
def test_round_trip_gives_same_logits_and_resumes(tiny_model_dir, tmp_path, projection):
    path = tiny_model_dir("glm4")
    tuner = _trained_tuner(path, projection)
    save_adapter(tuner, tmp_path, base_model="tiny-glm4", extra={"seed": 7, "prompt_template": "grid"})
    ids = _ids()
    frozen = load_adapter(_load(path), tmp_path)
    assert frozen.trainable_parameters() == 0 and not frozen.config.prefix_projection
    torch.testing.assert_close(_logits(frozen.model, ids), _logits(tuner.model, ids), rtol=1e-5, atol=1e-5)
    resumed = load_adapter(_load(path), tmp_path, is_trainable=True)
    assert resumed.config.prefix_projection == projection and resumed.trainable_parameters() > 0
    for key, value in tuner.encoder.state_dict().items():
        assert torch.equal(resumed.encoder.state_dict()[key], value)
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    assert record["base_model"] == "tiny-glm4" and record["extra"] == {"seed": 7, "prompt_template": "grid"}
    assert record["prefix"]["pre_seq_len"] == P and record["tasktune_version"]
    assert set(record["sha256"]) == ({WEIGHTS_NAME, ENCODER_NAME} if projection else {WEIGHTS_NAME})


def test_we_load_an_adapter_saved_by_peft(tiny_model_dir, tmp_path):
    from peft import PrefixTuningConfig, get_peft_model

    path = tiny_model_dir("llama")
    torch.manual_seed(3)
    peft_model = get_peft_model(_load(path), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)).eval()
    peft_model.save_pretrained(tmp_path)
    tuner = load_adapter(_load(path), tmp_path)
    ids = _ids()
    torch.testing.assert_close(_logits(tuner.model, ids), _logits(peft_model, ids), rtol=1e-4, atol=1e-4)


def test_mismatched_base_model_is_a_clear_error(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    path = tiny_model_dir("llama")
    save_adapter(_trained_tuner(path), tmp_path, base_model="tiny")
    other_config = _load(path).config
    other_config.num_hidden_layers = 3
    other = AutoModelForCausalLM.from_config(other_config)
    with pytest.raises(ConfigError, match=r"different base model.*2 layers.*3 layers"):
        load_adapter(other, tmp_path)
    assert not hasattr(other, "tasktune_prefix_encoder")


def test_mismatched_pre_seq_len_is_a_clear_error(tiny_model_dir, tmp_path):
    path = tiny_model_dir("glm")
    save_adapter(_trained_tuner(path), tmp_path, base_model="tiny")
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["num_virtual_tokens"] = P + 2
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"'prompt_embeddings' has shape \[4, 128\], but .*adapter_config.json gives "
                                          r"num_virtual_tokens 6"):  # (read from the header, before the tensors)
        load_adapter(_load(path), tmp_path)


def test_truncated_weights_name_the_file(tiny_model_dir, tmp_path):
    path = tiny_model_dir("glm")
    save_adapter(_trained_tuner(path), tmp_path, base_model="tiny")
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConfigError, match=WEIGHTS_NAME):
        load_adapter(_load(path), tmp_path)


def test_missing_folder_and_config_are_clear_errors(tiny_model_dir, tmp_path):
    model = _load(tiny_model_dir("glm"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_adapter(model, tmp_path / "nope")
    with pytest.raises(ConfigError, match=CONFIG_NAME):
        load_adapter(model, tmp_path)


@pytest.mark.parametrize("name", [CONFIG_NAME, RECORD_NAME])
@pytest.mark.parametrize("text", ["[]", "null", "[1]", "5"])
def test_json_of_the_wrong_shape_names_the_file(tiny_model_dir, tmp_path, name, text):
    """JSON that parses but is not an object ([] or null in adapter_config.json) failed on `.get` with an
    AttributeError traceback in `tasktune eval` and `chat`."""
    path = tiny_model_dir("glm")
    save_adapter(_trained_tuner(path), tmp_path, base_model="tiny")
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=rf"{name}: expected a JSON object, found"):
        load_adapter(_load(path), tmp_path)


def test_a_method_record_of_the_wrong_shape_names_the_file(tmp_path):
    from tasktune.tuning.model.methods import METHOD_FILE, read_method_info

    for text in ('{"method": 5}', "[1]", "null"):
        (tmp_path / METHOD_FILE).write_text(text)
        with pytest.raises(ConfigError, match=rf"{METHOD_FILE}: expected a JSON object with the method's name"):
            read_method_info(tmp_path)


def test_crash_mid_save_leaves_previous_adapter_loadable(tiny_model_dir, tmp_path, monkeypatch):
    path = tiny_model_dir("glm")
    first = _trained_tuner(path, seed=0)
    save_adapter(first, tmp_path, base_model="tiny")
    (tmp_path / "train_log.jsonl").write_text("{}\n")  # the run folder's other files survive saves
    ids = _ids()
    expected = _logits(first.model, ids)

    real_replace = os.replace

    def crash_after_weights(src, dst):
        if Path(dst).name == CONFIG_NAME:  # weights moved in, then the disk fills up
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(save_module.os, "replace", crash_after_weights)
    with pytest.raises(OSError):
        save_adapter(_trained_tuner(path, seed=1), tmp_path, base_model="tiny")
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="interrupted save"):  # new weights landed, old record stayed
        loaded = load_adapter(_load(path), tmp_path)
    assert not torch.allclose(_logits(loaded.model, ids), expected)  # a complete, loadable adapter
    assert (tmp_path / "train_log.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tasktune-save-")]  # staging cleaned up

    monkeypatch.setattr(save_module.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        save_adapter(_trained_tuner(path, seed=2), tmp_path, base_model="tiny")
    monkeypatch.undo()
    untouched = load_adapter(_load(path), tmp_path)  # crash before any file moved: previous save intact
    assert torch.equal(_logits(untouched.model, ids), _logits(loaded.model, ids))


def test_projection_adapter_from_peft_cannot_resume_without_mlp(tiny_model_dir, tmp_path):
    path = tiny_model_dir("glm")
    save_adapter(_trained_tuner(path, projection=True), tmp_path, base_model="tiny")
    (tmp_path / ENCODER_NAME).unlink()
    with pytest.raises(ConfigError, match="cannot resume"):
        load_adapter(_load(path), tmp_path, is_trainable=True)
    assert load_adapter(_load(path), tmp_path).trainable_parameters() == 0


@pytest.mark.parametrize("damage, says", [
    (lambda t: t.fill_(float("nan")), "NaN or infinite"),
    (lambda t: t.fill_(float("inf")), "NaN or infinite"),
    (lambda t: t.to(torch.int8), "is int8"),
    (lambda t: t.bool(), "is bool"),
    (lambda t: {"prompt_embeddings": t, "extra": t.clone()}, "unexpected: ['extra']"),
], ids=["nan", "inf", "int8", "bool", "extra tensor"])
def test_adapter_tensors_nobody_trained_are_refused(tiny_model_dir, tmp_path, damage, says):
    """A prefix of NaN, infinities, integers or with tensors beside it was loaded and answered with exit 0 (its
    record's sha256 rewritten, or deleted as the docs allow for a file changed on purpose)."""
    from safetensors.torch import load_file, save_file

    path = tiny_model_dir("glm")
    save_adapter(_trained_tuner(path), tmp_path, base_model="tiny")
    flat = load_file(str(tmp_path / WEIGHTS_NAME))["prompt_embeddings"]
    damaged = damage(flat)
    save_file(damaged if isinstance(damaged, dict) else {"prompt_embeddings": damaged}, str(tmp_path / WEIGHTS_NAME))
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    del record["sha256"][WEIGHTS_NAME]
    (tmp_path / RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"{WEIGHTS_NAME}.*{says}".replace("[", r"\[").replace("]", r"\]")):
        load_adapter(_load(path), tmp_path)


@pytest.mark.parametrize("edit, says", [
    (lambda r: r.update(format=99), "format 99 is not one this tasktune reads"),
    (lambda r: r.update(format="1"), "format '1'"),
    (lambda r: r["prefix"].update(pre_seq_len=P + 3), f"prefix.pre_seq_len is {P + 3}"),
    # the geometry the record repeats was not compared (an edited shape.num_layers was ignored)
    (lambda r: r["shape"].update(num_layers=3), "shape.num_layers is 3 but adapter_config.json's num_layers is 2"),
    (lambda r: r["shape"].update(num_kv_heads=4), "shape.num_kv_heads is 4 but adapter_config.json's "
                                                  "num_attention_heads is 2"),
    (lambda r: r["shape"].update(head_dim=8), r"shape.num_kv_heads \* shape.head_dim is 16 but adapter_config.json's "
                                              "token_dim is 32"),
    (lambda r: r["prefix"].update(prefix_projection=True), "prefix.prefix_projection is True but"),
])
def test_an_adapter_record_of_another_format_or_length_is_refused(tiny_model_dir, tmp_path, edit, says):
    path = tiny_model_dir("glm")
    save_adapter(_trained_tuner(path), tmp_path, base_model="tiny")
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    edit(record)
    (tmp_path / RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"{RECORD_NAME}: {says}"):
        load_adapter(_load(path), tmp_path)
