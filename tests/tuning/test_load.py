"""Tests for tuning/model/load.py: base model and tokenizer loading, quantization modes, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from tasktune.errors import ConfigError
from tasktune.tuning.model.load import load_model, load_tokenizer
from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix


def test_loads_frozen_model_in_eval_mode(tiny_model_dir):
    model = load_model(tiny_model_dir("llama"))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32  # "auto": as saved


def test_dtype_by_name(tiny_model_dir):
    assert load_model(tiny_model_dir("glm"), dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_model(tiny_model_dir("glm"), dtype="float33")


def test_missing_path_names_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_model(tmp_path / "no-such-model")
    assert "no-such-model" in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer("./no-such-tokenizer")


def test_the_default_model_missing_says_so_without_asking_the_hub(tmp_path, monkeypatch):
    """`tasktune train` without --model in a fresh clone answered with a hub error ("cannot resolve
    huggingface.co") about models/tiny-glm, a model the user never named; now it names the default, the shipped
    base and `tasktune tiny-model`, before any request to the hub."""
    from tasktune.tuning.config import DEFAULT_MODEL, TrainConfig
    from tasktune.tuning.model import hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "hub_load", lambda *a, **k: pytest.fail("asked the hub"))
    assert TrainConfig().model == DEFAULT_MODEL
    for load in (load_model, load_tokenizer):
        with pytest.raises(ConfigError, match="train's default --model.*templates/demo/tiny-glm.*tiny-model"):
            load(DEFAULT_MODEL)


def test_folder_without_weights(tmp_path, tiny_model_dir):
    shutil.copy(tiny_model_dir("glm") / "config.json", tmp_path / "config.json")
    with pytest.raises(ConfigError, match="no model weights"):
        load_model(tmp_path)


def test_pickle_weights_need_opt_in(tmp_path, tiny_model_dir):
    source = tiny_model_dir("glm")
    shutil.copy(source / "config.json", tmp_path / "config.json")
    state = load_model(source).state_dict()
    torch.save({k: v.contiguous() for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="allow_pickle"):
        load_model(tmp_path)
    model = load_model(tmp_path, allow_pickle=True)
    assert torch.equal(model.get_input_embeddings().weight, state["model.embed_tokens.weight"])


@pytest.mark.parametrize("bits, layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_quantized_loading(tiny_model_dir, bits, layer):
    pytest.importorskip("bitsandbytes")
    model = load_model(tiny_model_dir("glm"), quantization_bit=bits)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer
    ids = torch.tensor([[5, 6, 7, 8]], device=model.device)  # a quantized base sits on the GPU where there is one
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits.float()).all()


def test_unknown_quantization_and_task(tiny_model_dir):
    with pytest.raises(ConfigError, match="quantization_bit"):
        load_model(tiny_model_dir("glm"), quantization_bit=3)
    with pytest.raises(ConfigError, match="task"):
        load_model(tiny_model_dir("glm"), task="seq2seq")


def test_classification_task_takes_a_prefix(tiny_model_dir):
    model = load_model(tiny_model_dir("qwen2"), task="classification", num_labels=3)
    assert type(model).__name__ == "Qwen2ForSequenceClassification"
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        base = model(ids).logits
        tuner = attach_prefix(model, PrefixConfig(pre_seq_len=3))
        tuned = model(ids).logits
    assert tuned.shape == (2, 3) and not torch.allclose(base, tuned)
    assert tuner.trainable_parameters() > 0


def test_tokenizer_without_pad_uses_eos_and_pads_left(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir("llama", pad_token=False))
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"
    batch = tokenizer(["你好", "因为出现地名为济南"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # the short row is padded on the left


def test_tokenizer_keeps_its_own_pad(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir("llama"), padding_side="right")
    assert tokenizer.pad_token == "<pad>" and tokenizer.padding_side == "right"


def test_a_classification_base_loads_without_the_report_of_its_new_head(tiny_model_dir, capfd):
    """Every classification train, eval and `serve --router` printed transformers' LOAD REPORT (score.weight
    MISSING, "Consider training on your downstream task"): the head is new by design. Other rows keep the report."""
    import logging

    from tasktune.tuning.model.load import _HeadReportFilter

    load_model(tiny_model_dir("glm"), task="classification", num_labels=3)
    assert "LOAD REPORT" not in capfd.readouterr().err
    table = "Key          | Status  | \n-------------+---------+-\n{rows}\nNotes:\n- MISSING:\tthose params were newly"

    def kept(rows: str) -> bool:
        message = "\x1b[1mGlm LOAD REPORT\x1b[0m from: x\n" + table.format(rows=rows)
        return _HeadReportFilter().filter(logging.LogRecord("t", logging.WARNING, "f", 1, message, None, None))

    assert not kept("score.weight | MISSING | ") and not kept("score.weight | MISSING | \nscore.bias   | MISSING | ")
    assert kept("score.weight | MISSING | \nmodel.layers.0.mlp.up.weight | MISSING | ")
    assert not kept("score.weight | MISSING | \nlm_head.weight | UNEXPECTED | ")
    assert not kept("classifier.dense.weight | MISSING | \nembed_out.weight | UNEXPECTED | ")  # GPT-NeoX, RoBERTa
    assert kept("score.weight | MISMATCH | ") and kept("lm_head.weight | MISSING | ")
    assert kept("score.weight | MISSING | \nmodel.norm.weight | UNEXPECTED | ")
    assert _HeadReportFilter().filter(logging.LogRecord("t", logging.WARNING, "f", 1, "other text", None, None))
