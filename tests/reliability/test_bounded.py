"""Issue 21, class 2: bounded resources in `tasktune data`. A pool "file" that is not a regular file (FIFO,
device) is refused, never read; a UTF-8 BOM is dropped; a run whose memory estimate exceeds half the machine's
memory is refused before any work, naming the estimate."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from reliability_util import run_cli
from tasktune import TEMPLATES
from tasktune.datagen import budget
from tasktune.datagen.spec import load_spec


@pytest.fixture
def spec_dir(tmp_path):
    folder = tmp_path / "grid"
    shutil.copytree(TEMPLATES / "grid", folder)
    return folder


def _run(argv, capsys):
    capsys.readouterr()
    code = run_cli(argv)
    return code, capsys.readouterr().err


def test_a_fifo_pool_file_is_refused_not_read(spec_dir, tmp_path, capsys):
    (spec_dir / "places.txt").unlink()
    os.mkfifo(spec_dir / "places.txt")  # opening it for reading would block until a writer came
    start = time.monotonic()
    code, err = _run(["data", str(spec_dir / "spec.yaml"), "--out", str(tmp_path / "out"), "--n", "1000"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"pool file {(spec_dir / 'places.txt').resolve()} is not a regular file" in err, err
    assert time.monotonic() - start < 30 and not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mknod of a device needs root")
def test_a_device_pool_file_is_refused(spec_dir, tmp_path, capsys):
    import stat

    (spec_dir / "places.txt").unlink()
    os.mknod(spec_dir / "places.txt", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: never ends
    code, err = _run(["data", str(spec_dir / "spec.yaml"), "--out", str(tmp_path / "out"), "--n", "1000"], capsys)
    assert code == 2 and "is not a regular file" in err, err


def test_a_pool_file_with_a_utf8_bom_loads_without_it(spec_dir):
    path = spec_dir / "places.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    spec = load_spec(spec_dir / "spec.yaml")
    values = next(slot for slot in spec.slots.values() if slot.name == "place").values
    assert not any(v.startswith("\ufeff") for v in values)


def test_a_run_too_large_for_the_machine_is_refused_up_front(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget, "total_memory", lambda: 2 * budget.GIB)
    start = time.monotonic()
    code, err = _run(["data", "grid", "--out", str(tmp_path / "out"), "--n", "1000000"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "--n 1,000,000: generating this set needs about 1.9 GiB" in err and "half of this machine's 2.0 GiB" in err
    assert time.monotonic() - start < 10 and not (tmp_path / "out").exists()


def test_a_billion_records_are_refused_on_any_machine(tmp_path, capsys):
    code, err = _run(["data", "grid", "--out", str(tmp_path / "out"), "--n", "1000000000"], capsys)
    assert code == 2 and "needs about 1676.6 GiB" in err, err


def test_the_estimate_follows_the_measured_peak():
    # benchmarks/RESULTS.md: 1,596 MiB measured at 1M records (grid, unique off): the estimate is not below it
    assert budget.estimate(1_000_000) >= 1_596 * 2**20
    assert budget.estimate(1_000_000) <= 2 * budget.GIB
