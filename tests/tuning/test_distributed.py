"""Data-parallel training on the CPU: torchrun, 2 processes, gloo (the CI stand-in for multi-GPU)."""

import json
import os
import subprocess
import sys

import pytest

from tests.tuning.runs import write_data


def _train_args(model, data, out, per_device):
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--pre-seq-len", "4",
            "--max-steps", "6", "--per-device-train-batch-size", str(per_device), "--gradient-accumulation-steps",
            "2", "--learning-rate", "0.1", "--save-steps", "3", "--logging-steps", "1", "--max-source-length",
            "160", "--max-target-length", "160", "--quantization-bit", "none", "--seed", "3"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_two_processes_match_one_at_equal_global_batch(tiny_model_dir, tmp_path):
    model, data = tiny_model_dir("glm"), write_data(tmp_path / "data")
    single = subprocess.run([sys.executable, "-m", "tasktune", *_train_args(model, data, tmp_path / "one", 4)],
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "-m", "tasktune",
                          *_train_args(model, data, tmp_path / "two", 2)],
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "train_history.json").read_text())
    two = json.loads((tmp_path / "two" / "train_history.json").read_text())
    assert [h["step"] for h in one] == [h["step"] for h in two]
    for a, b in zip(one, two):  # same batches; only the per-rank token weighting of the mean differs
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05), (one, two)
    # only rank 0 writes: one "done" line, one run record
    assert (ddp.stdout + ddp.stderr).count("done: 6 steps") == 1
    assert json.loads((tmp_path / "two" / "tasktune_run.json").read_text())["steps"] == 6
