"""The environment variables `tasktune serve` reads are checked as its flags are (tasktune/envvars.py)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("value", ["abc", "nan", "0", "-1", "inf"])
def test_a_switch_interval_that_is_not_a_positive_number_is_refused_by_name(serve_runs, monkeypatch, capsys, value):
    """TASKTUNE_SWITCH_INTERVAL=abc was a ValueError traceback and =nan aborted the interpreter (take_gil)."""
    from tasktune.cli import main

    monkeypatch.setenv("TASKTUNE_SWITCH_INTERVAL", value)
    assert main(["serve", str(serve_runs["grid"]), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "TASKTUNE_SWITCH_INTERVAL" in err and "Traceback" not in err, err
