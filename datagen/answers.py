"""Answer patterns: a regex per answer shape with one named group per argument, for argument accuracy.

Built by rendering the answer template with a sentinel per argument and escaping the rest; when a
template computes with an argument (e.g. `{{ place | length }}`), the argument values are located in
the rendered answer instead.
"""

from __future__ import annotations

import re

from tasktune.datagen.render import Compiled
from tasktune.errors import SpecError


def _regex(pieces: list[str], by_token: dict[str, str]) -> tuple[str, set[str]]:
    """Escape the literal pieces; the first piece naming an argument becomes a group, repeats backreferences."""
    seen: set[str] = set()
    out = []
    for piece in pieces:
        name = by_token.get(piece)
        if name is None:
            out.append(re.escape(piece).replace("\\ ", " "))  # a space needs no escape
        elif name in seen:
            out.append(f"(?P={name})")
        else:
            seen.add(name)
            out.append(f"(?P<{name}>.+?)")
    return "^" + "".join(out) + "$", seen


def _recovers(pattern: str, answer: str, values: dict, args: tuple[str, ...]) -> bool:
    match = re.match(pattern, answer)
    return bool(match) and all(match.group(a) == str(values[a]) for a in args)


def build_pattern(case: Compiled, values: dict, args: tuple[str, ...], answer: str,
                   where: str) -> tuple[str, bool]:
    """(regex, whether it holds for every argument value) for `answer`.

    First the answer template is rendered with a sentinel per argument (a pattern for all values);
    if the template computes with an argument, the argument values are located in the answer instead.
    """
    sentinels = {f"\x00arg{i}\x00": a for i, a in enumerate(args)}
    try:
        rendered = case({**values, **{a: s for s, a in sentinels.items()}})
        pattern, seen = _regex(re.split("(" + "|".join(map(re.escape, sentinels)) + ")", rendered), sentinels)
        if len(seen) == len(args) and _recovers(pattern, answer, values, args):
            return pattern, True
    except SpecError:
        pass
    literal = {str(values[a]): a for a in args}
    pieces = re.split("(" + "|".join(map(re.escape, sorted(literal, key=len, reverse=True))) + ")", answer)
    pattern, seen = _regex(pieces, literal)
    missing = [a for a in args if a not in seen]
    if missing:
        raise SpecError(f"{where}.arguments: argument {missing[0]!r} does not appear in the answer {answer!r}")
    if not _recovers(pattern, answer, values, args):
        raise SpecError(f"{where}.arguments: cannot recover the arguments from the answer {answer!r}")
    return pattern, False
