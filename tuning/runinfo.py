"""What a run folder records so it can be reproduced: data hashes, versions, atomic JSON writes."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from tasktune import files as atomic

DATA_FILES = ("train.json", "dev.json", "train.jsonl", "dev.jsonl")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(data: str | Path) -> dict[str, str]:
    """sha256 of each data file (a folder's train/dev files, or one file), plus the spec hash if recorded."""
    data = Path(data)
    files = [data] if data.is_file() else [data / name for name in DATA_FILES if (data / name).is_file()]
    out = {p.name: sha256_file(p)[:16] for p in files}
    stats = (data if data.is_dir() else data.parent) / "stats.json"
    if stats.is_file():
        try:
            spec_hash = json.loads(stats.read_text(encoding="utf-8")).get("spec_sha256")
        except (ValueError, AttributeError):
            spec_hash = None
        if spec_hash:
            out["spec_sha256"] = str(spec_hash)
    return out


def environment_info() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__}
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    from tasktune import __version__

    info["tasktune"] = __version__
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return info


def write_json_atomic(path: Path, obj: Any) -> None:
    """`tasktune.files.write_json` (atomic, fsync'ed, the umask's mode), under the name callers know."""
    atomic.write_json(path, obj)
