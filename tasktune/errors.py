"""Errors that reach the user as one clear message (no traceback) from the CLI."""


class TaskTuneError(Exception):
    """Base: something the user can fix. The message names the file/line/field at fault."""


class SpecError(TaskTuneError):
    """A task spec, template or pool file is invalid."""


class DataError(TaskTuneError):
    """A data file (train.json/dev.json) is missing, empty or lacks the named columns."""


class ConfigError(TaskTuneError):
    """A training/eval option or run folder is invalid."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job) while work that saves on Ctrl-C runs: the same path, exit 143."""
