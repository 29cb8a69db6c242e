"""What training logs and eval writes, as the usual tools show it: the loss as the mean over the logging window
(HF Trainer's `logging_steps`), TensorBoard's usual tags, and predictions carrying the prompt the model saw."""

from __future__ import annotations

import json

import pytest

from tasktune.tuning.data import format_prompt
from tasktune.tuning.evaluation.eval import EvalConfig, evaluate
from tasktune.tuning.model.load import load_tokenizer
from tasktune.tuning.training.train import fit
from tests.tuning.runs import fast_config, write_data


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("logging")
    data = write_data(root / "data")
    model = tiny_model_dir("glm")
    every = fit(fast_config(model, data, root / "every", max_steps=6, logging_steps=1), log=lambda *_: None)
    windows = fit(fast_config(model, data, root / "windows", max_steps=6, logging_steps=4), log=lambda *_: None)
    return every, windows


def test_the_logged_loss_is_the_mean_over_the_logging_window(runs):
    every, windows = runs
    per_step = [h["loss"] for h in every.history]
    assert [h["step"] for h in windows.history] == [4, 6]  # every 4 steps, and the last step
    assert windows.history[0]["loss"] == pytest.approx(sum(per_step[:4]) / 4, abs=1e-5)
    assert windows.history[1]["loss"] == pytest.approx(sum(per_step[4:]) / 2, abs=1e-5)
    assert windows.final_loss == windows.history[-1]["loss"]
    record = json.loads((windows.run_dir / "tasktune_run.json").read_text())
    assert record["final_loss"] == windows.history[-1]["loss"]


def test_tensorboard_has_the_usual_tags(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, windows = runs
    events = EventAccumulator(str(windows.run_dir / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate"} <= tags and "train/lr" not in tags
    assert [e.step for e in events.Scalars("train/loss")] == [4, 6]
    assert events.Scalars("train/loss")[0].value == pytest.approx(windows.history[0]["loss"], abs=1e-5)


def test_predictions_carry_the_prompt_the_model_saw(runs, tiny_model_dir):
    every, _ = runs
    evaluate(EvalConfig(run_dir=str(every.run_dir), max_new_tokens=2, limit=3), log=lambda *_: None)
    preds = [json.loads(line) for line in (every.run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    dev = json.loads((every.run_dir.parent / "data" / "dev.json").read_text())[:3]
    tokenizer = load_tokenizer(str(tiny_model_dir("glm")))
    for pred, record in zip(preds, dev):
        assert pred["content"] == record["content"]
        assert pred["prompt"] == format_prompt(tokenizer, record["content"], record.get("history"))
        assert pred["prompt"] != pred["content"] and pred["prompt"].endswith("答：")
