"""A seventh probe: an --out where nothing can be created is refused before the work, not after it (tiny-model
pre-trained for minutes, then failed on `/proc/.x.tmp-123: No such file or directory`)."""

from __future__ import annotations

import sys

import pytest

from reliability_util import run_cli

#: a place no process can create a folder in, root included (a read-only /proc)
NOWHERE = "/proc/tasktune-probe/out"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's /proc")
@pytest.mark.parametrize("argv, work", [
    (["tiny-model", "--spec", "grid", "--steps", "1", "--out", NOWHERE], "tasktune.tuning.tiny.build.generate_records"),
    (["data", "grid", "--out", NOWHERE], "tasktune.datagen.load_spec"),
    (["compare", "--model", "m", "--data", "d", "--methods", "bitfit", "--out", NOWHERE],
     "tasktune.tuning.evaluation.compare.compare"),
])
def test_an_out_nothing_can_be_created_in_is_refused_before_the_work(argv, work, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(work, no_work)
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "AssertionError" not in err, err
    assert f"--out {NOWHERE}: cannot create anything in /proc (" in err, err
