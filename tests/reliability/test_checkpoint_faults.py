"""Damaged run folders through the CLI: exit code 2, one message naming the file, no traceback, no silent resume."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from reliability_util import ADAPTER, run_cli, train_argv
from tasktune.tuning.training import checkpoint as ckpt


@pytest.fixture(scope="module")
def finished(tiny_glm, train_data, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_cli(train_argv(tiny_glm, train_data, out, max_steps=4)) == 0
    return out


class _Evil:
    def __reduce__(self):  # unpickling would run this: weights_only loading must refuse it
        return (exec, ("open('PWNED', 'w').write('x')",))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _garbage(path):
    path.write_bytes(b"\x00\xff" * 50)


def _flip_a_bit(path):
    """One bit of the tensor data (after safetensors' 8-byte length and JSON header): still a valid file."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    load_file(str(path))  # readable: only the recorded sha256 can tell


def _malicious_pickle(path):
    path.write_bytes(pickle.dumps({"step": 4, "payload": _Evil()}))


DAMAGE = {
    "truncated training state": (ckpt.STATE_FILE, _truncate),
    "garbage training state": (ckpt.STATE_FILE, _garbage),
    "pickle that runs code": (ckpt.STATE_FILE, _malicious_pickle),
    "missing training state": (ckpt.STATE_FILE, lambda p: p.unlink()),
    "truncated adapter weights": (ADAPTER, _truncate),
    "empty adapter weights": (ADAPTER, lambda p: p.write_bytes(b"")),
    "garbage adapter weights": (ADAPTER, _garbage),
    "flipped bit in adapter weights": (ADAPTER, _flip_a_bit),
    "truncated adapter config": ("adapter_config.json", _truncate),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_checkpoint_gives_a_clear_error(finished, tiny_glm, train_data, tmp_path, capsys, monkeypatch, case):
    name, damage = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    target = ckpt.checkpoint_dirs(run)[-1] / name
    damage(target)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = run_cli(train_argv(tiny_glm, train_data, run, max_steps=6, allow_config_change="true"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(target) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()
    assert not (run / "checkpoints" / "step-000006").exists()  # nothing trained on from a bad checkpoint


def test_damaged_fingerprint_names_the_file(finished, tiny_glm, train_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _truncate(run / ckpt.FINGERPRINT_FILE)
    capsys.readouterr()
    code = run_cli(train_argv(tiny_glm, train_data, run, max_steps=6, allow_config_change="true"))
    err = capsys.readouterr().err
    assert code == 2 and str(run / ckpt.FINGERPRINT_FILE) in err, err


def test_resume_never_starts_over_despite_a_damaged_checkpoint(finished, tiny_glm, train_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _truncate(ckpt.checkpoint_dirs(run)[-1] / ckpt.STATE_FILE)
    assert run_cli(train_argv(tiny_glm, train_data, run, max_steps=2, resume="never")) == 0
    assert (run / "checkpoints" / "step-000002" / ckpt.STATE_FILE).is_file()


def test_resume_never_leaves_no_checkpoint_of_the_old_run(finished, tiny_glm, train_data, tmp_path, capsys):
    """`--resume never` in a used folder moves the old run's checkpoints aside; a plain re-run resumes the new run."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    capsys.readouterr()
    assert run_cli(train_argv(tiny_glm, train_data, run, max_steps=2, resume="never")) == 0
    out = capsys.readouterr().out
    assert [d.name for d in ckpt.checkpoint_dirs(run)] == ["step-000002"]
    [aside] = run.glob("checkpoints.replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["step-000002", "step-000004"]  # kept, out of the way
    assert [line for line in out.splitlines() if "moved the previous run's checkpoints" in line] == [
        f"starting over: moved the previous run's checkpoints to {aside}"]
    assert run_cli(train_argv(tiny_glm, train_data, run, max_steps=2)) == 0
    assert f"resuming from {run / 'checkpoints' / 'step-000002'} at step 2" in capsys.readouterr().out


def _eval(run, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = run_cli(["eval", str(run), "--limit", "2", "--max-new-tokens", "4"])
    return code, capsys.readouterr().err


def test_eval_of_a_run_with_damaged_adapter_names_the_file(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _truncate(run / ADAPTER)
    code, err = _eval(run, capsys)
    assert code == 2 and str(run / ADAPTER) in err and "Traceback" not in err, err


def test_a_flipped_bit_in_a_checkpoints_adapter_says_to_delete_it(finished, tiny_glm, train_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    newest = ckpt.checkpoint_dirs(run)[-1]
    _flip_a_bit(newest / ADAPTER)
    capsys.readouterr()
    code = run_cli(train_argv(tiny_glm, train_data, run, max_steps=6, allow_config_change="true"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{newest / ADAPTER}: its sha256 differs" in err and f"delete {newest} to resume" in err, err


def test_eval_of_a_run_with_a_flipped_bit_in_its_adapter_is_an_error(finished, tiny_glm, train_data, tmp_path,
                                                                    capsys):
    """Was a warning ('... loading it anyway'); now exit 2, and re-running train rewrites the adapter."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _flip_a_bit(run / ADAPTER)
    code, err = _eval(run, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"{run / ADAPTER}: its sha256 differs" in err and "re-run the same `tasktune train` command" in err, err
    assert not (run / "eval").exists()
    assert run_cli(train_argv(tiny_glm, train_data, run, max_steps=4)) == 0  # as the message says
    code, err = _eval(run, capsys)
    assert code == 0, err


STAGING = ".tasktune-save-"  # save_adapter's temporary folders (+ "<pid>-" since they are swept)


def _killed_mid_save(folder) -> str:
    """A process that dies (SIGKILL) inside a save, its staging folder half-written, as save_adapter names it."""
    script = ("import os, signal, sys, tempfile\n"
              "tmp = tempfile.mkdtemp(prefix=f'{sys.argv[1]}{os.getpid()}-', dir=sys.argv[2])\n"
              f"open(os.path.join(tmp, {ADAPTER!r}), 'wb').write(b'half')\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, STAGING, str(folder)])
    assert proc.returncode == -signal.SIGKILL
    [dead] = [p.name for p in folder.glob(STAGING + "*")]
    return dead


def test_a_killed_saves_temporary_folder_is_swept_by_the_next_save(finished, tiny_glm, train_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    dead = _killed_mid_save(run)
    older = run / f"{STAGING}k2j3h4q9"  # an older tasktune's name, without the pid
    older.mkdir()
    live = run / f"{STAGING}{os.getppid()}-abcd1234"  # a writer that is still running
    live.mkdir()
    assert run_cli(train_argv(tiny_glm, train_data, run, max_steps=4)) == 0  # resumes at 4, saves the adapter
    assert sorted(p.name for p in run.glob(STAGING + "*")) == [live.name], dead


def test_eval_of_a_run_with_damaged_record_names_the_file(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _truncate(run / "tasktune_run.json")
    code, err = _eval(run, capsys)
    assert code == 2 and str(run / "tasktune_run.json") in err, err


def test_a_dead_writes_temporary_folder_is_swept(tmp_path):
    """A process killed inside write_checkpoint leaves `.tmp-step-*`; the next write removes it."""
    dead = tmp_path / ckpt.CHECKPOINT_DIR / ".tmp-step-000004-abcd1234"
    dead.mkdir(parents=True)
    (dead / ADAPTER).write_bytes(b"half")
    ckpt.write_checkpoint(tmp_path, 6, save_adapter_fn=lambda folder: (folder / ADAPTER).write_bytes(b"w"),
                          state={"step": 6}, keep=2)
    assert [p.name for p in (tmp_path / ckpt.CHECKPOINT_DIR).iterdir()] == ["step-000006"]
