"""The NaN/inf guard through the CLI: the message names the step and the last good checkpoint; skip goes on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from reliability_util import prefix, run_cli, train_argv
from tasktune.tuning.training import checkpoint as ckpt


class _NanLossAt:
    """Make the loss of the N-th whole-model forward NaN (a bad batch / an overflow in that step)."""

    def __init__(self, *calls: int):
        self.at, self.calls = set(calls), 0

    def __call__(self, module, args, output):
        if type(module).__name__.endswith("ForCausalLM"):
            self.calls += 1
            if self.calls in self.at:
                # the loss if the model computed it, else the logits the trainer's answer-position loss reads
                if output.loss is not None:
                    output["loss"] = output.loss * float("nan")
                output["logits"] = output.logits * float("nan")
                return output


@pytest.fixture
def nan_at():
    hooks = []

    def install(*calls: int):
        hooks.append(torch.nn.modules.module.register_module_forward_hook(_NanLossAt(*calls)))

    yield install
    for hook in hooks:
        hook.remove()


def test_stop_names_the_step_and_the_last_good_checkpoint(tiny_glm, train_data, tmp_path, capsys, nan_at):
    out = tmp_path / "run"
    nan_at(5)  # forward 5 = the first micro-batch of step 3 (2 micro-batches a step)
    code = run_cli(train_argv(tiny_glm, train_data, out, max_steps=6, save_steps=2))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    good = ckpt.checkpoint_dirs(out)[-1]
    assert re.search(rf"loss became nan at step 3\b.*Last good checkpoint: {re.escape(str(good))}", err), err
    assert "--on-nan skip" in err
    assert good.name == "step-000002" and not (out / "tasktune_run.json").exists()
    assert all(torch.isfinite(t).all() for t in prefix(good).values())


def test_skip_goes_on_and_the_adapter_stays_finite(tiny_glm, train_data, tmp_path, capsys, nan_at):
    out = tmp_path / "run"
    nan_at(5)
    assert run_cli(train_argv(tiny_glm, train_data, out, max_steps=4, on_nan="skip")) == 0
    text = capsys.readouterr().out
    assert "step 3: non-finite loss nan; step skipped" in text
    assert all(torch.isfinite(t).all() for t in prefix(out).values())


def test_the_named_last_good_checkpoint_is_finite(tiny_glm, train_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    step = torch.optim.AdamW.step

    def step_to_inf(self, *args, **kwargs):  # an update that overflows (`--learning-rate inf` is refused now)
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    param.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_to_inf)
    code = run_cli(train_argv(tiny_glm, train_data, out, max_steps=4, save_steps=1, max_grad_norm=0))
    err = capsys.readouterr().err
    assert code == 2, err
    # step 1's update is already non-finite, so it stops there and no checkpoint is called good
    assert "made the trainable weights non-finite" in err and "Last good checkpoint: none yet" in err, err
    assert not ckpt.checkpoint_dirs(out), "a checkpoint with non-finite weights was written"
