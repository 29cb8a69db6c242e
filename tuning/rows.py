"""A data file's rows (a JSON array, or JSON lines) and the checks of a record's history and meta: what
`tuning/data.py`'s loader reads before it keeps a column."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tasktune import files
from tasktune.errors import DataError


def read_rows(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a UTF-8 BOM is dropped)
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(files.text_lines(text), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: JSON nested too deeply to be a record") from None
        return rows
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be records") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(rows).__name__}")
    return rows


#: a lone UTF-16 surrogate (a half emoji, from a JSON `"\\ud83d"`): valid in a Python str, not in any file or
#: tokenizer (the one pattern behind the data reader's, the server's and the Assistant's checks)
SURROGATE = re.compile("[\ud800-\udfff]")


def clean_meta(value: Any, where: str) -> dict[str, Any]:
    """A record's `meta` as eval reads it (an object: `step` and `answer_pattern` strings, `arguments` an object of
    values), checked when the data is read: other shapes failed with AttributeError after the whole eval ran."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{where}: meta must be an object, got {type(value).__name__}")
    for key in ("step", "answer_pattern"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise DataError(f"{where}: meta.{key} must be a string, got {type(value[key]).__name__}")
    arguments = value.get("arguments")
    if arguments is not None and not (isinstance(arguments, dict) and all(
            isinstance(v, (str, int, float, bool)) or v is None for v in arguments.values())):
        raise DataError(f"{where}: meta.arguments must be an object of argument values")
    return value


def clean_history(value: Any, where: str) -> list[list[str]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        for turn in value
    ):
        raise DataError(f"{where}: history must be a list of [query, answer] string pairs")
    return [list(turn) for turn in value]
