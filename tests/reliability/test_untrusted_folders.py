"""Issue 21, class 1: nothing found in a folder tasktune writes into is trusted; no link is followed out of it.

`tasktune data` finishes an interrupted write from a marker and a staging folder it finds in the output folder:
a planted marker, a staging folder or staged file that is a symbolic link, or a marker that is a FIFO or a link,
must never move, delete or overwrite anything outside the output folder (exit 2, a message naming the marker).
The same for the training run folder (checkpoints/, eval/, the adapter files) and the save's staging sweep.
"""

from __future__ import annotations

import json
import os

import pytest

from reliability_util import run_cli, train_argv
from tasktune import files
from tasktune.datagen import fileset
from tasktune.errors import ConfigError
from tasktune.tuning.training import checkpoint as ckpt
from tasktune.tuning.model.save import STAGING_PREFIX, sweep_dead_staging

SPEC = "grid"


def data_argv(out):
    return ["data", SPEC, "--out", str(out), "--n", "1000", "--seed", "1", "--quiet"]


@pytest.fixture
def victim(tmp_path):
    """A folder outside the output folder with files named as tasktune's: none may move, change or vanish."""
    folder = tmp_path / "victim"
    folder.mkdir()
    for name in ("train.json", "dev.json", "stats.json", "dataset_info.json", "secret.txt"):
        (folder / name).write_text(f"victim {name}\n", encoding="utf-8")
    return folder


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def out(tmp_path):
    """An output folder holding a finished `tasktune data` set."""
    folder = tmp_path / "data"
    assert run_cli(data_argv(folder)) == 0
    return folder


def plant_marker(out, staging, names=("train.json", "dev.json", "stats.json")):
    (out / fileset.MARKER).write_text(json.dumps({"staging": staging, "files": list(names)}), encoding="utf-8")


def refused(argv, capsys, *needles):
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_marker_naming_a_sibling_staging_link_moves_nothing(out, victim, capsys):
    before = snapshot(out)
    link = out.parent / f".{out.name}.tasktune-aaaa0000"
    link.symlink_to(victim, target_is_directory=True)
    plant_marker(out, f"../{link.name}")
    refused(data_argv(out), capsys, str(out / fileset.MARKER), "symbolic link", "nothing was moved")
    assert snapshot(victim) == {n: f"victim {n}\n".encode() for n in snapshot(victim)}
    assert sorted(os.listdir(victim)) == ["dataset_info.json", "dev.json", "secret.txt", "stats.json", "train.json"]
    assert {k: v for k, v in snapshot(out).items() if k != fileset.MARKER} == before
    assert link.is_symlink()  # not followed, not removed


def test_a_marker_naming_an_inside_staging_link_moves_nothing(out, victim, capsys):
    link = out / ".tasktune-staging-bbbb1111"
    link.symlink_to(victim, target_is_directory=True)
    plant_marker(out, link.name)
    refused(data_argv(out), capsys, "symbolic link")
    assert len(os.listdir(victim)) == 5 and (victim / "train.json").read_text() == "victim train.json\n"


def test_staged_files_that_are_links_are_not_moved_in(out, victim, capsys):
    staging = out / ".tasktune-staging-cccc2222"
    staging.mkdir()
    (staging / "train.json").symlink_to(victim / "secret.txt")
    plant_marker(out, staging.name, ["train.json"])
    refused(data_argv(out), capsys, "train.json")
    assert not (out / "train.json").is_symlink()
    assert (victim / "secret.txt").read_text() == "victim secret.txt\n"


@pytest.mark.parametrize("kind", ["fifo", "link", "garbage", "wrong shape", "escaping path", "folder"])
def test_a_marker_that_is_not_ours_is_a_clear_error(out, victim, capsys, kind):
    marker = out / fileset.MARKER
    if kind == "fifo":
        os.mkfifo(marker)  # reading it would block forever
    elif kind == "link":
        (victim / "m.json").write_text(json.dumps({"staging": ".tasktune-staging-x", "files": []}))
        marker.symlink_to(victim / "m.json")
    elif kind == "garbage":
        marker.write_bytes(b"\xff\xfe not json")
    elif kind == "wrong shape":
        marker.write_text('["a", "b"]')
    elif kind == "escaping path":
        plant_marker(out, f"../../{victim.name}")
    else:
        marker.mkdir()
    refused(data_argv(out), capsys, str(marker))
    assert len(os.listdir(victim)) == (6 if kind == "link" else 5)


def test_a_genuine_interrupted_swap_is_still_finished(out, tmp_path):
    staging = out / ".tasktune-staging-dddd3333"
    staging.mkdir()
    (staging / "train.json").write_text("from the interrupted run\n")
    plant_marker(out, staging.name, ["train.json", "dev.json"])  # dev.json had already moved in
    assert fileset.recover(out) is True
    assert (out / "train.json").read_text() == "from the interrupted run\n"
    assert not staging.exists() and not (out / fileset.MARKER).exists()


def test_output_files_that_are_links_are_replaced_not_written_through(out, victim):
    (out / "train.json").unlink()
    (out / "train.json").symlink_to(victim / "train.json")
    assert run_cli(data_argv(out)) == 0
    assert not (out / "train.json").is_symlink() and (out / "train.json").read_text().startswith("[")
    assert (victim / "train.json").read_text() == "victim train.json\n"


def test_a_swept_staging_link_is_not_followed(out, victim):
    (out.parent / f".{out.name}.tasktune-eeee4444").symlink_to(victim, target_is_directory=True)
    (out / ".tasktune-staging-ffff5555").symlink_to(victim, target_is_directory=True)
    assert run_cli(data_argv(out)) == 0
    assert len(os.listdir(victim)) == 5


def test_in_place_writes_do_not_follow_a_link(tmp_path, victim):
    (tmp_path / "f.json").symlink_to(victim / "secret.txt")
    with pytest.raises(OSError):
        files.write_text(tmp_path / "f.json", "x", atomic=False)
    assert (victim / "secret.txt").read_text() == "victim secret.txt\n"


# -- the training run folder -------------------------------------------------------------------------------

def test_a_checkpoints_link_is_refused_before_anything_is_deleted(tmp_path, victim, tiny_glm, train_data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2, 3):
        (victim / f"step-00000{step}").mkdir()
        (victim / f"step-00000{step}" / "keep.txt").write_text("mine")
    (run / ckpt.CHECKPOINT_DIR).symlink_to(victim, target_is_directory=True)
    refused(train_argv(tiny_glm, train_data, run, max_steps=2, save_total_limit=1), capsys,
            str(run / ckpt.CHECKPOINT_DIR), "symbolic link")
    assert all((victim / f"step-00000{s}" / "keep.txt").read_text() == "mine" for s in (1, 2, 3))


def test_an_adapter_file_link_in_the_run_folder_is_refused(tmp_path, victim, tiny_glm, train_data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_model.safetensors").symlink_to(victim / "secret.txt")
    refused(train_argv(tiny_glm, train_data, run, max_steps=2), capsys, "adapter_model.safetensors")
    assert (victim / "secret.txt").read_text() == "victim secret.txt\n"


def test_write_checkpoint_refuses_a_linked_checkpoints_folder(tmp_path, victim):
    (tmp_path / ckpt.CHECKPOINT_DIR).symlink_to(victim, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        ckpt.write_checkpoint(tmp_path, 1, save_adapter_fn=lambda folder: None, state={"step": 1}, keep=1)
    assert len(os.listdir(victim)) == 5


def test_the_eval_folder_must_not_be_a_link(tmp_path, victim):
    (tmp_path / "eval").symlink_to(victim, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        files.own_subdir(tmp_path, "eval")


def test_an_eval_folder_that_is_a_file_is_named_before_any_work(tmp_path):
    """mkdir's bare "File exists" came after the whole eval had generated."""
    (tmp_path / "eval").write_text("x")
    with pytest.raises(ConfigError, match="eval: exists but is not a folder"):
        files.own_subdir(tmp_path, "eval")


def test_the_save_staging_sweep_does_not_follow_links(tmp_path, victim):
    (tmp_path / f"{STAGING_PREFIX}999999999-x").symlink_to(victim, target_is_directory=True)
    assert sweep_dead_staging(tmp_path) == []
    assert len(os.listdir(victim)) == 5 and (tmp_path / f"{STAGING_PREFIX}999999999-x").is_symlink()
