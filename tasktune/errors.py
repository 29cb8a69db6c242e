"""Errors that reach the user as one clear message (no traceback) from the CLI."""


class TaskTuneError(Exception):
    """Base: something the user can fix. The message names the file/line/field at fault."""


class SpecError(TaskTuneError):
    """A task spec, template or pool file is invalid."""


class DataError(TaskTuneError):
    """A data file (train.json/dev.json) is missing, empty or lacks the named columns."""


class ConfigError(TaskTuneError):
    """A training/eval option or run folder is invalid."""


class TaskTuneWarning(RuntimeWarning, UserWarning):
    """Something the user should know that does not stop the work; the CLI prints it as one line `tasktune CMD:
    warning: ...` (Python's default showed `file.py:233: RuntimeWarning:` and the source line)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job) while work that saves on Ctrl-C runs: the same path, exit 143."""


def quoted(text: str) -> str:
    """User text (a name, a flag's value) as an error line quotes it: escapes shown, cut to 60 characters."""
    return repr(text) if len(text) <= 60 else f"{text[:60]!r}... ({len(text):,} characters)"
