"""A data file's rows (a JSON array, or JSON lines) and the checks of a record's history and meta: what
`tuning/data.py`'s loader reads before it keeps a column."""

from __future__ import annotations

import json
import re
from functools import lru_cache
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
    _check_answer_pattern(value.get("answer_pattern"), arguments or {}, where)
    return value


_NAMED_GROUP = re.compile(r"\(\?P<([^>]+)>")


def _dedupe_group_names(pattern: str) -> str:
    """Rename repeated `(?P<name>` openings to `(?P<name__2>` ... so that the pattern compiles.

    Python's `re` rejects a group name defined twice; a generator may still write it that way.
    """
    seen: dict[str, int] = {}

    def rename(match: re.Match[str]) -> str:
        name = match.group(1)
        seen[name] = seen.get(name, 0) + 1
        return match.group(0) if seen[name] == 1 else f"(?P<{name}__{seen[name]}>"

    return _NAMED_GROUP.sub(rename, pattern)


@lru_cache(maxsize=1024)  # one pattern per answer shape, shared by many records
def answer_regex(pattern: str) -> re.Pattern[str]:
    """A record's `meta.answer_pattern`, compiled as argument accuracy reads it (a group name written twice is
    renamed `name__2`, ...). Raises the pattern's own `re.error` when it is not a regular expression."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        first = exc
    try:
        return re.compile(_dedupe_group_names(pattern))
    except re.error:
        raise first from None


def argument_groups(regex: re.Pattern[str], name: str) -> list[str]:
    """The groups of `regex` that capture argument `name`: `name` and its renamed repeats `name__2`, ..."""
    repeat = re.compile(re.escape(name) + r"(__\d+)?")
    return [key for key in regex.groupindex if repeat.fullmatch(key)]


def _check_answer_pattern(pattern: str | None, arguments: dict[str, Any], where: str) -> None:
    """`meta.answer_pattern` compiles and has a group for every argument, and `meta.arguments` comes with it: else
    eval scored every argument of the record wrong without a word (exit 0, argument accuracy 0)."""
    if pattern is None:
        if arguments:
            raise DataError(f"{where}: meta.arguments ({', '.join(map(str, arguments))}) without meta.answer_pattern: "
                            "argument accuracy finds the arguments in the answer with that regular expression; add it "
                            "(`tasktune data` writes it) or drop meta.arguments")
        return
    try:
        regex = answer_regex(pattern)
    except re.error as exc:
        raise DataError(f"{where}: meta.answer_pattern is not a valid regular expression ({exc}): "
                        f"{pattern[:80]!r}{'...' if len(pattern) > 80 else ''}") from None
    for name in arguments:
        if not argument_groups(regex, name):
            raise DataError(f"{where}: meta.answer_pattern has no group (?P<{name}>...) for argument {name!r} of "
                            "meta.arguments, so that argument could never be scored right")


def clean_history(value: Any, where: str) -> list[list[str]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        for turn in value
    ):
        raise DataError(f"{where}: history must be a list of [query, answer] string pairs")
    return [list(turn) for turn in value]


#: column sets of the other layouts `tasktune data --format` writes -> how to train on them
_LAYOUTS = (
    ({"instruction", "output"}, "; it is alpaca-shaped: add --prompt-column instruction --response-column output"),
    ({"conversations"}, "; it is sharegpt-shaped (LLaMA-Factory's): write the data with --format chatglm or jsonl "
                        "for tasktune train"),
    ({"text", "label"}, "; it is labelled text: train a classifier with --task classification"),
    ({"prompt", "response"}, "; it is ChatGLM2-6B's ptuning layout: add --prompt-column prompt --response-column "
                             "response"),
)


def layout_hint(columns) -> str:
    """How to train on rows of `columns` when they are another layout that `tasktune data` writes ('' if none)."""
    return next((hint for names, hint in _LAYOUTS if names <= set(columns)), "")


#: columns LLaMA-Factory's alpaca layout puts prompt text in besides the instruction -> what to do about them;
#: tasktune reads one prompt column, so such text was dropped without a word (the model trained on, and eval scored,
#: prompts cut short)
_UNREAD_PROMPT_TEXT = {
    "input": "LLaMA-Factory's alpaca layout joins it to the instruction as the prompt, tasktune reads --prompt-column "
             "alone; join the two into that column, or empty it",
    "system": "tasktune does not read a system prompt (the prompt template frames each record); fold it into the "
              "prompt column, or drop it",
}


def check_unread_text(row: dict[str, Any], read: set[str], where: str) -> None:
    """DataError when `row` holds prompt text in a column no setting reads (`read`: the columns that are)."""
    for column, fix in _UNREAD_PROMPT_TEXT.items():
        value = row.get(column)
        if column not in read and isinstance(value, str) and value.strip():
            raise DataError(f"{where}: column {column!r} holds text ({value[:40]!r}) that would not be read: {fix}")

