"""Answer patterns: a regex per answer shape with one named group per argument, for argument accuracy.

Built by rendering the answer template with a sentinel per argument and escaping the rest; when a
template computes with an argument (e.g. `{{ place | length }}`), the argument values are located in
the rendered answer instead.

A pattern is read as eval reads it (tuning/evaluation/metrics.py `argument_accuracy`): it must fully match the
stripped answer, and each group, stripped, must equal the argument's text, stripped (`recovers`). Every record's
pattern is checked so against its own answer: an answer whose arguments cannot be read back (an empty value, a value
holding the text that follows it in the answer) is a SpecError, not a record a perfect model scores wrong on.
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from typing import Any

from tasktune.datagen.render import Compiled
from tasktune.errors import SpecError

_TOKEN = secrets.token_hex(8)  # (in the sentinels: no slot value or template can spell one)
_GROUP = ".+?"
_GROUP_DOTALL = "(?s:.+?)"  # an argument value holding a newline ('.' stops at "\n" without the s flag)


def _regex(pieces: list[str], by_token: dict[str, str], dotall: bool = False) -> tuple[str, set[str]]:
    """Escape the literal pieces; the first piece naming an argument becomes a group, repeats backreferences.

    Whitespace at either end of the answer's literal text matches any whitespace (`\\s*`): eval strips the answer
    before it matches, so a literal `' '` at the end (`'...{{ c }} '`, or a slot value `'z '` there) never matched."""
    seen: set[str] = set()
    out = []
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        name = by_token.get(piece)
        if name is None:
            head = r"\s*" if i == 0 and piece[:1].isspace() else ""
            tail = r"\s*" if i == last and piece[-1:].isspace() else ""
            piece = piece.lstrip() if head else piece
            piece = piece.rstrip() if tail else piece
            out.append(head + re.escape(piece).replace("\\ ", " ") + tail)  # a space needs no escape
        elif name in seen:
            out.append(f"(?P={name})")
        else:
            seen.add(name)
            out.append(f"(?P<{name}>{_GROUP_DOTALL if dotall else _GROUP})")
    return "^" + "".join(out) + "$", seen


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def recovers(pattern: str, answer: str, values: dict, args: tuple[str, ...]) -> bool:
    """Whether `pattern` reads the arguments back from `answer` as eval does: a full match of the stripped answer,
    each group (stripped) equal to the argument's text (stripped)."""
    match = _compiled(pattern).fullmatch(answer.strip())
    return bool(match) and all(match.group(a).strip() == str(values[a]).strip() for a in args)


def _why_not(values: dict[str, Any], args: tuple[str, ...], answer: str, where: str) -> SpecError:
    """The error for an answer whose arguments no pattern reads back, saying which value is at fault."""
    shown = {a: values[a] for a in args}
    empty = [a for a in args if not str(values[a]).strip()]
    if empty:
        return SpecError(f"{where}.arguments: argument {empty[0]!r} is {values[empty[0]]!r} (empty or only "
                         f"whitespace) in the answer {answer[:200]!r}: an answer cannot name an empty argument, so "
                         "it could never be scored; give the slot values with text (or leave it out of arguments)")
    return SpecError(f"{where}.arguments: the arguments {shown} cannot be read back from the answer {answer[:200]!r}: "
                     "a value holds the text that follows it in the answer (or another argument's value), so the "
                     "answer reads two ways and a right answer would score wrong; change the slot value or the "
                     "answer template's text between the arguments")


def build_pattern(case: Compiled, values: dict, args: tuple[str, ...], answer: str,
                  where: str) -> tuple[str, bool]:
    """(regex, whether it holds for every argument value) for `answer`.

    First the answer template is rendered with a sentinel per argument (a pattern for all values);
    if the template computes with an argument, the argument values are located in the answer instead.
    A pattern that cannot read this answer's arguments back (`recovers`) is a SpecError.
    """
    dotall = any("\n" in str(values[a]) for a in args)
    sentinels = {f"\x00arg{i}-{_TOKEN}\x00": a for i, a in enumerate(args)}
    try:
        rendered = case({**values, **{a: s for s, a in sentinels.items()}})
        pieces = re.split("(" + "|".join(map(re.escape, sentinels)) + ")", rendered)
        pattern, seen = _regex(pieces, sentinels, dotall)
        if len(seen) == len(args) and recovers(pattern, answer, values, args):
            return pattern, not dotall  # (a pattern for newline values is this record's own)
    except SpecError:
        pass
    literal = {str(values[a]): a for a in args if str(values[a])}
    pieces = re.split("(" + "|".join(map(re.escape, sorted(literal, key=len, reverse=True))) + ")", answer) \
        if literal else [answer]
    pattern, seen = _regex(pieces, literal, dotall)
    missing = [a for a in args if a not in seen]
    if missing and str(values[missing[0]]).strip():
        raise SpecError(f"{where}.arguments: argument {missing[0]!r} does not appear in the answer {answer!r}")
    if missing or not recovers(pattern, answer, values, args):
        raise _why_not(values, args, answer, where)
    return pattern, False
