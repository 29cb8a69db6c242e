"""The `tasktune` console entry point: one parser, one subcommand per pipeline stage.

Subcommand modules expose `register(subparsers)`; they import heavy libraries (torch,
transformers) only inside their handlers, so `tasktune --help` and `tasktune data` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
import warnings
from collections.abc import Iterator

from tasktune import __version__
from tasktune.errors import TaskTuneError, TaskTuneWarning, Terminated
from tasktune.flags import guard_numeric_flags

# (module, purpose) in pipeline order; each module defines register(subparsers).
COMMAND_MODULES = [
    "tasktune.datagen.cli",
    "tasktune.tuning.cli",
    "tasktune.serve.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasktune",
        description=(
            "Turn a small task spec into a task-specific assistant: generate noisy, split, "
            "schema-checked training data from Jinja templates, then P-tune (v2) a frozen, "
            "4-bit causal LM and compare base vs tuned answers."
        ),
        epilog="Run `tasktune COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"tasktune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a half-installed checkout: say which part is missing
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    guard_numeric_flags(parser)  # a number flag declared without a Range still refuses NaN, ±inf, huge ints
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with _warnings_as_lines(args.command):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except TaskTuneError as exc:
        _say(f"tasktune {args.command}: error: {exc}")
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: 130; SIGTERM (tasktune.runlock): 143, as SLURM/Kubernetes expect
        terminated = isinstance(exc, Terminated)
        print(f"tasktune {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # `tasktune ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        return 141
    except OSError as exc:  # permission denied, a file where a folder belongs, a full disk: name the path
        where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        full = " (the disk is full: free some space and run the same command again)" if exc.errno in _FULL else ""
        _say(f"tasktune {args.command}: error: {where + ': ' if where else ''}{exc.strerror or exc}{full}")
        return 2


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """tasktune's own warnings (TaskTuneWarning) as one line `tasktune CMD: warning: ...` on stderr; others as
    Python shows them."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TaskTuneWarning):
            _say(f"tasktune {command}: warning: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _say(message: str) -> None:
    """One line on stderr; a name that is not valid Unicode (a lone surrogate from a non-UTF-8 file name)
    is shown escaped, never a second error."""
    print(message.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
