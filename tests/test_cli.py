"""tasktune/cli.py: tasktune's own warnings reach the user as one line naming the command."""

from __future__ import annotations

import warnings

from tasktune.cli import _warnings_as_lines
from tasktune.errors import TaskTuneWarning


def test_own_warnings_are_one_line_naming_the_command_and_others_are_left_alone(capsys):
    """A compile cache that could not be written printed `.../compiling.py:460: RuntimeWarning: compile cache: ...`
    and then the source line of the call: noise the user can do nothing with. Third-party warnings keep Python's
    form (they are theirs to filter)."""
    others = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *rest: others.append((category, str(message)))
        before = warnings.showwarning
        with _warnings_as_lines("train"):
            warnings.warn("compile cache: could not write /x (Not a directory)", TaskTuneWarning, stacklevel=1)
            warnings.warn("a library's own", FutureWarning, stacklevel=1)
        assert warnings.showwarning is before  # put back
    assert capsys.readouterr().err == "tasktune train: warning: compile cache: could not write /x (Not a directory)\n"
    assert others == [(FutureWarning, "a library's own")]


def test_help_shows_each_default_and_no_default_of_none(capsys):
    """`tasktune tiny-model --help` showed no defaults at all; `tasktune compare --help` said "(default: None)"
    after its required --model and --data."""
    import pytest

    from tasktune.cli import main

    for command in ("tiny-model", "compare", "train"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert done.value.code == 0 and "(default: None)" not in text, command
        if command == "tiny-model":
            assert "--layers LAYERS transformer layers (default: 6)" in text
            assert "(default: models/tiny-glm)" in text
        if command == "compare":
            assert "(default: runs/compare)" in text
