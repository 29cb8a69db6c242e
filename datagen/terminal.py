"""Text from a spec shown on a terminal: slot values, template lines.

A value may hold anything a YAML escape or a pool file can give: ANSI escape sequences (`\\x1b[2J` clears the screen,
`\\x1b]52;...` writes the clipboard on some terminals), BEL, bidirectional overrides (U+202E shows text reversed),
line and paragraph separators, newlines (a row of the table split in two). `tasktune data`'s table printed them raw.
The files keep every value as it is; only what is printed is escaped.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every character `str.isprintable` refuses (controls, format characters such as bidi overrides and
    zero-width joiners, separators other than the space) written as its Python escape (`\\x1b`, `\\u202e`, `\\n`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
