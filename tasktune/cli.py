"""The `tasktune` console entry point: one parser, one subcommand per pipeline stage.

Subcommand modules expose `register(subparsers)`; they import heavy libraries (torch,
transformers) only inside their handlers, so `tasktune --help` and `tasktune data` stay fast.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import importlib
import os
import re
import sys
import warnings
from collections.abc import Iterator

from tasktune import __version__
from tasktune.errors import TaskTuneError, TaskTuneWarning, Terminated
from tasktune.libwrites import write_failure
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
    _standard_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    stdout = sys.stdout
    if stdout is not None:
        sys.stdout = _NamedStdout(stdout)
    try:
        with _warnings_as_lines(args.command):
            return _run(args)
    finally:
        sys.stdout = stdout


def _standard_streams() -> None:
    """Make the process's standard streams safe to use, whatever the environment left them as:

    - a closed descriptor 0, 1 or 2 (`tasktune data ... >&-`, `2>&-`, a daemon's launcher) is opened on
      /dev/null: else the next file tasktune opened took that number, and anything written to "stderr" below
      Python (a C library's message, a child process) went into that data file or checkpoint;
    - text that the output encoding cannot show (Chinese slot values and answers under LC_ALL=C with
      PYTHONUTF8=0, PYTHONIOENCODING=ascii or latin-1) is written escaped (`\\u5b89`) rather than failing
      with UnicodeEncodeError after the work was done."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number is taken first, so this is rare (0 open, 1 closed, ...)
                os.dup2(null, fd)
                os.close(null)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", None) in ("strict", "surrogateescape"):
            with contextlib.suppress(ValueError, OSError):  # a closed or detached stream: left as it is
                stream.reconfigure(errors=_ESCAPE)


_ESCAPE = "tasktune-escape"


def _escape(exc: UnicodeError) -> tuple[str | bytes, int]:
    """The error handler of stdout and stderr: a byte of a non-UTF-8 file name (a lone surrogate U+DC80-U+DCFF
    from the file system's decoding) is written as that byte, as "surrogateescape" writes it; any other
    character the encoding lacks as "backslashreplace" writes it (`\\u5b89`)."""
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start:exc.end]
        if all("\udc80" <= c <= "\udcff" for c in bad):
            return bytes(ord(c) - 0xDC00 for c in bad), exc.end
    return codecs.backslashreplace_errors(exc)


codecs.register_error(_ESCAPE, _escape)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except TaskTuneError as exc:
        _say(f"tasktune {args.command}: error: {exc}")
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: 130; SIGTERM (tasktune.runlock): 143, as SLURM/Kubernetes expect
        terminated = isinstance(exc, Terminated)
        _say(f"tasktune {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}")
        return 143 if terminated else 130
    except BrokenPipeError:  # `tasktune ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        return 141
    except OSError as exc:  # permission denied, a file where a folder belongs, a full disk: name the path
        _say(f"tasktune {args.command}: error: {_os_error(exc)}")
        return 2
    except Exception as exc:  # a library's own error for a full disk (torch.save, safetensors): as an OSError
        failed = write_failure(exc, None)  # writes tasktune knows of name their path (tasktune.libwrites)
        if failed is None or failed.errno not in (*_FULL, errno.EIO):
            raise
        _say(f"tasktune {args.command}: error: {_os_error(failed)}")
        return 2


def _os_error(exc: OSError) -> str:
    """An OSError as the user reads it: the path(s), the reason, and what to do for a full disk or a current
    folder that was deleted (`cd` into a folder removed since: every relative path failed with a bare
    "No such file or directory")."""
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    hint = " (the disk is full: free some space and run the same command again)" if exc.errno in _FULL else ""
    if not where and exc.errno == errno.ENOENT and _cwd_gone():
        where, hint = "the current folder", (" (it was deleted after you changed into it: cd to a folder that "
                                              "exists, or give absolute paths)")
    return f"{where + ': ' if where else ''}{exc.strerror or exc}{hint}"


def _cwd_gone() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


class _NamedStdout:
    """sys.stdout while a command runs: its write errors name it (`tasktune data ... >/dev/full`, or `> out.txt`
    on a full disk, read "error: No space left on device" with no word of where); all else is the stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        with self._named():
            return self._stream.write(text)

    def flush(self) -> None:
        with self._named():
            self._stream.flush()

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise type(exc)(exc.errno, exc.strerror or str(exc), "standard output") from exc

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


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


# control characters a path or value given by the user may hold: a newline split the "one line" (a path named
# `a<newline>b` read as two messages), an escape sequence recoloured or cleared the terminal. A newline followed
# by indentation is a message's own second line (a broken Jinja template's source line), kept.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]|\n(?! )")


def _say(message: str) -> None:
    """One line on stderr; a name that is not valid Unicode (a lone surrogate from a non-UTF-8 file name)
    is shown escaped, never a second error; control characters (a newline or an escape sequence in a path) are
    shown escaped (`\\n`, `\\x1b`)."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    message = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)
    if sys.stderr is not None:  # stderr closed at start (2>&-): nowhere to say it; the exit status still does
        print(message, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
