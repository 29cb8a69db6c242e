"""Speech-recognition noise for the spoken part only: mask, homophone, delete, insert.

Each op is a pure function of (character, rng, spec); `add_noise(text, rng, spec)` applies them
per character at `spec.rate` and returns the new text with the spans it changed.
"""

from __future__ import annotations

import bisect
import itertools
import random
from functools import cache
from typing import Callable

from pypinyin import Style, lazy_pinyin

from tasktune.datagen.spec import NoiseSpec

OPS = ("mask", "homophone", "delete", "insert")
# initials/finals that ASR systems (and southern accents) often confuse
_INITIALS = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("l", "n"), ("h", "f"))
_FINALS = (("ang", "an"), ("eng", "en"), ("ing", "in"))
_KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _is_cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


def _toneless(char: str) -> str:
    return lazy_pinyin(char, style=Style.NORMAL, errors="ignore")[0] if _is_cjk(char) else ""


@cache
def homophone_table() -> dict[str, tuple[str, ...]]:
    """Toneless pinyin -> the common characters (GB2312 level 1, 3755) that read so, sorted.

    Built once; deterministic because the character list and pypinyin's dictionary are fixed.
    """
    chars = []
    for hi, lo in itertools.product(range(0xB0, 0xD8), range(0xA1, 0xFF)):
        try:
            chars.append(bytes([hi, lo]).decode("gb2312"))
        except UnicodeDecodeError:
            continue
    table: dict[str, list[str]] = {}
    for char, reading in zip(chars, lazy_pinyin(chars, style=Style.NORMAL, errors=lambda c: [""] * len(c))):
        if reading:
            table.setdefault(reading, []).append(char)
    return {reading: tuple(sorted(group)) for reading, group in table.items()}


def _similar_readings(reading: str) -> list[str]:
    out = []
    for a, b in _INITIALS:
        for x, y in ((a, b), (b, a)):
            if reading.startswith(x) and not (len(x) == 1 and reading[:2] in ("zh", "ch", "sh")):
                out.append(y + reading[len(x):])
    for a, b in _FINALS:
        if reading.endswith(a):
            out.append(reading[: -len(a)] + b)
        elif reading.endswith(b):
            out.append(reading[: -len(b)] + a)
    return out


@cache
def homophones(char: str) -> tuple[str, ...]:
    """Same-pinyin characters (else similar-pinyin ones) for a Chinese character; keyboard neighbours for a letter."""
    if char.isascii() and char.isalpha():
        low = char.lower()
        for row in _KEYBOARD:
            i = row.find(low)
            if i >= 0:
                near = row[max(i - 1, 0): i] + row[i + 1: i + 2]
                return tuple(c.upper() if char.isupper() else c for c in near)
    reading = _toneless(char)
    if not reading:
        return ()
    table = homophone_table()
    same = tuple(c for c in table.get(reading, ()) if c != char)
    if same:
        return same
    return tuple(sorted({c for r in _similar_readings(reading) for c in table.get(r, ()) if c != char}))


def mask(char: str, rng: random.Random, spec: NoiseSpec) -> str:
    return spec.mask_token


def homophone(char: str, rng: random.Random, spec: NoiseSpec) -> str:
    options = homophones(char)
    return options[int(rng.random() * len(options))] if options else char


def delete(char: str, rng: random.Random, spec: NoiseSpec) -> str:
    return ""


def insert(char: str, rng: random.Random, spec: NoiseSpec) -> str:
    """Keeps `char` and adds one after it: a filler from `insert_chars`, else `char` again (a stutter)."""
    pool = spec.insert_chars
    return char + (pool[int(rng.random() * len(pool))] if pool else char)


OP_FUNCTIONS: dict[str, Callable[[str, random.Random, NoiseSpec], str]] = {
    "mask": mask, "homophone": homophone, "delete": delete, "insert": insert,
}


@cache
def _op_table(ops: tuple[tuple[str, float], ...]) -> tuple[tuple[float, ...], tuple[str, ...]]:
    names = tuple(name for name, p in ops if p > 0)
    return tuple(itertools.accumulate(p for name, p in ops if p > 0)), names


def add_noise(text: str, rng: random.Random, spec: NoiseSpec) -> tuple[str, list[dict]]:
    """Noise `text`; each span: op, `start`/`end` of `before` in `text`, `at` = where `after` starts in the result."""
    if spec.rate <= 0 or not text:
        return text, []
    cum, names = _op_table(tuple(sorted(spec.ops.items())))
    out: list[str] = []
    spans: list[dict] = []
    pos = 0  # length of the output so far
    rate, random_ = spec.rate, rng.random
    for i, char in enumerate(text):
        if char.isspace() or random_() >= rate:
            out.append(char)
            pos += 1
            continue
        # min(): r * total can round up to total itself (tiny or subnormal weights)
        op = names[min(bisect.bisect_right(cum, random_() * cum[-1]), len(names) - 1)]
        new = OP_FUNCTIONS[op](char, rng, spec)
        if new == char:  # nothing to substitute (no homophone known)
            out.append(char)
            pos += 1
            continue
        if op == "insert":
            spans.append({"op": op, "start": i + 1, "end": i + 1, "before": "", "after": new[1:], "at": pos + 1})
        else:
            spans.append({"op": op, "start": i, "end": i + 1, "before": char, "after": new, "at": pos})
        out.append(new)
        pos += len(new)
    noised = "".join(out)
    if spans and not noised.strip() and text.strip():
        return _keep_one(text, spans, rng)
    return noised, spans


def _keep_one(text: str, spans: list[dict], rng: random.Random) -> tuple[str, list[dict]]:
    """`text` with every edit of `spans` but one, drawn with `rng`, that took a non-space character away (a
    `delete`, or a `mask` whose token is whitespace): noise never leaves an utterance empty or whitespace-only
    (`rate: 1.0, ops: {delete: 1}` wrote `"content": " "`, which is refused where a template makes it). Only
    such an utterance takes this path, so every other output stays as it was."""
    lost = [k for k, span in enumerate(spans) if span["before"].strip()]
    del spans[lost[int(rng.random() * len(lost))]]
    out: list[str] = []
    pos = end = 0
    for span in spans:  # left to right: rebuild the text and each span's `at`
        kept = text[end: span["start"]]
        out += (kept, span["after"])
        span["at"] = pos + len(kept)
        pos = span["at"] + len(span["after"])
        end = span["end"]
    out.append(text[end:])
    return "".join(out), spans


def apply_noise(examples: list, spec: NoiseSpec, rng: random.Random) -> None:
    """Noise the utterance of every spoken example in place (frame and answer untouched)."""
    if spec.rate <= 0:
        return
    for example in examples:
        if example.spoken and example.utterance:
            example.utterance, example.noise = add_noise(example.utterance, rng, spec)
