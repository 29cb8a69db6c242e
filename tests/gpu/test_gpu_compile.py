"""--compile on CUDA (tuning/training/compiling.py): inductor and CUDA graphs give the eager loss and prefix gradient,
also when gradients of several micro-batches accumulate (the CUDA-graph pool would overwrite an adopted grad)."""

from __future__ import annotations

import pytest
import torch

from tests.tuning.runs import fast_config, write_data
from tasktune.tuning.training import compiling
from tasktune.tuning.model.load import load_model, load_tokenizer
from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix
from tasktune.tuning.training.train import fit

TEXTS = ["步骤#问候*语音#你好", "因为出现地名为济南", "hello world, the quick brown fox",
         "[人数检测] 应到47人, 实到34人, 有人缺勤"]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("mode", ["on", "cudagraphs", "eager-graphs"])
def test_compiled_4bit_step_matches_eager_with_accumulation(gpu_tiny_dir, mode):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = load_model(gpu_tiny_dir, quantization_bit=4)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=4))
    torch.nn.init.normal_(tuner.encoder.embedding.weight, std=0.5)
    model.config.use_cache = False
    model.train()
    tokenizer = load_tokenizer(gpu_tiny_dir, padding_side="right")
    batches = []
    for texts in (TEXTS[:2], TEXTS[2:]):  # two micro-batches of one fixed width
        batch = tokenizer(texts, return_tensors="pt", padding="max_length", max_length=40).to("cuda")
        batches.append({**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)})
    weight = tuner.encoder.embedding.weight

    def accumulate(forward, how):
        if how in compiling.GRAPH_MODES:
            compiling.materialize_grads([weight])
        losses = []
        for batch in batches:
            compiling.step_begin(how)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = forward(**batch).loss / len(batches)
            losses.append(loss.detach().clone())
            loss.backward()
        grad = weight.grad.clone()
        weight.grad = None
        return torch.stack(losses), grad

    eager_losses, eager_grad = accumulate(model, "off")
    compiled = compiling.compile_model(model, mode)
    runs = [accumulate(compiled, mode) for _ in range(3)]  # compile (and record), then replays
    for losses, grad in runs:
        assert _rel(losses, eager_losses) < 2e-2, (losses, eager_losses)
        assert _rel(grad, eager_grad) < 5e-2, _rel(grad, eager_grad)  # one micro-batch alone: ~100 % off
    torch.testing.assert_close(runs[2][1], runs[1][1])  # replays are deterministic
    if mode in compiling.GRAPH_MODES:
        assert not torch._dynamo.utils.counters["inductor"].get("cudagraph_skips"), \
            dict(torch._dynamo.utils.counters["inductor"])


def test_fit_with_cudagraphs_gives_the_eager_losses(gpu_tiny_dir, tmp_path):
    torch._dynamo.reset()
    data = write_data(tmp_path / "data")
    losses = {}
    for mode in ("off", "cudagraphs", "eager-graphs"):
        result = fit(fast_config(gpu_tiny_dir, data, tmp_path / mode, compile=mode, max_steps=3,
                                 quantization_bit="4"), log=lambda *_: None)
        losses[mode] = [h["loss"] for h in result.history]
    assert losses["cudagraphs"] == pytest.approx(losses["off"], rel=3e-2)
    assert losses["eager-graphs"] == pytest.approx(losses["off"], rel=3e-2)


def test_auto_dequantises_a_4bit_base_and_graphs_a_short_run(gpu_tiny_dir, tmp_path, monkeypatch):
    """--train-weights auto on a GPU: the tiny 4-bit base's copies fit, so it trains over bf16 linears, and a
    run of AUTO_MIN_STEPS["layers-bf16"] steps is long enough for inductor's graphs; the same run kept 4-bit is not,
    and takes graphs of the eager kernels (cold cache, their copies fit); a 5-step run too, over bf16. All
    start from the same prefix and follow the same losses (the same weight values)."""
    import json

    monkeypatch.setenv("TASKTUNE_CACHE", str(tmp_path / "cache"))
    torch._dynamo.reset()
    data = write_data(tmp_path / "data")
    steps = compiling.AUTO_MIN_STEPS["layers-bf16"]
    records, losses = {}, {}
    for weights, n in (("auto", steps), ("4bit", steps), ("short", 5)):
        result = fit(fast_config(gpu_tiny_dir, data, tmp_path / weights, max_steps=n, quantization_bit="4",
                                 train_weights="auto" if weights == "short" else weights, save_steps=1000),
                     log=lambda *_: None)
        records[weights] = json.loads((result.run_dir / "tasktune_run.json").read_text())
        losses[weights] = [h["loss"] for h in result.history][:3]
    assert records["auto"]["base_weights"]["mode"] == "bf16" and records["auto"]["compile"] == "cudagraphs"
    assert records["4bit"]["base_weights"]["mode"] == "4bit" and records["4bit"]["compile"] == "eager-graphs"
    assert records["short"]["base_weights"]["mode"] == "bf16" and records["short"]["compile"] == "eager-graphs"
    assert losses["auto"] == pytest.approx(losses["4bit"], rel=3e-2)
    assert losses["short"] == pytest.approx(losses["4bit"], rel=3e-2)
