"""The prefix on a CUDA GPU: 4-bit training, gradient checkpointing, batched generation (marked gpu)."""

from __future__ import annotations

import pytest
import torch

from tasktune.tuning.model.generate import generate_batched
from tasktune.tuning.model.load import load_model, load_tokenizer
from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix

PROMPTS = ["步骤#问候*语音#你好", "因为出现地名为济南", "hello world, the quick brown fox",
           "[人数检测] 应到47人, 实到34人, 有人缺勤", "步骤#理解并基于输入拆分函数参数*语音#请尝试查看济南的工地的人数情况"]


def _batch(tokenizer, device):
    tokenizer.padding_side = "right"
    batch = tokenizer(PROMPTS[:4], return_tensors="pt", padding=True).to(device)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}


def test_4bit_prefix_trains_on_cuda_and_only_the_prefix_learns(gpu_tiny_dir):
    model = load_model(gpu_tiny_dir, quantization_bit=4)
    assert next(model.parameters()).device.type == "cuda"
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=4))
    model.train()
    batch = _batch(load_tokenizer(gpu_tiny_dir), "cuda")
    params = list(tuner.encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=5e-2)
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        assert all(p.grad is None for n, p in model.named_parameters() if "prefix_encoder" not in n)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses


def test_gradient_checkpointing_gives_the_same_prefix_gradient_on_cuda(gpu_tiny_dir):
    model = load_model(gpu_tiny_dir).to("cuda")
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=4))
    model.train()
    batch = _batch(load_tokenizer(gpu_tiny_dir), "cuda")
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**batch).loss.backward()
        grads.append(tuner.encoder.embedding.weight.grad.clone())
        tuner.encoder.zero_grad(set_to_none=True)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("quantization_bit", [None, 4])
def test_batched_generation_matches_one_by_one_on_cuda(gpu_tiny_dir, quantization_bit):
    model = load_model(gpu_tiny_dir, quantization_bit=quantization_bit)
    if quantization_bit is None:
        model.to("cuda")
    tokenizer = load_tokenizer(gpu_tiny_dir)
    attach_prefix(model, PrefixConfig(pre_seq_len=4))
    torch.nn.init.normal_(model.tasktune_prefix_encoder.embedding.weight, std=0.5)
    model.eval()
    single = [generate_batched(model, tokenizer, [p], batch_size=1, max_new_tokens=6, progress=False,
                               cache_implementation=None)[0][0] for p in PROMPTS]
    for cache in ("auto", "static", None):  # auto = static on CUDA
        batched, _ = generate_batched(model, tokenizer, PROMPTS, batch_size=5, max_new_tokens=6, progress=False,
                                      cache_implementation=cache)
        same = sum(a == b for a, b in zip(batched, single))
        # fp32: identical; 4-bit: batch-1 decoding takes bitsandbytes' gemv kernel, batches another 4-bit
        # kernel, so an occasional near-tie may flip
        wanted = len(PROMPTS) if quantization_bit is None else len(PROMPTS) - 1
        assert same >= wanted, (cache, batched, single)
        # a batch of one has no padding: transformers then hands the attention no mask, and a static cache's
        # prefill must still see only earlier tokens (tuning/model/prefix.py `_causal_mask`)
        alone = [generate_batched(model, tokenizer, [p], batch_size=1, max_new_tokens=6, progress=False,
                                  cache_implementation=cache)[0][0] for p in PROMPTS]
        assert alone == single, (cache, alone, single)
