"""Plain next-token LM training of the tiny model on a list of documents (both phases of the build: the copy
warm-up and the domain text): token rows, length-grouped batches, AdamW with warm-up and cosine decay."""

from __future__ import annotations

import math
import random

from tasktune.errors import ConfigError
from tasktune.runlock import raise_if_terminated
from tasktune.tuning.tiny.config import TinyConfig


def make_rows(docs: list[tuple[str, bool]], tokenizer, cfg: TinyConfig, rng: random.Random) -> list[list[int]]:
    """One shuffled pass over the documents as token rows: one document per row (cut at block_size),
    or with cfg.pack, all joined by eos and cut into rows of block_size."""
    order = list(docs)
    rng.shuffle(order)
    ids = tokenizer([text for text, _ in order], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    rows = [doc + [eos] if closed else doc for doc, (_, closed) in zip(ids, order)]
    if not cfg.pack:
        rows = [row[: cfg.block_size] for row in rows if len(row) > 1]
        return length_batches(rows, cfg.batch_size, rng)
    stream = [t for row in rows for t in row]
    stream = stream * math.ceil(cfg.block_size / max(len(stream), 1)) if len(stream) < cfg.block_size else stream
    return [stream[i : i + cfg.block_size] for i in range(0, len(stream) - cfg.block_size + 1, cfg.block_size)]


def length_batches(rows: list[list[int]], batch_size: int, rng: random.Random, window: int = 16) -> list[list[int]]:
    """The rows reordered so that each run of batch_size rows (counted from the end: `pretrain` pops rows off
    the end) holds rows of similar length, the batches shuffled: this saves most of the padding (multi-round
    documents are long)."""
    from tasktune.tuning.data import group_by_length

    batches = group_by_length(rows, len, batch_size, window)
    rng.shuffle(batches)
    batches.sort(key=lambda b: len(b) == batch_size)  # a short batch goes first, so the end stays aligned
    return [row for batch in batches for row in batch]


def pretrain(model, tokenizer, docs: list[tuple[str, bool]], cfg: TinyConfig, progress: bool = True,
             desc: str = "pre-training tiny LM") -> float:
    """Plain next-token LM training on the documents; returns the mean loss of the last 20 steps."""
    import torch

    from tasktune.tuning.progress import progress_bar

    if cfg.pretrain_steps == 0 or not docs:
        return float("nan")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warmup, then cosine down to 10%
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.pretrain_steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    model.train()
    rows: list[list[int]] = []
    recent: list[float] = []
    bar = progress_bar(cfg.pretrain_steps, desc, unit="step", disable=not progress)
    for step in range(cfg.pretrain_steps):
        raise_if_terminated()  # a SIGTERM whose raise a library swallowed (tasktune/runlock.py)
        while len(rows) < cfg.batch_size:  # a fresh shuffle of the documents each pass
            fresh = make_rows(docs, tokenizer, cfg, rng)
            if not fresh:
                raise ConfigError("tiny model: no pre-training document is longer than one token")
            rows += fresh
        picked = [rows.pop() for _ in range(cfg.batch_size)]
        width = max(map(len, picked))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in picked], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in picked], device=device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-20:]
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.update(1)
    bar.close()
    model.eval()
    return sum(recent) / len(recent)
