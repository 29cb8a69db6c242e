"""Build a tiny model: records -> corpus -> tokenizer -> random GLM -> copy warm-up -> LM pre-training on the
domain text -> the folder (weights, tokenizer, tiny_model.json), written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

from tasktune import files as atomic
from tasktune.errors import ConfigError, SpecError
from tasktune.flags import check_can_write
from tasktune.tuning.progress import transformers_bars_off
from tasktune.tuning.tiny.config import RECORD_FILE, TinyConfig
from tasktune.tuning.tiny.corpus import build_corpus, generate_records, read_spec_text
from tasktune.tuning.tiny.model import make_model, parameter_count
from tasktune.tuning.tiny.pretraining import pretrain
from tasktune.tuning.tiny.tokenizer import train_tokenizer


def _check_out(out: Path) -> None:
    """ConfigError when `out` holds something other than a tiny model (checked before the build, and again when the
    finished model replaces it)."""
    if out.is_dir() and not (out / RECORD_FILE).is_file() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not a tiny model folder; not overwriting it (choose another --out, "
                          "or empty it)")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished tmp folder to out; an existing out is replaced only if it is a tiny model."""
    if out.exists():
        try:
            _check_out(out)
        except ConfigError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    return True


def _clear_stale(out: Path) -> None:
    """Folders that a build killed mid-write (SIGKILL, a power cut) left next to `out`: its staging folder
    `.OUT.tmp-PID` is removed, and its `.OUT.old-PID` (the model it was replacing) goes back to `out` when `out` is
    missing, else is removed. Only those of processes that are no longer alive: a live build keeps its own."""
    try:
        names = os.listdir(out.parent)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(re.escape(f".{out.name}.") + r"(tmp|old)-(\d{1,10})", name)
        if not match or _pid_alive(int(match[2])):
            continue
        stale = out.parent / name
        if match[1] == "old" and not os.path.lexists(out):
            with contextlib.suppress(OSError):
                stale.rename(out)
                continue
        shutil.rmtree(stale, ignore_errors=True)


def _save_quietly(model, folder: Path) -> None:
    """save_pretrained without transformers' "Writing model shards" bar (one shard: a bar says nothing)."""
    with transformers_bars_off():
        model.save_pretrained(folder)


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"tiny model: --device {device}, but torch sees no CUDA device here; use --device cpu")


#: fp32 weights, their gradients and AdamW's two moments (training's memory.OPTIMIZER_BYTES: a later stage, not
#: imported here)
BYTES_A_PARAMETER = 16


def _sizes(cfg: TinyConfig) -> str:
    """The flags that set the model's size, as given (`--hidden 192 --layers 6 --ffn 512`)."""
    return f"--hidden {cfg.hidden_size} --layers {cfg.num_layers} --ffn {cfg.intermediate_size}"


def _check_memory(cfg: TinyConfig, device: str) -> None:
    """ConfigError naming the size flags when the model's weights, gradients and Adam states alone (a lower bound:
    activations come on top) need more memory than this machine (or, with --device cuda, the GPU) has."""
    from tasktune.datagen.budget import GIB, total_memory

    n = parameter_count(cfg, cfg.vocab_size)
    need, where = n * BYTES_A_PARAMETER, "this machine's"
    total = total_memory()
    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        where = f"the GPU's ({device})"
    if total and need > total:
        raise ConfigError(
            f"{_sizes(cfg)}: a model of this size has about {n / 1e9:,.1f}G parameters and training it needs at "
            f"least {need / GIB:,.1f} GiB of memory ({BYTES_A_PARAMETER} bytes a parameter: weights, gradients and "
            f"Adam's two states), more than {where} {total / GIB:.1f} GiB; choose a smaller --hidden or --layers")


@contextlib.contextmanager
def _out_of_memory_as_config_error(cfg: TinyConfig, device: str) -> Iterator[None]:
    """An allocation that fails during the build (what _check_memory's lower bound missed: activations, other
    processes) as one ConfigError naming the size flags, not a torch traceback."""
    import torch

    try:
        yield
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, (MemoryError, torch.OutOfMemoryError)) and "allocate" not in text:
            raise
        raise ConfigError(
            f"{_sizes(cfg)} --batch-size {cfg.batch_size} --block-size {cfg.block_size}: out of memory building the "
            f"model on {device} ({text[:160]}); choose a smaller --hidden, --layers, --batch-size or --block-size"
        ) from None


def build_tiny_model(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 42,
    pretrain_steps: int | None = None,
    config: TinyConfig | None = None,
    records: tuple[list[dict], list[dict]] | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Build tokenizer + tiny GLM for `spec_path`, pre-train it on unpaired text, save it to `out_dir`.

    `records` = (train, dev) record lists skips the data generator (tests). `device`: where to pre-train
    ("cpu" is bit-reproducible for a seed; "cuda" is faster but not bit-identical). Writes atomically:
    a failure leaves no half-built folder. Returns the output folder.
    """
    from tasktune.datagen.spec import resolve_spec

    spec_path, out = resolve_spec(spec_path), Path(out_dir)
    if not spec_path.is_file():
        raise SpecError(f"{spec_path}: no such spec file")
    _check_out(out)  # before the build (over an hour on a CPU), not only when its result would replace `out`
    check_can_write(out.parent, f"--out {out}")  # where the finished model is staged
    _check_device(device)
    cfg = config or TinyConfig()
    cfg.seed = seed
    if pretrain_steps is not None:
        cfg.pretrain_steps = pretrain_steps
    _check_memory(cfg, device)  # before the records and the tokenizer (minutes), not at the first allocation
    data_seed = seed if cfg.data_seed is None else cfg.data_seed
    train, dev = records if records is not None else generate_records(spec_path, data_seed, cfg.n_records)
    if not train:
        raise SpecError(f"{spec_path}: the data generator produced no training records")
    corpus = build_corpus(
        train, dev, read_spec_text(spec_path), cfg.copy_docs, cfg.skill_docs, random.Random(seed), cfg.para_docs,
        cfg.round_docs, cfg.answer_pairs, cfg.compare_docs, cfg.number_docs,
    )
    copy_steps = cfg.copy_warmup_steps if corpus.copies else 0
    print(f"tiny model: {copy_steps:,} copy warm-up steps (--copy-warmup-steps), then {cfg.pretrain_steps:,} LM "
          f"steps on the domain text (--steps), on {device}")
    started = time.perf_counter()
    tokenizer = train_tokenizer(corpus.tokenizer_text, cfg.vocab_size, cfg.max_token_chars, corpus.words,
                                cfg.number_chunks)
    with _out_of_memory_as_config_error(cfg, device):
        model = make_model(cfg, tokenizer).to(device)
        copy_loss = float("nan")
        if copy_steps:  # phase 1: learn to copy from the context
            warm = replace(cfg, pretrain_steps=copy_steps, batch_size=cfg.copy_batch_size,
                           warmup_steps=min(cfg.warmup_steps, max(1, copy_steps // 10)))
            copy_loss = pretrain(model, tokenizer, corpus.copies, warm, progress, desc="copy warm-up")
        loss = pretrain(model, tokenizer, corpus.documents, cfg, progress)  # phase 2: the domain text
    seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
          f"{copy_steps} copy + {cfg.pretrain_steps} LM steps in "
          f"{seconds:.0f}s, final LM loss {loss:.3f}")

    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with atomic.library_writes(tmp):  # safetensors' error for a full disk: an OSError naming the folder
            _save_quietly(model.to("cpu"), tmp)
            tokenizer.save_pretrained(tmp)
        record = {
            "spec": str(spec_path),
            "spec_sha256": hashlib.sha256(spec_path.read_bytes()).hexdigest(),
            "seed": seed,
            "data_seed": None if records is not None else data_seed,  # None: records were passed in
            "pretrain_steps": cfg.pretrain_steps,
            "final_loss": None if math.isnan(loss) else round(loss, 4),
            "copy_warmup_loss": None if math.isnan(copy_loss) else round(copy_loss, 4),
            "parameters": n_params,
            "vocab_size": len(tokenizer),
            "documents": len(corpus.documents),
            "seconds": round(seconds, 1),
            "device": device,
            "config": asdict(cfg),
        }
        atomic.write_json(tmp / RECORD_FILE, record, atomic=False)  # the staging folder moves in as a unit
        atomic.settle(tmp)  # fsync'ed, and the umask's modes (safetensors writes the weights 0600)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
