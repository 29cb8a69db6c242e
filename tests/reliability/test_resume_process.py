"""Exact resume across real process deaths: SIGKILL at a random point, Ctrl-C, a crash inside a checkpoint write.

Each killed run is resumed with the same command and must end with the same prefix tensors
(bitwise) as an uninterrupted run of that command. A real process costs ~15 CPU-seconds of imports,
so the default suite has one per fault; the slower variants are marked `slow`.
"""

from __future__ import annotations

import random
import signal
import time

import pytest
import torch

from reliability_util import assert_same_prefix, run_cli, spawn, train_argv, wait_until
from tasktune.tuning.training import checkpoint as ckpt


@pytest.fixture(scope="module")
def reference(tiny_glm, train_data, tmp_path_factory):
    """Uninterrupted runs, by prefix dropout (dropout draws from the RNG, so it tests RNG restore too)."""
    runs = {}

    def get(dropout: float):
        if dropout not in runs:
            out = tmp_path_factory.mktemp(f"reference-{dropout}")
            assert run_cli(train_argv(tiny_glm, train_data, out, prefix_dropout=dropout)) == 0
            runs[dropout] = out
        return runs[dropout]

    return get


def _steps(run) -> list[int]:
    return [int(d.name.split("-")[1]) for d in ckpt.checkpoint_dirs(run)]


def test_sigkill_at_a_random_step_then_resume_is_exact(tiny_glm, train_data, tmp_path, reference):
    rng = random.Random()  # a different kill point every run; printed on failure
    after_step = rng.choice([2, 4])
    delay = rng.uniform(0.0, 0.05)  # well under the 4 steps left after checkpoint 4: the kill lands mid-run
    out = tmp_path / "run"
    argv = train_argv(tiny_glm, train_data, out)
    proc = spawn(argv, tmp_path / "killed.log")
    try:
        assert wait_until(proc, lambda: after_step in _steps(out)), (tmp_path / "killed.log").read_text()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL, f"run ended before the kill (after step {after_step} + {delay:.2f}s)"
    finally:
        proc.kill()
    assert not (out / "tasktune_run.json").exists(), "the killed run must not have finished"
    killed_at = max(_steps(out))
    assert run_cli(argv) == 0  # the same command resumes
    assert_same_prefix(reference(0.1), out)
    print(f"killed after checkpoint {killed_at} (+{delay:.2f}s), resumed, equal")


def _interrupt(argv, out, log, delay=(0.3, 1.5), after_step=False):
    """Start `train ARGV`, send SIGINT at a random moment (`delay` seconds) once training runs (`after_step`: once
    its first step is done); the exit code."""
    proc = spawn(argv, log)
    ran = (lambda: "train: 1/" in log.read_text(errors="replace")) if after_step else \
        (lambda: (out / ckpt.FINGERPRINT_FILE).exists())
    try:
        assert wait_until(proc, ran), log.read_text()
        time.sleep(random.uniform(*delay))
        proc.send_signal(signal.SIGINT)
        return proc.wait(120)
    finally:
        proc.kill()


def test_ctrl_c_saves_the_interrupted_step_and_exits_130(tiny_glm, train_data, tmp_path):
    out = tmp_path / "run"
    # no periodic checkpoints: the only one is the one Ctrl-C writes
    argv = train_argv(tiny_glm, train_data, out, save_steps=1000, max_steps=1000)
    log = tmp_path / "interrupted.log"
    code = _interrupt(argv, out, log)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert code == 130, text
    assert "Traceback" not in text and "tasktune train: interrupted" in text
    dirs = ckpt.checkpoint_dirs(out)
    assert len(dirs) == 1, [d.name for d in dirs]
    state = ckpt.read_state(dirs[0])
    assert int(dirs[0].name.split("-")[1]) == state["step"] < 1000
    assert f"checkpoint saved to {dirs[0]}" in text and "run the same command again to resume" in text


@pytest.mark.slow
def test_ctrl_c_then_resume_is_exact(tiny_glm, train_data, tmp_path, reference):
    out = tmp_path / "run"
    argv = train_argv(tiny_glm, train_data, out, save_steps=1000, prefix_dropout=0.0)  # dropout: see below
    # 8 steps take ~0.2 s on a quiet machine (40 steps/s): a SIGINT 0.3-1.5 s after the start found the run
    # finished (exit -2); this one lands after the first step (one to save), within the next few
    code = _interrupt(argv, out, tmp_path / "interrupted.log", delay=(0.0, 0.05), after_step=True)
    assert code == 130 and len(ckpt.checkpoint_dirs(out)) == 1
    assert run_cli(argv) == 0
    assert_same_prefix(reference(0.0), out)


DIE_WHILE_SAVING = """
import os, signal, sys, torch
real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == 4:  # checkpoint 4: adapter written, state half written
        with open(f, "wb") as handle:
            handle.write(b"PK\\x03\\x04 half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
from tasktune.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a real process (~15 CPU-s); the unit versions run by default (tests/tuning/test_checkpoint.py,
# test_checkpoint_faults.py::test_a_dead_writes_temporary_folder_is_swept)
def test_crash_inside_a_checkpoint_write_keeps_the_previous_one(tiny_glm, train_data, tmp_path, reference):
    out = tmp_path / "run"
    argv = train_argv(tiny_glm, train_data, out)
    proc = spawn(argv, tmp_path / "crash.log", script=DIE_WHILE_SAVING)
    assert proc.wait(240) == -signal.SIGKILL, (tmp_path / "crash.log").read_text()
    assert _steps(out) == [2]  # checkpoint 4 never became visible
    leftovers = [p for p in (out / ckpt.CHECKPOINT_DIR).iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the crash should have happened inside the write"
    assert ckpt.read_state(ckpt.checkpoint_dirs(out)[-1])["step"] == 2
    assert run_cli(argv) == 0
    assert_same_prefix(reference(0.1), out)
    assert not [p for p in (out / ckpt.CHECKPOINT_DIR).iterdir() if p.name.startswith(".tmp-")], \
        "the next checkpoint write should sweep the dead write's temporary folder"


class _InterruptAtForward:
    """Raise KeyboardInterrupt (what Ctrl-C raises) before the N-th forward of the whole model."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, module, args):
        if type(module).__name__.endswith("ForCausalLM"):
            self.calls += 1
            if self.calls == self.n:
                raise KeyboardInterrupt


@pytest.mark.parametrize("forward", [
    pytest.param(5, marks=pytest.mark.slow),  # the first micro-batch of step 3: nothing of step 3 has run yet
    6,  # the second micro-batch of step 3: the RNG saved is the one step 3 began with
])
def test_ctrl_c_inside_a_step_resumes_exactly(tiny_glm, train_data, tmp_path, reference, forward):
    out = tmp_path / "run"
    argv = train_argv(tiny_glm, train_data, out)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(_InterruptAtForward(forward))
    try:
        assert run_cli(argv) == 130
    finally:
        hook.remove()
    assert _steps(out)[-1] == 2
    assert run_cli(argv) == 0
    assert_same_prefix(reference(0.1), out)
