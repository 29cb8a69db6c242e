"""The names `tasktune serve` serves models under: each fit to be sent by clients and printed in logs, and all
distinct from each other, from the base's and from `auto`."""

from __future__ import annotations

from tasktune.errors import ConfigError, quoted

from .service import AUTO

MAX_NAME = 256
"""characters of a served model name"""


def name_problem(name: str) -> str | None:
    """What makes `name` unfit to be a served model name (None: nothing): control characters (a newline or an
    escape sequence went into the startup line and /v1/models raw), blank ends, over MAX_NAME characters."""
    if len(name) > MAX_NAME:
        return f"has {len(name):,} characters, over {MAX_NAME}"
    if not name.isprintable():
        return "holds a control character"
    if name != name.strip():
        return "starts or ends with a space"
    return None


def names_apart(runs: list[str], base_name: str, named: bool) -> None:
    """The served model names must be distinct: a run named as the base or `auto` hid it (and /v1/models listed the
    name twice). Two runs of one name are refused by load_view already."""
    if base_name == AUTO:
        raise ConfigError(f"--base-name {AUTO}: `{AUTO}` is the model name that routes requests; pick another")
    for name, what in [(base_name, "--base-name" if named else "the base model's name"),
                       *((name, "run name") for name in runs)]:
        problem = name_problem(name)
        if problem:
            fix = "give another with --base-name" if what != "run name" else "name the run with NAME=RUN_DIR"
            raise ConfigError(f"{what} {quoted(name)} {problem}: it is a model name clients send and logs print; "
                              f"{fix}")
    for name in runs:
        if name in (base_name, AUTO):
            what = f"the base model's name{' (--base-name)' if named else ''}" if name == base_name else \
                "the model name that routes requests"
            raise ConfigError(f"run name {name!r} is {what}; name the run apart with NAME=RUN_DIR"
                              + ("" if name == AUTO or named else " or the base with --base-name"))
