"""What data, train and eval write gets the umask's modes (0o666/0o777 & ~umask), never mkstemp's 0600/0700:
a web server, another user or a container reads them as it reads any file the user makes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tasktune.tuning.evaluation.eval import EvalConfig, evaluate
from tasktune.tuning.training.train import fit
from tests.tuning.runs import fast_config

UMASK = 0o027  # not the usual 022, so a hard-coded 0644 would show


@pytest.fixture
def umask():
    old = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Mode of every file and folder under `root` (root itself as '.'), by relative path."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            out[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return out


def wrong_modes(root: Path, mask: int) -> dict[str, str]:
    want = {True: 0o777 & ~mask, False: 0o666 & ~mask}
    return {name: oct(m) for name, m in modes(root).items() if m != want[(root / name).is_dir()]}


def test_data_train_eval_outputs_get_the_umask_modes(tiny_model_dir, tmp_path, umask):
    import tasktune

    model = tiny_model_dir("glm")
    data = tmp_path / "data"
    tasktune.generate_data("smarthome", data, seed=3, n=200)
    assert wrong_modes(data, umask) == {}
    run = tmp_path / "run"
    fit(fast_config(model, data, run, max_steps=2, save_steps=1), log=lambda *_: None)
    evaluate(EvalConfig(run_dir=str(run), max_new_tokens=4, batch_size=8, limit=2), log=lambda *_: None)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tasktune_run.json", "loss.png",
                 "checkpoints", "eval/predictions.jsonl", "eval/report.html", "eval/metrics.json"):
        assert (run / name).exists(), name
    assert wrong_modes(run, umask) == {}
