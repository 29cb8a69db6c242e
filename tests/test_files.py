"""tasktune.files: atomic writes with the umask's modes, and the outputs of data/train/eval that use them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tasktune import files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_umask_is_read_without_changing_it(umask_027):
    assert files.umask() == 0o027 and files.file_mode() == 0o640 and files.dir_mode() == 0o750
    assert files.umask() == 0o027


@pytest.mark.parametrize("atomic", [True, False])
def test_writers_give_the_umask_mode_and_leave_no_temp(tmp_path, umask_027, atomic):
    files.write_bytes(tmp_path / "a.bin", b"\x00\x01", atomic=atomic)
    files.write_text(tmp_path / "b.txt", (piece for piece in ["问", "\n答"]), atomic=atomic)
    files.write_json(tmp_path / "c.json", {"k": "值", "p": Path("x")}, atomic=atomic)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "问\n答".encode()
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == '{\n  "k": "值",\n  "p": "x"\n}\n'
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {"a.bin": 0o640, "b.txt": 0o640, "c.json": 0o640}


def test_a_failing_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = files.write_text(tmp_path / "x.json", "old")

    def pieces():
        yield "new, half"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.write_text(path, pieces())
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_path_for_writers_that_take_a_path(tmp_path, umask_027):
    target = tmp_path / "w.safetensors"
    with files.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".safetensors" and tmp != target
        tmp.write_bytes(b"new")
        os.chmod(tmp, 0o600)  # as safetensors' save_file leaves it
        assert not target.exists()
    assert target.read_bytes() == b"new" and mode(target) == 0o640
    with pytest.raises(KeyboardInterrupt), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_stale_temps_names_a_killed_writers_file(tmp_path):
    path = tmp_path / "run.json"
    (tmp_path / ".run.json.0badcafe.tmp").write_text("{")
    (tmp_path / ".other.json.0badcafe.tmp").write_text("{")
    assert [p.name for p in files.stale_temps(path)] == [".run.json.0badcafe.tmp"]


def test_settle_gives_a_library_written_folder_the_usual_modes(tmp_path, umask_027):
    import tempfile

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "sub").mkdir(mode=0o700)
    (folder / "sub" / "w.bin").write_bytes(b"1")
    os.chmod(folder / "sub" / "w.bin", 0o600)
    files.settle(folder)
    assert (mode(folder), mode(folder / "sub"), mode(folder / "sub" / "w.bin")) == (0o750, 0o750, 0o640)
