"""A run folder written by tasktune 0.1.0 (main at 5116104, before the package layout changed: tiny GLM base, 4
steps, checkpoints at 2 and 4) still evaluates and resumes: the run-folder format stays compatible."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "run-0.1.0"


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    root = tmp_path / "old"
    shutil.copytree(FIXTURE, root)
    monkeypatch.chdir(root)  # the record names its base and data relative to where it was trained
    return root


def test_an_old_run_folder_evaluates(old_run):
    from tasktune.cli import main

    assert main(["eval", "run", "--limit", "3", "--max-new-tokens", "8"]) == 0
    metrics = json.loads((old_run / "run" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["info"]["n"] == 3 and metrics["info"]["pre_seq_len"] == 4
    assert set(metrics["tuned"]) == {"overall", "per_step"}
    rows = [json.loads(line) for line in (old_run / "run" / "eval" / "predictions.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all("predict" in r for r in rows)


def test_an_old_run_folder_resumes_from_its_last_checkpoint(old_run):
    from tasktune.tuning.training.train import fit
    from tests.tuning.runs import fast_config

    result = fit(fast_config("model", "data", "run", max_steps=6, save_steps=2, pre_seq_len=4), log=lambda *_: None)
    record = json.loads((old_run / "run" / "tasktune_run.json").read_text(encoding="utf-8"))
    assert (old_run / "run" / "checkpoints" / "step-000006").is_dir()
    history = json.loads((old_run / "run" / "train_history.json").read_text(encoding="utf-8"))
    steps = [row["step"] for row in (history if isinstance(history, list) else history.get("history", []))]
    assert steps[:4] == [1, 2, 3, 4] and steps[-1] == 6  # steps 1-4 kept from 0.1.0, 5-6 trained now
    assert record["config"]["max_steps"] == 6 and result is not None


def test_the_run_owner_refuses_a_run_of_another_task_with_the_callers_words():
    """RunFolder.record(task=...) is the one check behind `tasktune serve`, `Assistant` and `--router`."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.run import RunFolder

    folder = RunFolder(FIXTURE / "run")
    assert folder.record(task="causal-lm", refusal="unused").task == "causal-lm"
    with pytest.raises(ConfigError) as err:
        folder.record(task="classification", refusal="--router {run}: not a classification run (task {task!r})")
    assert str(err.value) == f"--router {FIXTURE / 'run'}: not a classification run (task 'causal-lm')"


def test_a_file_given_as_a_run_folder_is_named_as_a_file(tmp_path):
    """`tasktune eval data/train.json` said "run folder not found" for a path that exists."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.run import RunFolder

    path = tmp_path / "train.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ConfigError, match="is a file, not a run folder"):
        RunFolder(path).check()
    with pytest.raises(ConfigError, match="run folder not found"):
        RunFolder(tmp_path / "missing").check()
