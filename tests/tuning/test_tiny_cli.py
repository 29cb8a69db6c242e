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
