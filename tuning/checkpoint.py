"""Training checkpoints: adapter + optimizer/scheduler/RNG state, written atomically, resumed exactly.

A checkpoint is a folder `RUN/checkpoints/step-000500/` holding the adapter in PEFT's format
(via tuning.save) and `training_state.pt` (tensors and plain values only; loaded with
`weights_only=True`). It is written into a temporary sibling and renamed into place, so a crash
mid-write leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasktune import files as atomic
from tasktune.errors import ConfigError

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
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
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
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    for stale in root.glob(f".tmp-{PREFIX}*"):  # a write killed before its rename (one writer per run folder)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{PREFIX}{step:06d}-", dir=root))
    try:
        save_adapter_fn(tmp)
        torch.save(state, tmp / STATE_FILE)
        atomic.settle(tmp)  # fsync'ed, and the umask's modes (mkdtemp made the folder 0700)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; {folder} is not a complete tasktune checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / corrupted file
        raise ConfigError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); "
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
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); the run folder is damaged — use a new --out "
                          "folder, or --resume never to start over") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a JSON object; the run folder is damaged")
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}"
             for k, v in fingerprint.items() if saved.get(k) != v]
    if diffs:
        raise ConfigError(f"cannot resume from {checkpoint}: it belongs to a different run ("
                          + "; ".join(diffs) + "). Use a new --out folder, or --resume never to start over.")
