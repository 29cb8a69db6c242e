"""The tiny model itself: a randomly initialised GlmForCausalLM of a TinyConfig's size."""

from __future__ import annotations

from tasktune.tuning.tiny.config import TinyConfig


def parameter_count(cfg: TinyConfig, vocab: int) -> int:
    """The parameters of make_model(cfg) with a `vocab`-token tokenizer, from the sizes alone (no allocation)."""
    head = cfg.hidden_size // cfg.num_heads
    q, kv = cfg.num_heads * head, cfg.num_kv_heads * head
    attention = cfg.hidden_size * (q + 2 * kv) + (q + 2 * kv) + q * cfg.hidden_size  # q/k/v with bias, o without
    mlp = 3 * cfg.hidden_size * cfg.intermediate_size  # gate_up (2 x ffn) and down
    layer = attention + mlp + 2 * cfg.hidden_size  # + two RMS norms
    embeddings = vocab * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
    return cfg.num_layers * layer + embeddings + cfg.hidden_size


def make_model(cfg: TinyConfig, tokenizer):
    """A randomly initialised GlmForCausalLM of `cfg`'s size (seeded by cfg.seed)."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(cfg.seed)
    config = GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
        **cfg.extra,
    )
    model = GlmForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
