"""`tasktune tiny-model` on hostile input (an outside probe): each refusal comes before any work, as one line
naming the flags; SIGTERM cleans up like Ctrl-C."""

from __future__ import annotations

import pytest

from tasktune.errors import ConfigError
from tasktune.tuning.tiny import TinyConfig


@pytest.mark.parametrize("values, expected", [
    (dict(block_size=2), "tiny model: --block-size 2: expected >= 8"),
    (dict(hidden_size=7, num_heads=2),
     "tiny model: --hidden 7: must divide by --heads 2; --heads 2: must divide by --kv-heads 6 (the default)"),
    (dict(pretrain_steps=-1), "tiny model: --steps -1: expected >= 0"),
    (dict(copy_warmup_steps=-1), "tiny model: --copy-warmup-steps -1: expected >= 0"),
    (dict(batch_size=0), "tiny model: --batch-size 0: expected >= 1"),
    (dict(copy_batch_size=0), "tiny model: copy_batch_size 0: expected >= 1"),  # no flag: the API's field name
    (dict(round_docs=1.5), "tiny model: --round-docs 1.5: expected a share of the records, in [0, 1]"),
])
def test_config_errors_name_the_flag_and_its_value(values, expected):
    """Were "pretrain_steps, copy_warmup_steps >= 0, batch sizes >= 1, block_size >= 8 required" and "hidden_size 7
    must divide by num_heads 2, and num_heads by num_kv_heads 6": internal names, no flag, no default named."""
    with pytest.raises(ConfigError) as info:
        TinyConfig(**values)
    assert str(info.value) == expected


def test_block_size_from_the_command_line_is_refused_naming_the_flag(tmp_path, capsys):
    from tasktune.cli import main

    assert main(["tiny-model", "--out", str(tmp_path / "m"), "--block-size", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "tasktune tiny-model: error: tiny model: --block-size 2: expected >= 8\n"
    assert not (tmp_path / "m").exists()


def test_a_foreign_out_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """`--out nonempty` (unrelated files) trained first (over an hour with the defaults on a CPU), then refused."""
    from tasktune.cli import main
    from tasktune.tuning import tiny

    def no_work(*args, **kwargs):
        raise AssertionError("the build started")

    monkeypatch.setattr(tiny.build, "generate_records", no_work)
    out = tmp_path / "nonempty"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["tiny-model", "--out", str(out), "--steps", "1", "--copy-warmup-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a tiny model folder" in err and err.count("\n") == 1, err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# a build cut short by SIGTERM while it writes the folder (tasktune.files.settle: the last step before the rename)
SIGTERM_IN_THE_WRITE = """
import os, signal, sys
from tasktune import files
from tasktune.cli import main

def settle(path):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the write")

files.settle = settle
sys.exit(main(sys.argv[1:]))
"""
SMALL_ARGS = ["--steps", "1", "--copy-warmup-steps", "0", "--layers", "1", "--hidden", "16", "--heads", "2",
              "--kv-heads", "2", "--ffn", "16", "--n", "1000", "--vocab-size", "64", "--block-size", "32",
              "--batch-size", "2"]


def test_sigterm_during_the_final_write_removes_the_staging_folder_and_exits_143(tmp_path):
    """SIGTERM left `.OUT.tmp-PID/` for good (exit -15, no message); SIGINT was already clean (130)."""
    import subprocess
    import sys

    out = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_IN_THE_WRITE, "tiny-model", "--out", str(out), *SMALL_ARGS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.endswith("tasktune tiny-model: terminated (SIGTERM)\n") and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_staging_folders_of_dead_builds_are_cleared(tmp_path):
    """A build killed outright (SIGKILL) leaves `.OUT.tmp-PID/`; the next build into the same --out removes it (and
    puts back a `.OUT.old-PID/` it had moved aside), but never a live process's."""
    import os
    import subprocess
    import sys

    from tasktune.tuning.tiny import build_tiny_model
    from tasktune.tuning.tiny.build import _clear_stale
    from tests.tuning.test_tiny import DEV, SMALL, TRAIN

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: grid\n", encoding="utf-8")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "m"
    for name in (f".m.tmp-{dead.pid}", ".m.tmp-1", f".m.old-{dead.pid}", f".n.tmp-{dead.pid}"):
        (tmp_path / name).mkdir()
    (tmp_path / f".m.old-{dead.pid}" / "tiny_model.json").write_text("{}", encoding="utf-8")
    _clear_stale(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.tmp-1", f".n.tmp-{dead.pid}", "m", "spec.yaml"]
    assert (out / "tiny_model.json").read_text(encoding="utf-8") == "{}"  # the model a killed build was replacing
    (tmp_path / f".m.tmp-{dead.pid}").mkdir()
    build_tiny_model(spec, out, config=TinyConfig(**SMALL), pretrain_steps=0, records=(TRAIN, DEV), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.tmp-1", f".n.tmp-{dead.pid}", "m", "spec.yaml"]
    (tmp_path / f".m.tmp-{dead.pid}").mkdir()
    (tmp_path / f".m.old-{dead.pid}").mkdir()
    _clear_stale(out)  # `out` there: the old one goes
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.tmp-1", f".n.tmp-{dead.pid}", "m", "spec.yaml"]
    assert os.path.isdir(out)


def test_a_model_too_big_for_this_machine_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """`--hidden 65532 --layers 256` ended in a 36-line `DefaultCPUAllocator: can't allocate memory` traceback."""
    from tasktune.cli import main
    from tasktune.tuning import tiny

    def no_work(*args, **kwargs):
        raise AssertionError("the build started")

    monkeypatch.setattr(tiny.build, "generate_records", no_work)
    assert main(["tiny-model", "--out", str(tmp_path / "m"), "--hidden", "65532", "--layers", "256"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tasktune tiny-model: error: --hidden 65532 --layers 256 --ffn 512: ") and \
        err.count("\n") == 1, err
    assert "GiB of memory" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_an_allocation_failure_during_the_build_is_one_line_naming_the_flags(tmp_path, monkeypatch):
    """The safety net behind the estimate (activations, other processes): one ConfigError, not a traceback."""
    from tasktune.tuning import tiny
    from tests.tuning.test_tiny import DEV, SMALL, TRAIN

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: grid\n", encoding="utf-8")

    def fail(message):
        def make_model(cfg, tokenizer):
            raise RuntimeError(message)
        return make_model

    monkeypatch.setattr(tiny.build, "make_model", fail("DefaultCPUAllocator: can't allocate memory: you tried to "
                                                       "allocate 17592186044416 bytes. Error code 12"))
    with pytest.raises(ConfigError, match=r"^--hidden 32 --layers 2 --ffn 64 --batch-size 4 --block-size 256: out of "
                                          r"memory building the model on cpu \(DefaultCPUAllocator"):
        tiny.build_tiny_model(spec, tmp_path / "m", config=TinyConfig(**SMALL), pretrain_steps=0,
                              records=(TRAIN, DEV), progress=False)
    monkeypatch.setattr(tiny.build, "make_model", fail("some other bug"))  # not an allocation: stays an error
    with pytest.raises(RuntimeError, match="some other bug"):
        tiny.build_tiny_model(spec, tmp_path / "m", config=TinyConfig(**SMALL), pretrain_steps=0,
                              records=(TRAIN, DEV), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("values", [{}, dict(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
                                             intermediate_size=64, tie_embeddings=False)])
def test_the_memory_estimate_counts_the_parameters_of_the_model_built(values):
    from tasktune.tuning.tiny import make_model
    from tasktune.tuning.tiny.model import parameter_count

    tokenizer = type("Tok", (), {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "__len__": lambda s: 777})()
    cfg = TinyConfig(**values)
    assert parameter_count(cfg, 777) == sum(p.numel() for p in make_model(cfg, tokenizer).parameters())


def test_the_step_counts_of_both_phases_are_said_up_front(tmp_path, monkeypatch, capsys):
    """`--steps 2` still ran the 600 copy warm-up steps first (minutes) without a word: --help and the first line
    now say that --copy-warmup-steps comes on top."""
    import argparse

    from tasktune.tuning import tiny
    from tests.tuning.test_tiny import DEV, SMALL, TRAIN

    parser = argparse.ArgumentParser()
    tiny.add_arguments(parser)
    steps = next(a for a in parser._actions if "--steps" in a.option_strings)
    assert "--copy-warmup-steps" in steps.help and f"default {TinyConfig.copy_warmup_steps}" in steps.help

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: grid\n", encoding="utf-8")
    said = []
    real = tiny.build.train_tokenizer
    monkeypatch.setattr(tiny.build, "train_tokenizer", lambda *a: said.append(capsys.readouterr().out) or real(*a))
    tiny.build_tiny_model(spec, tmp_path / "m", config=TinyConfig(**{**SMALL, "copy_warmup_steps": 3}),
                          pretrain_steps=2, records=(TRAIN, DEV), progress=False)
    assert said == ["tiny model: 3 copy warm-up steps (--copy-warmup-steps), then 2 LM steps on the domain text "
                    "(--steps), on cpu\n"]
