"""Streamed train/dev files (what keeps `tasktune data` at 1M records in bounded extra memory) are byte-identical
to the one-string serialisation, and a bad record found mid-stream leaves no file behind."""

from __future__ import annotations

import pytest

from tasktune.datagen import write
from tasktune.datagen.formats import convert
from tasktune.errors import SpecError


def _records(n: int) -> list[dict]:
    return [{"content": f"语音#查查{i}", "summary": f"好的{i}", "history": [["你好", "您好"]] if i % 3 == 0 else [],
             "meta": {"step": "s", "template": "s/0", "slots": {"i": i}, "noise": []}} for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 4, 5, 8, 9])
@pytest.mark.parametrize("fmt", ["chatglm", "jsonl", "alpaca", "sharegpt"])
def test_streamed_text_equals_serialize(monkeypatch, n, fmt):
    monkeypatch.setattr(write, "CHUNK", 4)  # cross chunk boundaries with few records
    records = _records(n)
    expected = write.serialize([convert(r, fmt, True) for r in records], fmt)
    assert "".join(write.stream_records(records, fmt, True, "train: ")) == expected


def test_a_bad_record_mid_stream_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(write, "CHUNK", 4)
    records = _records(10)
    records[7]["summary"] = 42  # fails the output schema, in the second chunk
    out = tmp_path / "out"
    with pytest.raises(SpecError, match=r"record 7 .*summary"):
        write.write_files(out, {"train.json": write.stream_records(records, "chatglm", True, "train: ")})
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["chatglm", "jsonl"])
def test_records_whose_meta_is_not_last_are_written_as_converted(fmt):
    records = [{"meta": r.pop("meta"), **r} if i % 2 else r for i, r in enumerate(_records(6))]
    expected = write.serialize([convert(r, fmt, True) for r in records], fmt)
    assert "".join(write.stream_records(records, fmt, True, "train: ")) == expected
