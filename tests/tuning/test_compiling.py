"""--compile (tuning/compiling.py): the compiled P-tuning v2 step computes what the eager one does.

Tracing runs with the "aot_eager" backend (dynamo + AOTAutograd, the same graphs inductor would get, no code
generation): fast on CPU and exact. `fullgraph=True` checks that the prefix path has no graph breaks.
The inductor tests (generated kernels) are marked slow. CUDA graphs: tests/gpu/test_gpu_compile.py.
"""

import pytest
import torch

from tasktune.errors import ConfigError
from tests.tuning.runs import fast_config, write_data
from tasktune.tuning import compiling
from tasktune.tuning.load import load_model, load_tokenizer
from tasktune.tuning.prefix import PrefixConfig, attach_prefix
from tasktune.tuning.train import fit


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _setup(model_dir, quantization_bit=None, checkpointing=False):
    model = load_model(model_dir, quantization_bit=quantization_bit)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=4))
    model.config.use_cache = False
    model.train()
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    batch = tokenizer(["步骤#问候*语音#你好", "因为出现地名为济南, 所以函数一参数为济南"], return_tensors="pt",
                      padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    device = model.get_input_embeddings().weight.device  # a 4-bit base sits on the GPU where there is one
    return model, tuner, {k: v.to(device) for k, v in batch.items()}


def _loss_and_grad(forward, tuner, batch):
    loss = forward(**batch).loss
    loss.backward()
    grad = tuner.encoder.embedding.weight.grad.clone()
    tuner.encoder.zero_grad(set_to_none=True)
    return loss.detach(), grad


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_prefix_step_equals_eager_in_one_graph(tiny_model_dir, checkpointing):
    model, tuner, batch = _setup(tiny_model_dir("glm"), checkpointing=checkpointing)
    eager = _loss_and_grad(model, tuner, batch)
    compiled = compiling.compile_model(model, "on", fullgraph=True, backend="aot_eager")
    first, second = _loss_and_grad(compiled, tuner, batch), _loss_and_grad(compiled, tuner, batch)
    assert eager[1].abs().sum() > 0
    for loss, grad in (first, second):
        torch.testing.assert_close(loss, eager[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, eager[1], rtol=1e-5, atol=1e-7)


def test_compiled_4bit_prefix_step_equals_eager(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    model, tuner, batch = _setup(tiny_model_dir("glm"), quantization_bit=4, checkpointing=True)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    eager = _loss_and_grad(model, tuner, batch)
    # what --compile cudagraphs adds (static quant states): 2 layers x 6 linears x 5 tensors (nested quant)
    assert compiling.mark_quant_state_static(model) == 2 * 6 * 5
    compiled = compiling.compile_model(model, "on", fullgraph=True, backend="aot_eager")
    loss, grad = _loss_and_grad(compiled, tuner, batch)
    torch.testing.assert_close(loss, eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager[1], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_inductor_prefix_step_is_close_to_eager(tiny_model_dir, checkpointing):
    model, tuner, batch = _setup(tiny_model_dir("glm"), checkpointing=checkpointing)
    eager = _loss_and_grad(model, tuner, batch)
    compiled = compiling.compile_model(model, "on", fullgraph=True)
    loss, grad = _loss_and_grad(compiled, tuner, batch)
    torch.testing.assert_close(loss, eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager[1], rtol=1e-4, atol=1e-6)


def test_fit_with_compile_on_gives_the_eager_losses(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    data = write_data(tmp_path / "data")
    runs = {}
    for mode in ("off", "on"):
        lines = []
        result = fit(fast_config(tiny_model_dir("glm"), data, tmp_path / mode, compile=mode, max_steps=2),
                     log=lines.append)
        runs[mode] = [h["loss"] for h in result.history]
        # 160 + 160 + eos, rounded up to 8
        assert any(line.startswith("compile: on; batches padded to 328 tokens") for line in lines) == (mode == "on")
    assert runs["on"] == pytest.approx(runs["off"], rel=1e-5)


def test_modes_and_auto():
    assert compiling.resolve_mode("off") == "off"
    assert compiling.resolve_mode("auto", cuda=False) == "off"
    assert compiling.resolve_mode("auto", cuda=True) == compiling.AUTO_CUDA_MODE == "cudagraphs"
    assert compiling.resolve_mode("auto", cuda=True, steps=compiling.AUTO_MIN_STEPS) == "cudagraphs"
    assert compiling.resolve_mode("auto", cuda=True, steps=compiling.AUTO_MIN_STEPS - 1) == "off"
    assert compiling.resolve_mode("auto", method="lora", cuda=True) == "off"
    assert compiling.resolve_mode("auto", cuda=True, processes=2) == "off"
    assert compiling.resolve_mode("auto", task="classification", cuda=True) == "off"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        compiling.resolve_mode("cudagraphs", cuda=False)
    with pytest.raises(ConfigError, match="unknown compile mode"):
        compiling.resolve_mode("fast")


def test_fixed_width_collate_pads_every_batch_to_one_shape():
    def collate(features):
        width = max(len(f) for f in features)
        return {"input_ids": torch.tensor([f + [0] * (width - len(f)) for f in features]),
                "attention_mask": torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in features]),
                "labels": torch.tensor([f + [-100] * (width - len(f)) for f in features])}

    fixed = compiling.fixed_width_collate(collate, 8, pad_id=5)
    batch = fixed([[1, 2, 3], [4]])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 5, 5, 5, 5, 5], [4, 0, 0, 5, 5, 5, 5, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3] + [-100] * 5, [4] + [-100] * 7]
    with pytest.raises(ValueError, match="compiled width"):
        fixed([list(range(9))])


def test_batch_width_covers_the_longest_row():
    cfg = fast_config("m", "d", "o", max_source_length=64, max_target_length=64)
    assert compiling.batch_width(cfg) == 136  # 64 + 64 + eos, rounded up to 8
    cfg.task = "classification"
    assert compiling.batch_width(cfg) == 64
