"""tasktune.datagen.cli (`tasktune data`): files, byte-identical reruns, seed printing, errors without traceback.

Named test_datagen_cli.py (not test_cli.py) so that it cannot clash with tests/tuning/test_cli.py.
"""

import json
import re
import subprocess
import sys

import pytest

from datagen_testutil import MINI, write_spec
from tasktune.cli import main

FILES = ("train.json", "dev.json", "dataset_info.json", "stats.json")


def test_data_writes_all_files_and_prints_the_seed(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec")
    assert main(["data", str(spec), "--out", str(tmp_path / "out"), "--seed", "5"]) == 0
    captured = capsys.readouterr()
    assert "seed 5" in captured.err and "wrote" in captured.out and "arguments" in captured.out
    assert all((tmp_path / "out" / f).exists() for f in FILES)
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["seed"] == 5


def test_same_spec_and_seed_give_byte_identical_files(tmp_path):
    spec = write_spec(tmp_path / "spec")
    for out in ("a", "b", "c"):
        seed = "8" if out != "c" else "9"
        assert main(["data", str(spec), "--out", str(tmp_path / out), "--seed", seed, "--quiet"]) == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "c" / "train.json").read_bytes()


def test_determinism_across_processes(tmp_path):
    """Hash randomisation differs per process: output must not depend on it."""
    spec = write_spec(tmp_path / "spec")
    for out, hashseed in (("a", "1"), ("b", "2")):
        subprocess.run([sys.executable, "-m", "tasktune", "data", str(spec), "--out", str(tmp_path / out),
                        "--seed", "3", "--quiet"], check=True, env={"PYTHONHASHSEED": hashseed, "PATH": ""},
                       capture_output=True)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_n_format_and_no_meta(tmp_path):
    spec = write_spec(tmp_path / "spec")
    assert main(["data", str(spec), "--out", str(tmp_path / "o"), "--seed", "1", "--n", "30",
                 "--format", "alpaca", "--no-meta", "--quiet"]) == 0
    train = json.loads((tmp_path / "o" / "train.json").read_text())
    dev = json.loads((tmp_path / "o" / "dev.json").read_text())
    assert len(train) + len(dev) == 30 and all(set(r) <= {"instruction", "input", "output", "history"} for r in train)


def test_spec_seed_is_the_default(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec", MINI + "seed: 11\n")
    assert main(["data", str(spec), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "seed 11" in capsys.readouterr().err


BAD = [
    ("broken jinja", MINI.replace("查查{{ place }}的人数", "查查{{ place 的人数"), r"spec.yaml:\d+: .*broken Jinja"),
    ("undefined variable", MINI.replace("查查{{ place }}的人数", "查查{{ city }}的人数"), "undefined variable 'city'"),
    ("unknown slot", MINI.replace("fix: {check: 人数检测}", "fix: {task: 人数检测}"), "unknown slot 'task'"),
    ("empty pool", MINI.replace("[济南, 青岛, 烟台, 潍坊, 临沂, 德州]", "[]"), "empty pool"),
    ("invalid spec", MINI.replace("count: 3", "count: three"), r"\$\.steps\[0\]\.count"),
    ("impossible counts", MINI.replace("count: 12", "count: 99"), "impossible counts"),
    ("sandbox", MINI.replace("summary: 您好", "summary: \"{{ ''.__class__.__mro__ }}\""), "cannot render"),
]


@pytest.mark.parametrize("name, text, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, name, text, message):
    spec = write_spec(tmp_path / "spec", text)
    assert main(["data", str(spec), "--out", str(tmp_path / "out"), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "tasktune data: error:" in err and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["data", str(write_spec(tmp_path / "spec")), "--out", str(tmp_path / "file" / "out"), "--seed", "1"]) == 2
    assert "cannot create the output directory" in capsys.readouterr().err


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    for word in ("SPEC.yaml", "built-in", "--out", "--seed", "--format", "byte-identical", "noise", "dataset_info.json"):
        assert word in out


def test_rerun_into_a_folder_replaces_the_set_and_keeps_other_files(tmp_path):
    spec = write_spec(tmp_path / "spec")
    out = tmp_path / "out"
    assert main(["data", str(spec), "--out", str(out), "--seed", "5", "--quiet"]) == 0
    (out / "README.txt").write_text("mine", encoding="utf-8")
    assert main(["data", str(spec), "--out", str(out), "--seed", "6", "--quiet"]) == 0
    assert json.loads((out / "stats.json").read_text())["seed"] == 6 and (out / "README.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "README.txt"])
    assert not list(tmp_path.glob(".out.tasktune-*"))
