"""Helpers for the reliability tests: the `tasktune train` command line, in-process and as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = "adapter_model.safetensors"


def train_argv(model: Path, data: Path, out: Path, **flags) -> list[str]:
    """`train` arguments of a run that takes a few seconds on the tiny model (flags override, snake_case)."""
    values = dict(pre_seq_len=4, max_steps=8, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                  learning_rate=5e-2, save_steps=2, logging_steps=1, max_source_length=160, max_target_length=160,
                  quantization_bit="none", seed=7, prefix_dropout=0.1, save_total_limit=3)
    values.update(flags)
    from tasktune.tuning.config import unread_settings

    for name, _ in unread_settings(values.get("method", "ptuning-v2"), values.get("task", "causal-lm"),
                                   set(values) - set(flags)):
        del values[name]  # a default above the method does not read (given, it is refused)
    argv = ["train", "--model", str(model), "--data", str(data), "--out", str(out)]
    for key, value in values.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def run_cli(argv: list[str]) -> int:
    """`tasktune ARGV` in this process (same code path as the console script); returns the exit code."""
    from tasktune.cli import main

    return main(argv)


def spawn(argv: list[str], log: Path, *, script: str | None = None) -> subprocess.Popen:
    """`python -m tasktune ARGV` (or `python -c SCRIPT ARGV`) as a real process, output to `log`.

    SIGINT is reset to its default in the child: a shell without job control (CI) starts background
    jobs with SIGINT ignored, and Python would then never raise KeyboardInterrupt.
    """
    cmd = [sys.executable, "-c", script, *argv] if script else [sys.executable, "-m", "tasktune", *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    handle = open(log, "wb")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240.0) -> bool:
    """Poll `ready()` every 20 ms until it holds (True) or the process ends / time runs out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return True
        if proc.poll() is not None:
            return ready()
        time.sleep(0.02)
    return False


def prefix(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / ADAPTER))


def assert_same_prefix(a: Path, b: Path) -> None:
    ta, tb = prefix(a), prefix(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{key}: max |diff| {(ta[key] - tb[key]).abs().max().item()}"
