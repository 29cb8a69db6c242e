"""Checkpoints: atomic writes, retention, corruption and foreign-run detection."""

import random

import pytest
import torch

from tasktune.errors import ConfigError
from tasktune.tuning.training import checkpoint as ckpt


def _write(run, step, keep=2, fail=False):
    def save(folder):
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        if fail:
            raise RuntimeError("disk full")

    return ckpt.write_checkpoint(run, step, save_adapter_fn=save, state={"step": step, "rng": ckpt.rng_state()},
                                 keep=keep)


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path):
    _write(tmp_path, 2)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(tmp_path, 4, fail=True)
    dirs = ckpt.checkpoint_dirs(tmp_path)
    assert [d.name for d in dirs] == ["step-000002"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert ckpt.read_state(dirs[-1])["step"] == 2


def test_only_the_newest_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        _write(tmp_path, step, keep=2)
    assert [d.name for d in ckpt.checkpoint_dirs(tmp_path)] == ["step-000003", "step-000004"]


def test_truncated_state_names_the_file(tmp_path):
    folder = _write(tmp_path, 2)
    state = folder / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:40])
    with pytest.raises(ConfigError, match=r"training_state\.pt.*corrupted"):
        ckpt.read_state(folder)


def test_a_state_file_of_random_bytes_gives_one_line_without_torchs_advice(tmp_path):
    """torch's message for a file that is not a checkpoint advises `weights_only=False` (unsafe) and filing an
    issue, over several paragraphs; the error keeps its kind and first line, then says what to do."""
    folder = _write(tmp_path, 2)
    (folder / ckpt.STATE_FILE).write_bytes(bytes(range(7, 57)))
    with pytest.raises(ConfigError) as info:
        ckpt.read_state(folder)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message and "file an issue" not in message, message
    assert message.endswith(f"delete {folder} to resume from an older one")


def test_resume_after_the_data_changed_names_the_files(tmp_path):
    """A seventh probe: resuming after an edit of train.json printed the two dicts of sha256 prefixes."""
    ckpt.write_fingerprint(tmp_path, {"model": "a", "data": {"train.json": "aa", "dev.json": "bb"}})
    _write(tmp_path, 2)
    with pytest.raises(ConfigError) as err:
        ckpt.find_resume_point(tmp_path, "auto", {"model": "a", "data": {"train.json": "cc", "dev.jsonl": "bb"}})
    assert ("different run (the data (--data) has changed since the checkpoint was written: dev.json is gone, "
            "train.json changed, dev.jsonl is new). Use a new --out folder, or --resume never") in str(err.value)


def test_rng_state_round_trips():
    state = ckpt.rng_state()
    expected = (random.random(), torch.rand(3))
    ckpt.set_rng_state(state)
    again = (random.random(), torch.rand(3))
    assert expected[0] == again[0] and torch.equal(expected[1], again[1])


def test_resume_refuses_another_runs_checkpoint(tmp_path):
    ckpt.write_fingerprint(tmp_path, {"model": "a", "pre_seq_len": 8})
    _write(tmp_path, 2)
    with pytest.raises(ConfigError, match="different run.*pre_seq_len: checkpoint has 8, this run has 16"):
        ckpt.find_resume_point(tmp_path, "auto", {"model": "a", "pre_seq_len": 16})
    assert ckpt.find_resume_point(tmp_path, "auto", {"model": "a", "pre_seq_len": 8}).step == 2
    assert ckpt.find_resume_point(tmp_path, "never", {"model": "b"}) is None
