"""Numeric command-line flags and config keys: one `Range` per number says what is allowed, and checks it; and
the config dataclasses' checks of their fields' `range` and `choices` (`check_ranges`, `check_choices`).

A `Range` is used in two ways, so the bound lives in one place:

* as an argparse `type=`: `--batch-size abc`, `--batch-size 0` and `--learning-rate nan` are refused by
  argparse itself, with the flag named and exit code 2 (`tasktune train: error: argument --batch-size:
  expected int >= 1 and <= 65,536, got 0`), before any work starts;
* as `Range.check(name, value)` in a config dataclass's `__post_init__` (YAML keys and the Python API),
  raising `ConfigError` that names the key.

Floats are always finite: NaN and ±inf are refused everywhere (a NaN compares false with every bound, so it
would otherwise pass any range check).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tasktune.errors import ConfigError

#: int64: the largest integer torch, numpy and JSON readers all take.
INT_MAX = 2**63 - 1


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric flag: `kind` (int or float), inclusive `lo`/`hi`, or exclusive ones."""

    kind: type = int
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself not allowed (a learning rate > 0)
    hi_open: bool = False  # hi itself not allowed (a dropout < 1)
    note: str = ""  # what a special value means, e.g. "0 = all"

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.kind.__name__

    def describe(self) -> str:
        what = "int" if self.kind is int else "a finite float"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_num(self.hi)}")
        text = f"{what} {' and '.join(parts)}" if parts else what
        return f"{text} ({self.note})" if self.note else text

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None when it is."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected {self.describe()}, got {value!r}"
        if self.kind is int and not (isinstance(value, int) or float(value).is_integer()):
            return f"expected {self.describe()}, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected {self.describe()}, got {value!r}"
        lo_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        hi_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if lo_bad or hi_bad or (self.kind is int and abs(value) > INT_MAX):
            return f"expected {self.describe()}, got {_num(value)}"
        return None

    def __call__(self, text: str) -> Any:
        """argparse `type=`: parse and check one flag value (argparse adds the flag's name to the message)."""
        raw = str(text).strip()
        try:
            value = int(raw) if self.kind is int else float(raw)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
        problem = self.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    def check(self, name: str, value: Any, *, optional: bool = False) -> Any:
        """Raise ConfigError naming `name` unless `value` is allowed (None passes when `optional`)."""
        if value is None and optional:
            return value
        problem = self.problem(value)
        if problem:
            raise ConfigError(f"{name}: {problem}")
        return value


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else repr(value)


# Ranges shared by several commands.
COUNT = Range(int, 1, 10**9)                   # steps, records, micro-batches
STEPS0 = Range(int, 0, 10**9)                  # warm-up steps, 0 = none
BATCH = Range(int, 1, 65536)                   # prompts / rows per batch
TOKENS = Range(int, 1, 1 << 20)                # token lengths and caps
SEED = Range(int, 0, 2**32 - 1)                # what numpy, torch and random all take
LEARNING_RATE = Range(float, 0.0, 10.0, lo_open=True)
PROBABILITY = Range(float, 0.0, 1.0)
DROPOUT = Range(float, 0.0, 1.0, hi_open=True)
SIZE = Range(int, 1, 1 << 17)                  # hidden sizes, ranks, layers


def finite_float(text: str) -> float:
    """argparse `type=` for a float flag without a declared range: any finite number."""
    return Range(float)(text)


def nonempty(text: str) -> str:
    """argparse `type=` for a text flag that must say something (`--base-name ""` fell back to the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a value or leave the flag out")
    return text


def guard_numeric_flags(parser: argparse.ArgumentParser) -> None:
    """Give every `type=int` / `type=float` action of `parser` and its subparsers a Range (the safety net
    for a flag added without one: NaN, ±inf and integers beyond int64 are still refused with the flag named)."""
    for action in parser._actions:
        if action.type is int:
            action.type = Range(int, -INT_MAX, INT_MAX)
        elif action.type is float:
            action.type = Range(float)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                guard_numeric_flags(sub)


def output_folder_problem(path: str | Path) -> str | None:
    """Why `path` cannot be an output folder (empty, or it or a folder above it is a file), or None."""
    if not str(path).strip():  # Path("") is ".": the outputs would land in the current folder
        return "empty path; name an output folder"
    here = Path(path)
    for folder in (here, *here.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                what = _not_a_folder(folder)
                return f"{folder} is {what}, not a folder" if folder == here else \
                    f"cannot create the output directory: {folder} (above it) is {what}, not a folder"
            return None
    return None


def _not_a_folder(path: Path) -> str:
    """What `path`, which is not a folder, is: a link that leads nowhere (a loop, a missing target) was called
    "a file"."""
    import os
    import stat

    if path.is_symlink() and not path.exists():
        return f"a symbolic link (to {os.readlink(path)}) that leads nowhere (a loop, or its target is missing)"
    mode = path.stat().st_mode
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "a file"


def check_output_folder(path: str | Path, flag: str) -> None:
    """ConfigError naming `flag` and the file when `path` cannot be an output folder (checked before any work)."""
    problem = output_folder_problem(path)
    if problem:
        raise ConfigError(f"{flag} {path}: {problem}")


def check_can_write(folder: str | Path, label: str) -> None:
    """ConfigError starting with `label` when nothing can be created in `folder` (or, if it does not exist yet, in
    the nearest folder above it): no permission, a read-only or special file system (/proc). Probed by creating and
    removing a hidden folder there, for commands whose work comes long before their first write (tiny-model
    trained for minutes, then failed on `/proc/.x.tmp-123: No such file or directory`)."""
    import os
    import tempfile

    here = Path(folder).absolute()
    existing = next((p for p in (here, *here.parents) if p.is_dir()), None)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tasktune-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(f"{label}: cannot create anything in {existing} ({exc.strerror or exc}); choose a folder "
                          "you can write to") from None


# -- config dataclasses: their fields' `range` and `choices` metadata (tuning/config.py's `_opt`) ----------------

def check_ranges(config: Any) -> None:
    """ConfigError naming the first field of a dataclass instance whose value is outside its `range`."""
    for f in fields(config):
        bound = f.metadata.get("range")
        if bound is not None:
            bound.check(f.name, getattr(config, f.name))


def check_types(config: Any, parsed: tuple[str, ...] = ()) -> None:
    """ConfigError naming the first field of a dataclass instance (built by the Python API) whose value is not of
    its declared kind: a boolean field takes only True/False (`allow_pickle="false"` is a non-empty string, so it
    was true: pickle weights loaded); a text field takes text or a path (os.PathLike, made text here), without a
    NUL character. Numbers are `check_ranges`' (a Range checks its own type); fields with `choices` are
    `check_choices`' (it maps a boolean or a number onto them), and the `parsed` ones read by a parser of their own."""
    import os
    import typing

    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        hint, value, flag = hints.get(f.name), getattr(config, f.name), f"--{f.name.replace('_', '-')}"
        if hint is bool and not isinstance(value, bool):
            raise ConfigError(f"{flag}: expected true or false, got {value!r}")
        if hint in (str, str | None) and not (value is None and hint != str) and not f.metadata.get("choices") \
                and f.name not in parsed:
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(config, f.name, value)
            if not isinstance(value, str):
                raise ConfigError(f"{flag}: expected text (or a path), got {type(value).__name__} {value!r:.60}")
            if "\0" in value:
                raise ConfigError(f"{flag}: {value!r:.60} holds a NUL character")


def bool_choice(value: bool, choices) -> Any:
    """A boolean given for a field of named choices (YAML reads unquoted on/off/true/false so; the Python API may
    pass one): "true"/"on" or "false"/"off", whichever the field has; the boolean itself when it has neither."""
    return next((c for c in (("true", "on") if value else ("false", "off")) if c in choices), value)


def check_choices(config: Any) -> None:
    """ConfigError naming the first field of a dataclass instance whose value is not among its `choices` (the flag
    checks them with argparse; YAML keys and the Python API come here): a mistyped `compile: fast` fails at once,
    not after the model has loaded. A boolean becomes the field's true/on or false/off."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and isinstance(value, bool):
            value = bool_choice(value, choices)
            setattr(config, f.name, value)
        if choices and isinstance(value, str) and value not in choices and value.lower() in choices:
            value = value.lower()  # "True" (a run record of a YAML `bf16: true` read before booleans were mapped)
            setattr(config, f.name, value)
        if choices and str(value) not in choices:
            raise ConfigError(f"--{f.name.replace('_', '-')}: {value!r} is not one of {', '.join(map(str, choices))}")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with each option's default, where it has one: argparse's own formatter also printed
    "(default: None)" after required options and flags with no default (`tasktune compare --model`)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
