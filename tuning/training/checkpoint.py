"""Training checkpoints: adapter + optimizer/scheduler/RNG state, written atomically, resumed exactly.

A checkpoint is a folder `RUN/checkpoints/step-000500/` holding the adapter in PEFT's format
(via tuning.model.save) and `training_state.pt` (tensors and plain values only; loaded with
`weights_only=True`). It is written into a temporary sibling and renamed into place, so a crash
mid-write leaves the previous checkpoint as the newest complete one; a full disk (ENOSPC) while writing is a
`DiskFull` error naming the last good checkpoint, which is left as it was.

A run folder is not trusted (issue 21): `check_run_folder` refuses one whose entries (or checkpoints/) are
symbolic links, since training writes and deletes there; checkpoints are removed without following links.

Resuming checks the run's fingerprint (`FINGERPRINT_FILE`): the base model's path *and content*
(`model_content`: a hash of config.json and of each weight file's safetensors header and size, no full
read), data, method and shape; and its hyperparameters (`hyperparameters`), which may change only with
`--allow-config-change` (the change is then kept in the run record).

Longer than 300 lines because a checkpoint's write, its exact resume (RNG streams per rank) and the resume checks
(fingerprint, base content, changed settings) read and write the same files and must change together.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasktune import files as atomic
from tasktune.errors import ConfigError
from tasktune.files import read_text_file


class DiskFull(ConfigError):
    """The disk filled up while a checkpoint was written; the last good one is left as it was."""

STATE_FILE = "training_state.pt"
FINGERPRINT_FILE = "fingerprint.json"
CHECKPOINT_DIR = "checkpoints"
PREFIX = "step-"


@dataclass
class ResumePoint:
    path: Path
    step: int
    state: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from (dropout, sampling), so a resume continues the same streams."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_tuple(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_for_rank(state: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """The RNG state rank `rank` of `world` resumes with.

    A data-parallel checkpoint holds every rank's state under "rng_ranks" (ranks draw dropout masks
    of their own shapes, e.g. LoRA's over padded sequence lengths, so their streams drift apart).
    On the same number of processes each rank gets its own; otherwise (or from a checkpoint
    without them: single-process, Ctrl-C) every rank gets rank 0's "rng".
    """
    ranks = state.get("rng_ranks")
    return ranks[rank] if isinstance(ranks, list) and len(ranks) == world else state["rng"]


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    # plain values + a tensor so the state file loads with weights_only=True
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _as_python_tuple(value: Any) -> Any:
    # torch.save/load turns the tuple-of-tuples from random.getstate() into lists
    return tuple(_as_python_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are ignored)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if atomic.real_dir(p) and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def set_aside_checkpoints(run_dir: Path) -> Path | None:
    """A fresh start (`--resume never`) in a folder holding checkpoints: rename RUN/checkpoints aside.

    Left in place, the old run's later checkpoints would sit beside the new run's and the next plain
    re-run would resume the *old* run. One atomic rename to `checkpoints.replaced-<UTC time>` keeps them
    for the user to inspect or delete. Returns the new path, or None when there was nothing to move.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    if not checkpoint_dirs(run_dir):
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target, n = root.with_name(f"{CHECKPOINT_DIR}.replaced-{stamp}"), 1
    while target.exists():  # two fresh starts within one second
        n += 1
        target = root.with_name(f"{CHECKPOINT_DIR}.replaced-{stamp}-{n}")
    os.rename(root, target)
    return target


def write_checkpoint(run_dir: Path, step: int, *, save_adapter_fn, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` atomically; `save_adapter_fn(folder)` writes the adapter files into it."""
    root = atomic.own_subdir(run_dir, CHECKPOINT_DIR)  # a link to elsewhere: ConfigError, never written through
    final = root / f"{PREFIX}{step:06d}"
    for stale in root.glob(f".tmp-{PREFIX}*"):  # a write killed before its rename (one writer per run folder)
        atomic.remove_tree(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{PREFIX}{step:06d}-", dir=root))
    try:
        with atomic.library_writes(tmp):  # torch.save's and safetensors' errors for a full disk: OSErrors
            save_adapter_fn(tmp)
            torch.save(state, tmp / STATE_FILE)
        atomic.settle(tmp)  # fsync'ed, and the umask's modes (mkdtemp made the folder 0700)
        if os.path.lexists(final):
            atomic.remove_tree(final)
        os.replace(tmp, final)
    except OSError as exc:
        atomic.remove_tree(tmp)
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            good = checkpoint_dirs(run_dir)
            raise DiskFull(
                f"{root}: the disk is full ({exc.strerror or exc}) while writing the checkpoint of step {step}; "
                f"nothing of it was kept. The last good checkpoint is {good[-1] if good else 'none yet'}: free "
                "some space and run the same command again to resume from it") from None
        raise
    except BaseException:
        atomic.remove_tree(tmp)
        raise
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        atomic.remove_tree(old)
    return final


def check_run_folder(run_dir: Path) -> None:
    """ConfigError when the run folder holds a symbolic link at its top level or in checkpoints/: training writes,
    replaces and deletes files there and never does so through a link out of the folder (issue 21)."""
    run_dir = Path(run_dir)
    if not atomic.real_dir(run_dir):
        return  # new (or the user's own link to a folder, which is theirs to choose)
    entries = list(run_dir.iterdir())
    if atomic.real_dir(run_dir / CHECKPOINT_DIR):
        entries += list((run_dir / CHECKPOINT_DIR).iterdir())
    for path in entries:
        if path.is_symlink():
            raise ConfigError(
                f"{path}: is a symbolic link (to {os.readlink(path)}); tasktune writes, replaces and deletes files "
                f"in its run folder and does not follow links out of it. Remove the link (or use a new --out "
                "folder) and run again")


def read_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; {folder} is not a complete tasktune checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / corrupted file
        # torch's own text for a file that is not a checkpoint runs to paragraphs advising weights_only=False
        # (unsafe) and filing an issue: only its kind and first line say anything here
        why = (str(exc).strip().splitlines() or [""])[0][:160]
        if "weights_only" in str(exc):  # the refusal of the safe unpickler: not a state file tasktune wrote
            why = "not a training state tasktune wrote"
        raise ConfigError(f"{path}: cannot be read ({type(exc).__name__}: {why}); "
                          f"the checkpoint is corrupted — delete {folder} to resume from an older one") from None


def find_resume_point(run_dir: Path, resume: str, fingerprint: dict[str, Any]) -> ResumePoint | None:
    """Resolve --resume (auto | never | PATH) to a checkpoint whose fingerprint matches this run."""
    if resume == "never":
        return None
    if resume == "auto":
        candidates = checkpoint_dirs(run_dir)
        if not candidates:
            return None
        folder = candidates[-1]
    else:
        folder = Path(resume)
        if not folder.is_dir():
            raise ConfigError(f"--resume {resume}: no such checkpoint folder")
    check_fingerprint(folder, fingerprint)
    state = read_state(folder)
    return ResumePoint(path=folder, step=int(state["step"]), state=state)


def write_fingerprint(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    atomic.write_json(Path(run_dir) / FINGERPRINT_FILE, fingerprint, sort_keys=True)


def check_fingerprint(checkpoint: Path, fingerprint: dict[str, Any]) -> None:
    """A checkpoint resumes only the run it came from: same base model, data, method and prefix shape."""
    path = Path(checkpoint).parent.parent / FINGERPRINT_FILE
    if not path.is_file():
        raise ConfigError(f"{checkpoint}: no {FINGERPRINT_FILE} beside its run folder; not a tasktune run")
    try:
        saved = json.loads(read_text_file(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); the run folder is damaged — use a new --out "
                          "folder, or --resume never to start over") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a JSON object; the run folder is damaged")
    # keys added later (model_content, hyperparameters) are checked when the saved fingerprint has them
    diffs = [_difference(k, saved.get(k), v, fingerprint) for k, v in fingerprint.items()
             if k not in (HYPERPARAMETERS, CONFIG_CHANGES) and saved.get(k) != v and (k in saved or k not in _LATER_KEYS)]
    if diffs:
        raise ConfigError(f"cannot resume from {checkpoint}: it belongs to a different run ("
                          + "; ".join(diffs) + "). Use a new --out folder, or --resume never to start over.")


def _difference(key: str, saved: Any, now: Any, fingerprint: dict[str, Any]) -> str:
    if key == "model_content":
        return (f"the base model {fingerprint.get('model')} has changed since the checkpoint was written (its "
                "config.json or weight files differ)")
    if key == "data" and isinstance(saved, dict) and isinstance(now, dict):  # name the files, not two hash dicts
        changed = [f"{name} {'changed' if name in now else 'is gone'}" for name in sorted(saved)
                   if saved[name] != now.get(name)] + [f"{name} is new" for name in sorted(set(now) - set(saved))]
        return f"the data (--data) has changed since the checkpoint was written: {', '.join(changed)}"
    return f"{key}: checkpoint has {saved!r}, this run has {now!r}"


HYPERPARAMETERS = "hyperparameters"
CONFIG_CHANGES = "config_changes"  # [{"from_step": N, "changed": {name: [old, new]}}]: resumes with new settings
_LATER_KEYS = ("model_content", HYPERPARAMETERS)
#: TrainConfig fields that do not change what is trained (where it is written, how often it is logged/saved,
#: threads, the resume choice itself, what the fingerprint already holds): free to change on resume
OPERATIONAL = frozenset({"model", "data", "out", "resume", "method", "task", "pre_seq_len", "prefix_projection",
                         "seed", "logging_steps", "save_steps", "save_total_limit", "num_threads", "compile",
                         "compile_cache", "gradient_checkpointing", "max_memory", "train_weights", "trust_remote_code", "allow_pickle",
                         "allow_config_change",
                         "per_device_train_batch_size", "gradient_accumulation_steps"})


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig values (as `to_dict()`) that shape the training itself: the learning rate and schedule,
    lengths, template, dropout, method options. A resume that changes one needs --allow-config-change."""
    return {k: v for k, v in sorted(config.items()) if k not in OPERATIONAL}


def changed_hyperparameters(checkpoint: Path, fingerprint: dict[str, Any]) -> dict[str, list]:
    """{name: [the checkpoint run's value, this run's value]} for every hyperparameter that differs."""
    try:
        saved = json.loads(read_text_file(Path(checkpoint).parent.parent / FINGERPRINT_FILE))
    except (OSError, ValueError):
        return {}
    before, now = saved.get(HYPERPARAMETERS), fingerprint.get(HYPERPARAMETERS, {})
    if not isinstance(before, dict):
        return {}  # a run from before hyperparameters were recorded
    return {k: [before.get(k), now.get(k)] for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)}


def saved_config_changes(checkpoint: Path) -> list:
    """The settings changes earlier resumes of the checkpoint's run made (kept in its fingerprint file)."""
    try:
        saved = json.loads(read_text_file(Path(checkpoint).parent.parent / FINGERPRINT_FILE))
    except (OSError, ValueError):
        return []
    changes = saved.get(CONFIG_CHANGES) if isinstance(saved, dict) else None
    return list(changes) if isinstance(changes, list) else []


def refuse_config_change(checkpoint: Path, changes: dict[str, list]) -> None:
    if changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise ConfigError(
            f"cannot resume from {checkpoint} with different settings ({listed}): the run record would describe "
            "a run that did not happen. Run with the checkpoint's settings, or pass --allow-config-change to go on "
            "with the new ones (the change and its step are kept in tasktune_run.json), or --resume never to "
            "start over")


def model_content(model: str) -> str | None:
    """A hash of a local base model folder's content, cheap (no full read): config.json's bytes, and each weight
    file's name, size and safetensors header (the tensor names, dtypes, shapes and offsets; for other weight files
    the size alone). None for a hub id (not a folder)."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.name.endswith(".index.json"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        elif path.suffix in (".safetensors", ".bin", ".pt", ".pth") and path.is_file():
            size = path.stat().st_size
            digest.update(f"{path.name}\0{size}\0".encode())
            if path.suffix == ".safetensors":
                digest.update(_safetensors_header(path, size))
    return digest.hexdigest()


def _safetensors_header(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        head = handle.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        return head + (handle.read(n) if 0 < n <= min(size - 8, 100 << 20) else b"")
