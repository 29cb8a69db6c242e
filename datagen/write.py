"""Write train/dev files, LLaMA-Factory's dataset_info.json and stats.json, all or nothing.

Every file is first written to a temporary file in the output folder, then moved into place
with os.replace, so a failure leaves no half-written file behind. Train/dev text is streamed in
chunks (convert -> validate -> dump), so the whole file never sits in memory as one string.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from datagen.formats import FORMATS, convert
from datagen.validate import validate_records
from tasktune.errors import SpecError


def dataset_info(name: str, fmt: str, files: dict[str, str]) -> dict[str, Any]:
    """LLaMA-Factory's dataset_info.json entries `<name>_train` / `<name>_dev` for these files."""
    if fmt in ("chatglm", "jsonl"):
        extra = {"columns": {"prompt": "content", "response": "summary", "history": "history"}}
    elif fmt == "alpaca":
        extra = {"columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}}
    else:  # sharegpt
        extra = {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}
    return {f"{name}_{side}": {"file_name": file, **extra} for side, file in files.items()}


def serialize(records: list[dict[str, Any]], fmt: str) -> str:
    """UTF-8 JSON: an array with one record a line, or JSON lines for `jsonl`."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if fmt == "jsonl":
        return "".join(line + "\n" for line in lines)
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"


CHUNK = 4096  # records converted, validated and dumped at a time


def stream_records(records: list[dict[str, Any]], fmt: str, meta: bool, where: str) -> Iterator[str]:
    """`serialize([convert(r) for r in records])` in pieces, each chunk schema-checked before it is written."""
    if not records and fmt != "jsonl":
        yield "[]\n"
        return
    if fmt != "jsonl":
        yield "[\n"
    for start in range(0, len(records), CHUNK):
        chunk = [convert(r, fmt, meta) for r in records[start:start + CHUNK]]
        validate_records(chunk, fmt, where, start=start)
        lines = [json.dumps(r, ensure_ascii=False) for r in chunk]
        if fmt == "jsonl":
            yield "".join(line + "\n" for line in lines)
        else:
            last = start + CHUNK >= len(records)
            yield ",\n".join(lines) + ("\n]\n" if last else ",\n")


def _prepare(out_dir: Path) -> bool:
    """Create `out_dir` if needed (returns whether it did) and check that it is writable."""
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"{out_dir}: cannot create the output directory: {exc.strerror or exc}") from None
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK | os.X_OK):
        raise SpecError(f"{out_dir}: the output directory is not writable")
    return created


def write_files(out_dir: Path, files: dict[str, str | Iterable[str]]) -> list[Path]:
    """Write {name: text or text pieces} into `out_dir` atomically: temp files first, then os.replace each."""
    out_dir = Path(out_dir)
    created = _prepare(out_dir)
    temps: dict[str, str] = {}
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            temps[name] = tmp
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                for piece in [text] if isinstance(text, str) else text:
                    f.write(piece)
        for name, tmp in temps.items():
            os.replace(tmp, out_dir / name)
    except BaseException as exc:  # an OSError, or a SpecError from a streamed piece: leave nothing behind
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if isinstance(exc, OSError):
            raise SpecError(f"{out_dir}: cannot write output: {exc.strerror or exc}") from None
        raise
    return [out_dir / name for name in files]


def write_splits(splits, out_dir: str | Path, fmt: str = "chatglm", *, meta: bool = True) -> list[Path]:
    """Write `splits` (from `datagen.generate`) as `fmt` into `out_dir`; returns the paths written."""
    if fmt not in FORMATS:
        raise SpecError(f"unknown output format {fmt!r} (choose from {', '.join(FORMATS)})")
    ext = "jsonl" if fmt == "jsonl" else "json"
    files: dict[str, str] = {}
    names: dict[str, str] = {}
    for side in ("train", "dev"):
        records = getattr(splits, side)
        if records:  # fail on a bad first record before any file is opened
            validate_records([convert(records[0], fmt, meta)], fmt, f"{side}: ")
        names[side] = f"{side}.{ext}"
        files[names[side]] = stream_records(records, fmt, meta, f"{side}: ")
    if fmt != "classification":
        info = dataset_info(splits.stats.get("spec", "tasktune"), fmt, names)
        files["dataset_info.json"] = json.dumps(info, ensure_ascii=False, indent=2) + "\n"
    files["stats.json"] = json.dumps(splits.stats, ensure_ascii=False, indent=2) + "\n"
    return write_files(Path(out_dir), files)
