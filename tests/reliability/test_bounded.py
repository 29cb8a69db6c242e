"""Issue 21, class 2: bounded resources in `tasktune data`. A pool "file" that is not a regular file (FIFO,
device) is refused, never read; a UTF-8 BOM is dropped; a run whose memory estimate exceeds half the machine's
memory is refused before any work, naming the estimate."""

from __future__ import annotations

import json
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


# -- small files found in run folders or named by flags: never a FIFO or a device ----------------------------

@pytest.fixture(scope="module")
def trained_run(tiny_glm, train_data, tmp_path_factory):
    from reliability_util import train_argv

    run = tmp_path_factory.mktemp("bounded-run") / "run"
    assert run_cli(train_argv(tiny_glm, train_data, run, max_steps=2, save_steps=2)) == 0
    return run


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["adapter_config.json", "tasktune_adapter.json", "tasktune_run.json"])
def test_a_run_file_that_is_a_fifo_is_refused_not_waited_for(trained_run, tmp_path, capsys, name):
    """`eval` and `chat` blocked forever on a FIFO in place of adapter_config.json or tasktune_adapter.json
    (Path.read_text): every small file is now read through tasktune.files.read_text_file."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / name).unlink()
    os.mkfifo(run / name)
    code, err = _run(["eval", str(run), "--limit", "1"], capsys)
    assert code == 2 and name in err and "Traceback" not in err, err


@pytest.mark.timeout(120)
def test_a_config_or_prompt_template_that_is_a_fifo_or_device_is_refused(tiny_glm, train_data, tmp_path, capsys):
    """--config FIFO said "file not found"; --config /dev/zero read until memory ran out."""
    from reliability_util import train_argv

    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    for config in (fifo, "/dev/zero"):
        code, err = _run(train_argv(tiny_glm, train_data, tmp_path / "r") + ["--config", str(config)], capsys)
        assert code == 2 and "not a regular file" in err and str(config) in err, err
    template = tmp_path / "frame.jinja"
    os.mkfifo(template)
    code, err = _run(train_argv(tiny_glm, train_data, tmp_path / "r") + ["--prompt-template", str(template)], capsys)
    assert code == 2 and "not a regular file" in err and str(template) in err, err


def test_eval_of_a_run_whose_recorded_data_is_not_found_from_here_says_so(trained_run, tmp_path, capsys):
    """Trained with a relative --data and evaluated from another folder: `data: no such data file`, which did not
    say the path came from the run's record (nor that --data gives another)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    record = json.loads((run / "tasktune_run.json").read_text(encoding="utf-8"))
    record["config"]["data"] = "data/grid-moved"
    (run / "tasktune_run.json").write_text(json.dumps(record), encoding="utf-8")
    code, err = _run(["eval", str(run), "--limit", "1"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert (f"{run}: the data it was trained on, data/grid-moved (from its tasktune_run.json, a path relative to "
            f"the folder training ran in), is not found from {os.getcwd()}: run eval from that folder, or give "
            "--data DIR") in err, err
