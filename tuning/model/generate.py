"""Batched greedy generation: prompts sorted by length, left-padded, KV cache on.

Sorting by length keeps padding (wasted compute) small; the results come back in the caller's
order. Greedy decoding makes eval deterministic. On a GPU the KV cache is transformers' static
(pre-allocated) cache: decoding is bound by per-step host work there, and the growing dynamic cache
re-concatenates every layer's keys/values at every step (benchmarks/NOTES.md: 1.8x faster decoding
of a 4-bit 6B GLM at batch 32 on an H100); on the CPU it brings nothing, so the dynamic cache stays.
"""

from __future__ import annotations

from typing import Sequence

import torch


def context_limit(model) -> int | None:
    """The longest sequence the model accepts (positions), if its config says; `model` may be the config itself
    (what `tasktune serve` reads before the weights load)."""
    config = getattr(model, "config", model)
    for name in ("max_position_embeddings", "seq_length", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_room(model, max_new_tokens: int, reserved_positions: int = 0) -> int | None:
    """Positions a prompt may take after the answer's and a prefix's (None: the config names no window); a
    ConfigError when none are left (`chat --max-new-tokens 100000` was a traceback)."""
    limit = context_limit(model)
    keep = None if limit is None else limit - max_new_tokens - reserved_positions
    if keep is not None and keep <= 0:
        from tasktune.errors import ConfigError

        raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's "
                          f"{limit}-position context (at most {limit - reserved_positions - 1})")
    return keep


def peft_prompt_learning(model) -> bool:
    """Whether `model` is a peft.PeftModel with a prompt-learning adapter active (prompt, p-tuning, prefix)."""
    configs = getattr(model, "peft_config", None)
    active = getattr(model, "active_adapter", None)
    names = [active] if isinstance(active, str) else list(active) if isinstance(active, (list, tuple)) else []
    return isinstance(configs, dict) and any(
        getattr(configs.get(name), "is_prompt_learning", False) for name in names if isinstance(name, str))


def choose_cache(model, cache_implementation: str | None, device_type: str | None = None) -> str | None:
    """"auto" -> "static" on CUDA, None (dynamic cache) elsewhere; any other value is passed through.
    `device_type`: where the model runs (default: its first parameter's device).

    PEFT's prompt-learning models stay on the dynamic cache: their `prepare_inputs_for_generation` fails with the
    static one (peft 0.21.0 + transformers 5.17 on the GPU image: AttributeError on a None mask; peft 0.21.2 +
    transformers 5.23 on the CPU: KeyError 'cache_position')."""
    if cache_implementation != "auto":
        return cache_implementation
    device_type = device_type or next(model.parameters()).device.type
    return "static" if device_type == "cuda" and not peft_prompt_learning(model) else None


@torch.inference_mode()
def generate_batched(model, tokenizer, prompts: Sequence[str | Sequence[int]], *, batch_size: int = 16,
                     max_new_tokens: int = 64, reserved_positions: int = 0, desc: str = "generate",
                     progress: bool = True, cache_implementation: str | None = "auto",
                     max_prompt_tokens: int | None = None) -> tuple[list[str], int]:
    """Answer every prompt greedily. Returns (answers in input order, number of prompts cut to fit).

    A prompt is text (encoded with the tokenizer's special tokens) or token ids: pass
    `tuning.data.encode_prompts(...)` for prompts formatted as training formatted them, so a chat template's own
    bos is not doubled.
    A prompt longer than the context (minus `max_new_tokens` and `reserved_positions`, e.g. the
    prefix length, which takes positions) keeps its last tokens: the question sits at the end.
    `cache_implementation`: "auto" (static on CUDA, dynamic elsewhere), "static", or None (dynamic).
    `max_prompt_tokens`: keep at most the last N prompt tokens, as training's max_source_length did (a tuned
    model has never seen more); these cuts are not counted in the returned number.
    """
    from tasktune.tuning.progress import progress_bar

    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; load it with tuning.model.load.load_tokenizer")
    tokenizer.padding_side = "left"
    keep = prompt_room(model, max_new_tokens, reserved_positions)
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]
    if max_prompt_tokens:
        encoded = [ids[-max_prompt_tokens:] for ids in encoded]
    cut = 0
    if keep is not None:
        for i, ids in enumerate(encoded):
            if len(ids) > keep:
                encoded[i], cut = ids[-keep:], cut + 1
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    answers: list[str] = [""] * len(encoded)
    device = next(p for p in model.parameters()).device
    eos = tokenizer.eos_token_id
    cache = choose_cache(model, cache_implementation)
    cache_kwargs = {"cache_implementation": cache} if cache else {}
    bar = progress_bar(len(order), desc, unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True,
                             **cache_kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        for i, row in zip(chunk, new):
            answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        bar.update(len(chunk))
    bar.close()
    return answers, cut
