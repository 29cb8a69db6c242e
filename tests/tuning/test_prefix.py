"""Tests for tuning/model/prefix.py: the prefix reaches every layer, trains alone, and survives checkpointing,
4-bit bases, padding, caching and generate()."""

from __future__ import annotations

import pytest
import torch

from tasktune.errors import ConfigError
from tasktune.tuning.model.prefix import PrefixConfig, PrefixEncoder, PrefixShape, attach_prefix, read_prefix_shape

P = 4


def _load(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def _ids(seed=0, batch=2, length=6):
    return torch.randint(3, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


def _peft_model(path, projection):
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=projection, encoder_hidden_size=24
    )
    return get_peft_model(_load(path), config).eval()


def test_encoder_layout_matches_flat_vector():
    shape = PrefixShape(num_layers=2, num_kv_heads=2, head_dim=3)
    encoder = PrefixEncoder(PrefixConfig(pre_seq_len=P), shape)
    flat, kv = encoder.flat(), encoder()
    assert kv.shape == (2, 2, 2, P, 3) and flat.shape == (P, shape.width)
    # flat index ((layer * 2 + kv) * heads + head) * head_dim + d, per token
    layer, which, head, token, d = 1, 1, 0, 2, 1
    assert kv[layer, which, head, token, d] == flat[token, ((layer * 2 + which) * 2 + head) * 3 + d]


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="pre_seq_len"):
        PrefixConfig(pre_seq_len=0)
    with pytest.raises(ConfigError, match="dropout"):
        PrefixConfig(prefix_dropout=1.5)


@pytest.mark.parametrize("arch", ["glm", "glm4", "llama", "qwen2"])
@pytest.mark.parametrize("projection", [False, True])
def test_logits_match_peft_prefix_tuning(tiny_model_dir, arch, projection):
    """Same prefix weights in peft and in ours -> same logits (GQA, positions from P, no rotary on prefix)."""
    path = tiny_model_dir(arch)
    reference = _peft_model(path, projection)
    model = _load(path)
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P, prefix_projection=projection, prefix_hidden_size=24))
    tuner.encoder.load_state_dict(reference.prompt_encoder["default"].state_dict())
    ids = _ids()
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        theirs = reference(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        base = _load(path)(input_ids=ids).logits
    assert read_prefix_shape(model.config).num_kv_heads < model.config.num_attention_heads  # GQA in play
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, base, atol=1e-3)  # the prefix changes the output


def test_disabled_gives_exact_base_logits_and_detach_restores(tiny_model_dir):
    path = tiny_model_dir("glm")
    ids = _ids()
    with torch.no_grad():
        base = _load(path)(ids).logits
        model = _load(path)
        tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P))
        with tuner.disabled():
            assert torch.equal(model(ids).logits, base)
        assert not torch.allclose(model(ids).logits, base, atol=1e-3)
        tuner.detach()
        assert torch.equal(model(ids).logits, base)
        assert model.config._attn_implementation == "sdpa"
        assert not any(p.requires_grad for p in model.parameters())


def test_only_prefix_trains(tiny_model_dir):
    model = _load(tiny_model_dir("llama"))
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P, prefix_projection=True, prefix_hidden_size=16))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("tasktune_prefix_encoder.") for name in trainable)
    assert tuner.trainable_parameters() == sum(p.numel() for p in tuner.encoder.parameters())
    assert all(p.dtype == torch.float32 for p in tuner.encoder.parameters())
    with pytest.raises(ConfigError, match="already has a prefix"):
        attach_prefix(model, PrefixConfig(pre_seq_len=P))


def _prefix_grad(path, checkpointing):
    torch.manual_seed(0)
    model = _load(path)
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = _ids()
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    return tuner.encoder.embedding.weight.grad


@pytest.mark.parametrize("arch", ["glm", "qwen2"])
def test_gradients_reach_prefix_with_and_without_checkpointing(tiny_model_dir, arch):
    plain = _prefix_grad(tiny_model_dir(arch), checkpointing=False)
    checkpointed = _prefix_grad(tiny_model_dir(arch), checkpointing=True)
    assert plain is not None and plain.abs().sum() > 0
    torch.testing.assert_close(plain, checkpointed)


def test_loss_falls_with_only_the_prefix_training(tiny_model_dir):
    torch.manual_seed(0)
    model = _load(tiny_model_dir("glm"))
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P))
    before = {k: v.clone() for k, v in model.state_dict().items() if "prefix" not in k}
    optimizer = torch.optim.AdamW(tuner.encoder.parameters(), lr=5e-2)
    ids = _ids(batch=4, length=8)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def _left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_forward_matches_unpadded(tiny_model_dir, attn):
    model = _load(tiny_model_dir("llama"), attn_implementation=attn)
    attach_prefix(model, PrefixConfig(pre_seq_len=P))
    rows = [[5, 9, 17, 33, 2, 8], [40, 41, 42]]
    ids, mask = _left_pad(rows, model.config.pad_token_id)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            single = model(input_ids=torch.tensor([row])).logits[0]
            torch.testing.assert_close(batched[i, -len(row):], single, rtol=1e-4, atol=1e-4)


def test_eager_and_sdpa_agree(tiny_model_dir):
    ids = _ids()
    outputs = []
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = _load(tiny_model_dir("glm4"), attn_implementation=attn)
        attach_prefix(model, PrefixConfig(pre_seq_len=P))
        with torch.no_grad():
            outputs.append(model(ids).logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


def test_cached_decoding_matches_full_forward(tiny_model_dir):
    model = _load(tiny_model_dir("glm"))
    attach_prefix(model, PrefixConfig(pre_seq_len=P))
    ids = _ids(batch=1, length=8)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], use_cache=True)
        cache = out.past_key_values
        assert cache.get_seq_length() == 5  # the cache holds text tokens only
        step = model(ids[:, 5:], past_key_values=cache, use_cache=True).logits  # 3-token chunk (q > 1, kv > q)
    torch.testing.assert_close(torch.cat([out.logits, step], 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["glm", "llama"])
def test_static_cache_gives_the_dynamic_caches_logits_without_padding(tiny_model_dir, arch):
    """A batch without padding (or of one prompt) prefilled into a static cache: transformers hands the attention
    no mask there (sdpa's top-left `is_causal`), which the prefix's mask must read the same way; read bottom-right,
    the prompt saw its own later tokens and the cache's empty slots (`tasktune eval` on CUDA, where the static
    cache is the default)."""
    model = _load(tiny_model_dir(arch))
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P))
    with torch.no_grad():
        tuner.encoder.embedding.weight.mul_(20)  # a prefix that moves the answer, as a trained one does
    pad = model.config.pad_token_id
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=pad, eos_token_id=None, output_logits=True,
                    return_dict_in_generate=True)
    for ids in (_ids(batch=3, length=7), _ids(seed=1, batch=1, length=9)):
        mask = torch.ones_like(ids)
        got = {cache: model.generate(input_ids=ids, attention_mask=mask, cache_implementation=cache, **settings)
               for cache in ("static", "dynamic")}
        torch.testing.assert_close(torch.stack(got["static"].logits), torch.stack(got["dynamic"].logits),
                                   rtol=1e-4, atol=1e-4)
        assert torch.equal(got["static"].sequences, got["dynamic"].sequences)


@pytest.mark.parametrize("arch", ["glm", "llama"])
def test_generate_batched_left_padded_equals_one_by_one_and_cache_agrees(tiny_model_dir, arch):
    model = _load(tiny_model_dir(arch))
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P))
    pad = model.config.pad_token_id
    rows = [[5, 9, 17, 33, 2, 8], [40, 41, 42], [7, 7, 100, 101]]
    ids, mask = _left_pad(rows, pad)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=pad, eos_token_id=None)
    batched = model.generate(input_ids=ids, attention_mask=mask, **settings)[:, ids.shape[1]:]
    uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **settings)[:, ids.shape[1]:]
    assert torch.equal(batched, uncached)
    for i, row in enumerate(rows):
        single = model.generate(input_ids=torch.tensor([row]), **settings)[0, len(row):]
        assert torch.equal(batched[i], single)
    with tuner.disabled():
        base = model.generate(input_ids=ids, attention_mask=mask, **settings)[:, ids.shape[1]:]
    assert not torch.equal(base, batched)


def test_dropout_only_while_training(tiny_model_dir):
    model = _load(tiny_model_dir("glm"))
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P, prefix_dropout=0.5))
    assert torch.equal(tuner.prefix(), tuner.prefix())
    model.train()
    assert not torch.equal(tuner.prefix(), tuner.prefix())


def test_rejects_attention_it_cannot_wrap(tiny_model_dir):
    model = _load(tiny_model_dir("glm"))
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ConfigError, match="sdpa"):
        attach_prefix(model, PrefixConfig(pre_seq_len=P))


def test_four_bit_base_forward_backward_generate(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    from tasktune.tuning.model.load import load_model

    model = load_model(tiny_model_dir("qwen2"), quantization_bit=4)
    assert type(model.model.layers[0].self_attn.k_proj).__name__ == "Linear4bit"
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = _ids().to(model.device)  # a 4-bit base sits on the GPU where there is one
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grad = tuner.encoder.embedding.weight.grad
    assert torch.isfinite(loss) and grad is not None and grad.abs().sum() > 0
    assert tuner.encoder.embedding.weight.dtype == torch.float32
    model.eval()
    out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape == (2, ids.shape[1] + 3)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [None, 4])
def test_on_gpu_bf16_and_4bit(tiny_model_dir, bits):
    """CUDA: bf16 / NF4 base, fp32 prefix; checkpointed backward, batched left-padded generate == one by one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if bits:
        pytest.importorskip("bitsandbytes")
    from tasktune.tuning.model.load import load_model

    model = load_model(tiny_model_dir("glm"), quantization_bit=bits, dtype="bfloat16", device_map={"": 0})
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=P))
    assert tuner.encoder.embedding.weight.is_cuda and tuner.encoder.embedding.weight.dtype == torch.float32
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = _ids().cuda()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and tuner.encoder.embedding.weight.grad.abs().sum() > 0
    model.eval()
    pad = model.config.pad_token_id
    rows = [[5, 9, 17, 33, 2, 8], [40, 41, 42]]
    batch, mask = _left_pad(rows, pad)
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=pad, eos_token_id=None)
    out = model.generate(input_ids=batch.cuda(), attention_mask=mask.cuda(), **settings)[:, batch.shape[1]:]
    for i, row in enumerate(rows):
        single = model.generate(input_ids=torch.tensor([row]).cuda(), **settings)[0, len(row):]
        assert torch.equal(out[i], single)
