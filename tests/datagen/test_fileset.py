"""tasktune.datagen.fileset: the files of one `tasktune data` run replace the old set as a unit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasktune.datagen import fileset

ROOT = Path(__file__).resolve().parents[2]
OLD = {"train.json": "old train\n", "dev.json": "old dev\n", "stats.json": "old stats\n"}
NEW = {"train.json": "new train\n", "dev.json": "new dev\n", "stats.json": "new stats\n"}


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir())}


def leftovers(out: Path) -> list[Path]:
    """Staging folders, markers: anything a finished write must not leave."""
    return [*out.parent.glob(f".{out.name}.tasktune-*"), *out.glob(".tasktune-*")]


def failing(pieces: list[str], error: BaseException):
    yield from pieces
    raise error


def test_a_new_folder_appears_with_the_whole_set_in_one_rename(tmp_path, monkeypatch):
    out = tmp_path / "data"
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda src, dst: (renames.append((src, dst)), real_rename(src, dst))[1])
    monkeypatch.setattr(os, "replace", lambda *a: pytest.fail("no file-by-file moves into a new folder"))
    paths = fileset.write_set(out, dict(NEW))
    assert [p.name for p in paths] == list(NEW) and contents(out) == NEW
    assert len(renames) == 1 and Path(renames[0][1]) == out and not leftovers(out)
    probe = tmp_path / "probe"
    probe.mkdir()
    assert (out.stat().st_mode & 0o777) == (probe.stat().st_mode & 0o777)  # a usual folder, not mkdtemp's 0700


def test_failure_while_writing_leaves_the_old_set_and_other_files_intact(tmp_path):
    out = tmp_path / "data"
    fileset.write_set(out, dict(OLD))
    (out / "notes.txt").write_text("the user's", encoding="utf-8")
    files = {"train.json": "new train\n", "dev.json": failing(["new ", "dev"], OSError(28, "No space left on device")),
             "stats.json": "new stats\n"}
    with pytest.raises(OSError, match="No space left"):
        fileset.write_set(out, files)
    assert contents(out) == {**OLD, "notes.txt": "the user's"} and not leftovers(out)
    fileset.write_set(out, dict(NEW))  # other files stay; the set is replaced
    assert contents(out) == {**NEW, "notes.txt": "the user's"} and not leftovers(out)


def test_failure_while_writing_a_new_folder_leaves_nothing(tmp_path):
    out = tmp_path / "data"
    with pytest.raises(ValueError, match="bad record"):
        fileset.write_set(out, {"train.json": "x", "dev.json": failing(["y"], ValueError("bad record"))})
    assert not out.exists() and not leftovers(out)


def test_an_interrupted_move_is_detectable_and_recovered(tmp_path, monkeypatch):
    out = tmp_path / "data"
    fileset.write_set(out, dict(OLD))
    real_replace = os.replace
    moves = []

    def replace(src, dst):
        moves.append(Path(dst).name)
        if len(moves) == 3:  # the marker, train.json, then the process "dies" before dev.json
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        fileset.write_set(out, dict(NEW))
    monkeypatch.setattr(os, "replace", real_replace)
    marker = fileset.pending(out)
    assert marker is not None and marker["files"] == list(NEW)
    assert (out / "train.json").read_text() == "new train\n" and (out / "dev.json").read_text() == "old dev\n"
    assert fileset.recover(out) is True
    assert contents(out) == NEW and not leftovers(out) and fileset.pending(out) is None
    assert fileset.recover(out) is False


def test_a_run_killed_while_writing_leaves_the_old_set(tmp_path):
    """SIGKILL in the middle of writing dev.json: the old set is intact; the next run sweeps the staging folder."""
    out = tmp_path / "data"
    fileset.write_set(out, dict(OLD))
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from tasktune.datagen import fileset

        def slow_dev():
            yield "new dev, first half"
            Path({str(ready)!r}).write_text("1")
            time.sleep(60)
            yield "never written"

        fileset.write_set(Path({str(out)!r}), {{"train.json": "new train", "dev.json": slow_dev(), "stats.json": "s"}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert contents(out) == OLD and fileset.pending(out) is None
    assert len(list(tmp_path.glob(".data.tasktune-*"))) == 1  # the dead run's staging folder
    fileset.write_set(out, dict(NEW))
    assert contents(out) == NEW and not leftovers(out)


def test_staging_inside_the_folder_when_its_parent_is_not_writable(tmp_path, monkeypatch):
    out = tmp_path / "data"
    fileset.write_set(out, dict(OLD))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    staged = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (staged.append(Path(src).parent), real_replace(src, dst))[1])
    fileset.write_set(out, dict(NEW))
    assert contents(out) == NEW and not leftovers(out)
    assert all(p == out or p.parent == out and p.name.startswith(".tasktune-staging-") for p in staged)


def test_file_names_must_be_plain(tmp_path):
    for name in ("../x.json", "a/b.json", "", fileset.MARKER):
        with pytest.raises(ValueError, match="not a plain file name"):
            fileset.write_set(tmp_path / "out", {name: "x"})
    assert not (tmp_path / "out").exists()


def test_a_folder_in_the_way_fails_before_anything_moves(tmp_path):
    out = tmp_path / "data"
    fileset.write_set(out, dict(OLD))
    (out / "stats.json").unlink()
    (out / "stats.json").mkdir()
    with pytest.raises(IsADirectoryError):
        fileset.write_set(out, dict(NEW))
    assert (out / "train.json").read_text() == "old train\n" and fileset.pending(out) is None and not leftovers(out)


def test_a_second_write_into_the_same_folder_is_refused_naming_the_first(tmp_path):
    """Two `tasktune data` runs into one folder: the second swept the first's live staging folder, which then
    failed with 'cannot write output: No such file or directory'. Now the second is refused, naming the first
    (a lock file beside the folder, held with flock for the whole write, removed after)."""
    from tasktune.runlock import RunLocked, file_lock

    out = tmp_path / "out"
    with file_lock(tmp_path / fileset.lock_name(out), "data", out, "output folder"):
        refusal = rf"{out}: another `tasktune data` is using this output folder \(pid {os.getpid()}"
        with pytest.raises(RunLocked, match=refusal):
            fileset.write_set(out, {"a.txt": "x"})
        assert not out.exists()
    fileset.write_set(out, {"a.txt": "x"})
    assert (out / "a.txt").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
