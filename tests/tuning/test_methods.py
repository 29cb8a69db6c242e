"""Every --method trains, saves, reloads and evaluates through the one Adapter interface (tuning/model/methods/)."""

import json

import pytest
import torch

from tasktune.errors import ConfigError
from tests.tuning.runs import fast_config, write_data
from tasktune.tuning.model import methods
from tasktune.tuning.evaluation.eval import EvalConfig, evaluate
from tasktune.tuning.model.load import load_model, load_tokenizer
from tasktune.tuning.training.train import fit

FAST = ["ptuning-v2", "prefix", "prompt", "prompt-text", "p-tuning", "bitfit", "lora", "full"]
PEFT_FORMAT = {"prompt": "PROMPT_TUNING", "prompt-text": "PROMPT_TUNING", "p-tuning": "P_TUNING", "lora": "LORA",
               "qlora": "LORA", "ptuning-v2": "PREFIX_TUNING", "prefix": "PREFIX_TUNING"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("methods") / "data")


def _logits(model, tokenizer):
    batch = tokenizer(["步骤#问候*语音#你好"], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits[:, -1].float()  # last position: prompt methods prepend virtual tokens


def _check_method(method, model_dir, data, run):
    result = fit(fast_config(model_dir, data, run, method=method, max_steps=2, save_steps=2,
                             per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-1),
                 log=lambda *_: None)
    assert result.steps == 2 and result.final_loss is not None
    info = json.loads((run / methods.METHOD_FILE).read_text())
    assert info["method"] == method and all((run / f).is_file() for f in info["files"])
    record = json.loads((run / "tasktune_run.json").read_text())
    assert record["fingerprint"]["method"] == method
    if method in PEFT_FORMAT:  # the standard PEFT format, loadable by PEFT itself
        assert json.loads((run / "adapter_config.json").read_text())["peft_type"] == PEFT_FORMAT[method]

    # reload onto a fresh base: the adapter changes the output, disabled() gives back the plain base
    tok = load_tokenizer(model_dir)
    plain = _logits(load_model(model_dir, quantization_bit=record["quantization"]), tok)
    adapter = methods.load(load_model(model_dir, quantization_bit=record["quantization"]), run)
    assert adapter.method == method
    tuned = _logits(adapter.model, tok)
    with adapter.disabled() as base_model:
        base = _logits(base_model, tok)
    assert torch.allclose(base, plain, atol=1e-4), "disabled() is not the plain base model"
    assert not torch.allclose(tuned, plain, atol=1e-4), "the reloaded adapter changes nothing"
    assert torch.allclose(_logits(adapter.model, tok), tuned), "the adapter did not come back on after disabled()"
    if method in PEFT_FORMAT and method not in ("ptuning-v2", "prefix"):  # ours: tests/tuning/test_save.py
        from peft import PeftModel

        theirs = PeftModel.from_pretrained(load_model(model_dir, quantization_bit=record["quantization"]), str(run))
        assert torch.allclose(_logits(theirs, tok), tuned, atol=1e-5), "PEFT itself loads something else"

    out = evaluate(EvalConfig(run_dir=str(run), max_new_tokens=2, limit=1), log=lambda *_: None)
    assert out["info"]["method"] == method and out["tuned"]["overall"]["n"] == 1
    return adapter


@pytest.mark.parametrize("method", FAST)
def test_method_trains_saves_reloads_and_evaluates(method, tiny_model_dir, data, tmp_path):
    # qwen2 has q/k/v biases, so BitFit has something to train
    _check_method(method, tiny_model_dir("qwen2"), data, tmp_path / method)


@pytest.mark.slow
def test_qlora_on_the_4bit_base(tiny_model_dir, data, tmp_path):
    pytest.importorskip("bitsandbytes")
    adapter = _check_method("qlora", tiny_model_dir("qwen2"), data, tmp_path / "qlora")
    assert getattr(adapter.model.get_base_model(), "is_loaded_in_4bit", False)


def test_prompt_text_takes_its_length_from_the_init_text(tiny_model_dir, data, tmp_path):
    model_dir = tiny_model_dir("qwen2")
    model = load_model(model_dir)
    text = "步骤#问候"
    cfg = fast_config(model_dir, data, tmp_path / "r", method="prompt-text", prompt_init_text=text)
    adapter = methods.attach(model, cfg)
    n = len(load_tokenizer(model_dir)(text)["input_ids"])
    assert adapter.reserved_positions == n
    assert adapter.trainable_parameters() == n * model.config.hidden_size


def test_only_the_methods_parameters_train(tiny_model_dir, data, tmp_path):
    model_dir = tiny_model_dir("qwen2")
    bitfit = methods.attach(load_model(model_dir), fast_config(model_dir, data, tmp_path, method="bitfit"))
    names = {n for n, p in bitfit.model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(".bias") for n in names)
    full = methods.attach(load_model(model_dir), fast_config(model_dir, data, tmp_path, method="full"))
    assert full.trainable_parameters() == sum(p.numel() for p in full.model.parameters())


def test_bitfit_without_biases_is_a_clear_error(tiny_model_dir, data, tmp_path):
    with pytest.raises(ConfigError, match=r"no bias parameters \(attention_bias=False"):
        fit(fast_config(tiny_model_dir("llama"), data, tmp_path / "run", method="bitfit"), log=lambda *_: None)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_quantization_rules():
    assert methods.resolve_quantization("qlora", "causal-lm", None) == 4
    assert methods.resolve_quantization("full", "causal-lm", None, "auto") is None
    assert methods.resolve_quantization("lora", "causal-lm", 8) == 8
    with pytest.raises(ConfigError, match="cannot train a 4-bit base"):
        methods.resolve_quantization("full", "causal-lm", 4, "4")
    with pytest.raises(ConfigError, match="does not support --task classification"):
        methods.resolve_quantization("bitfit", "classification", None)


@pytest.mark.slow
def test_resume_continues_a_lora_run(tiny_model_dir, data, tmp_path):
    import shutil

    from safetensors.torch import load_file

    model_dir = tiny_model_dir("qwen2")
    kwargs = dict(method="lora", max_steps=4, save_steps=2, per_device_train_batch_size=2,
                  gradient_accumulation_steps=1, learning_rate=1e-1, lora_dropout=0.0)
    fit(fast_config(model_dir, data, tmp_path / "straight", **kwargs), log=lambda *_: None)
    resumed = tmp_path / "resumed"
    fit(fast_config(model_dir, data, resumed, **kwargs), log=lambda *_: None)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    (resumed / "adapter_model.safetensors").unlink()
    fit(fast_config(model_dir, data, resumed, **kwargs), log=lambda *_: None)
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_old_run_folders_read_as_ptuning_v2(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert methods.read_method_info(tmp_path)["method"] == "ptuning-v2"
    with pytest.raises(ConfigError, match="not a tasktune adapter folder"):
        methods.read_method_info(tmp_path / "missing")


def test_peft_prompt_learning_models_stay_on_the_dynamic_cache(tiny_model_dir):
    # on CUDA, "auto" picks the static cache except for PEFT prompt learning (its generation fails with it)
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    from tasktune.tuning.model.generate import choose_cache, peft_prompt_learning

    folder = tiny_model_dir("qwen2")
    prompt = get_peft_model(load_model(folder), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    lora = get_peft_model(load_model(folder), LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear"))
    plain = load_model(folder)
    assert [choose_cache(m, "auto", "cuda") for m in (prompt, lora, plain)] == [None, "static", "static"]
    assert [choose_cache(m, "auto") for m in (prompt, lora, plain)] == [None, None, None]  # this CPU
    assert choose_cache(prompt, "static", "cuda") == "static"  # asked for explicitly: passed through
    prompt.active_adapter = ["default"]  # a list of active adapters (peft tuners allow one)
    assert peft_prompt_learning(prompt)
    prompt.active_adapter = []
    assert not peft_prompt_learning(prompt)
