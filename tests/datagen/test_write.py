"""tasktune.datagen.write: files and formats, LLaMA-Factory dataset_info, atomic writes, unwritable folders."""

import json
import os

import pytest

from tasktune.datagen import Splits, generate, write_splits
from tasktune.datagen import fileset
from tasktune.datagen.write import write_files
from datagen_testutil import write_spec
from tasktune.errors import SpecError


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return generate(write_spec(tmp_path_factory.mktemp("spec")), seed=2)


def test_chatglm_files(splits, tmp_path):
    paths = write_splits(splits, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["dataset_info.json", "dev.json", "stats.json", "train.json"]
    train = json.loads((tmp_path / "out" / "train.json").read_text(encoding="utf-8"))
    assert train == splits.train
    raw = (tmp_path / "out" / "train.json").read_text(encoding="utf-8")
    assert "步骤" in raw and "\\u" not in raw  # UTF-8, not ASCII escapes
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["mini_train"] == {"file_name": "train.json",
                                  "columns": {"prompt": "content", "response": "summary", "history": "history"}}
    assert not list((tmp_path / "out").glob(".*tmp"))


@pytest.mark.parametrize("fmt, name, key", [("jsonl", "train.jsonl", "content"), ("alpaca", "train.json", "instruction"),
                                            ("sharegpt", "train.json", "conversations")])
def test_other_formats(splits, tmp_path, fmt, name, key):
    write_splits(splits, tmp_path, fmt, meta=False)
    text = (tmp_path / name).read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else json.loads(text)
    assert len(records) == len(splits.train) and all(key in r and "meta" not in r for r in records)
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["mini_dev"]["file_name"] == name.replace("train", "dev")


def test_failure_while_moving_in_leaves_a_marker_and_the_next_run_finishes(splits, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_splits(splits, out)  # an old complete set
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # (1: the marker, 2: train.json, 3: dev.json)
            raise OSError(1, "Operation not permitted")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(SpecError, match="cannot write output: Operation not permitted"):
        write_splits(splits, out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert fileset.pending(out)["files"] == ["train.json", "dev.json", "dataset_info.json", "stats.json"]
    paths = write_splits(splits, out)  # finishes the interrupted moves, then writes its own set
    assert fileset.pending(out) is None and sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert not list(tmp_path.glob(".out.tasktune-*"))


def test_invalid_record_writes_nothing(tmp_path):
    bad = Splits(train=[{"content": "", "summary": "x"}], dev=[], stats={})
    with pytest.raises(SpecError, match=r"record 0 \(chatglm\) fails the output schema: \$\.content"):
        write_splits(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_write_files_replaces_existing_files_whole(tmp_path):
    (tmp_path / "a.json").write_text("old")
    write_files(tmp_path, {"a.json": "new", "b.json": "b"})
    assert (tmp_path / "a.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_unwritable_output_directory(splits, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpecError, match="cannot create the output directory"):
        write_splits(splits, blocker / "out")
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SpecError, match="not writable"):
            write_splits(splits, locked)


def test_a_folder_where_an_output_file_belongs_is_named(splits, tmp_path):
    """OUT/train.json as a folder: the error named OUT ("od1: cannot write output: Is a directory")."""
    out = tmp_path / "out"
    (out / "train.json").mkdir(parents=True)
    with pytest.raises(SpecError, match=rf"^{out / 'train.json'}: cannot write output: Is a directory"):
        write_splits(splits, out)


@pytest.mark.parametrize("fmt, name", [("jsonl", "train.jsonl"), ("chatglm", "train.json")])
def test_line_separators_in_a_text_are_written_escaped_one_record_a_line(tmp_path, fmt, name):
    """JSON keeps U+2028, U+2029 and NEL raw (ensure_ascii=False), and readers that split with str.splitlines()
    saw 50 lines for 35 records. They are written as \\u escapes now: the same values, one record a line."""
    texts = ["甲\u2028乙", "丙\u2029丁", "戊\x85己", "庚"]
    records = [{"content": t, "summary": t, "history": []} for t in texts]
    write_splits(Splits(train=records, dev=[], stats={}), tmp_path / "out", fmt, meta=False)
    text = (tmp_path / "out" / name).read_text(encoding="utf-8")
    assert not {"\u2028", "\u2029", "\x85"} & set(text)
    lines = text.splitlines()
    read = [json.loads(line) for line in lines] if fmt == "jsonl" else json.loads(text)
    assert [r["content"] for r in read] == texts
    assert len(lines) == len(texts) + (0 if fmt == "jsonl" else 2)  # (the array's brackets)
