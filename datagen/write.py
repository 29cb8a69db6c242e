"""Write train/dev files, LLaMA-Factory's dataset_info.json and stats.json, all or nothing.

The files are one set (`datagen.fileset`): all are written into a staging folder beside the output
folder, then moved in together (one rename of the folder when it is new), so an interrupted run
leaves the old complete set or the new one. Train/dev text is streamed in chunks (convert ->
validate -> dump), so the whole file never sits in memory as one string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from tasktune.datagen import fileset
from tasktune.datagen.formats import FORMATS, convert
from tasktune.datagen.validate import validate_records
from tasktune.errors import SpecError


def dataset_info(name: str, fmt: str, files: dict[str, str]) -> dict[str, Any]:
    """LLaMA-Factory's dataset_info.json entries `<name>_train` / `<name>_dev` for these files.

    Every column it maps is in every record (`history` is `[]` on a single-turn record, see `formats`):
    LLaMA-Factory's loader raises KeyError on a mapped column the file lacks."""
    if fmt in ("chatglm", "jsonl"):
        extra = {"columns": {"prompt": "content", "response": "summary", "history": "history"}}
    elif fmt == "alpaca":
        extra = {"columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}}
    else:  # sharegpt
        extra = {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}
    return {f"{name}_{side}": {"file_name": file, **extra} for side, file in files.items()}


#: Characters that JSON leaves raw with ensure_ascii=False but `str.splitlines()` (and readers like it) take for a
#: line end: written escaped, so one record stays one line for every reader (the JSON value is the same)
LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _one_line_each(text: str) -> str:
    """`text` with LINE_BREAKS escaped (looked for first: translating every chunk cost ~19 ms per 4,096 records)."""
    return text.translate(LINE_BREAKS) if "\u2028" in text or "\u2029" in text or "\x85" in text else text


def serialize(records: list[dict[str, Any]], fmt: str) -> str:
    """UTF-8 JSON: an array with one record a line, or JSON lines for `jsonl`."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if fmt == "jsonl":
        return _one_line_each("".join(line + "\n" for line in lines))
    return _one_line_each("[\n" + ",\n".join(lines) + "\n]\n") if lines else "[]\n"


CHUNK = 4096  # records converted, validated and dumped at a time
_CHATGLM_KEYS = ("content", "summary", "history", "meta")
# = json.dumps(record, ensure_ascii=False), whose non-default argument makes it build an encoder per call
_dumps = json.JSONEncoder(ensure_ascii=False).encode


def stream_records(records: list[dict[str, Any]], fmt: str, meta: bool, where: str) -> Iterator[str]:
    """`serialize([convert(r) for r in records])` in pieces, each chunk schema-checked before it is written."""
    if not records and fmt != "jsonl":
        yield "[]\n"
        return
    if fmt != "jsonl":
        yield "[\n"
    for start in range(0, len(records), CHUNK):
        part = records[start:start + CHUNK]
        if fmt in ("chatglm", "jsonl") and meta:  # a to_chatglm record (keys in this order) is its own conversion
            chunk = [r if tuple(r) == _CHATGLM_KEYS else convert(r, fmt, meta) for r in part]
        else:
            chunk = [convert(r, fmt, meta) for r in part]
        validate_records(chunk, fmt, where, start=start)
        lines = list(map(_dumps, chunk))
        if fmt == "jsonl":
            yield _one_line_each("".join(line + "\n" for line in lines))
        else:
            last = start + CHUNK >= len(records)
            yield _one_line_each(",\n".join(lines) + ("\n]\n" if last else ",\n"))


def _prepare(out_dir: Path) -> None:
    """Check that `out_dir` can be written: its parent folder exists (created if needed), and `out_dir`, if it
    exists, is a writable folder."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"{out_dir}: cannot create the output directory: {exc.strerror or exc}") from None
    if out_dir.exists() and (not out_dir.is_dir() or not os.access(out_dir, os.W_OK | os.X_OK)):
        raise SpecError(f"{out_dir}: the output directory is not writable")
    if not out_dir.exists() and not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise SpecError(f"{out_dir}: cannot create the output directory: permission denied")


def write_files(out_dir: Path, files: dict[str, str | Iterable[str]]) -> list[Path]:
    """Write {name: text or text pieces} into `out_dir` as one set (`datagen.fileset`): all files are written
    to a staging folder first; a failure before they are all written changes nothing in `out_dir`."""
    out_dir = Path(out_dir)
    _prepare(out_dir)
    try:
        return fileset.write_set(out_dir, files)
    except OSError as exc:  # named by the path at fault (`OUT/train.json` when that is a folder), else OUT
        where = exc.filename if exc.filename is not None else out_dir
        if exc.filename is not None and fileset.in_staging(exc.filename, out_dir):
            where = out_dir / Path(exc.filename).name  # the file the user asked for, not the removed staging copy
        raise SpecError(f"{where}: cannot write output: {exc.strerror or exc}") from None


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
