"""tasktune.datagen.validate: every format's schema accepts good records and names the path of a bad one."""

import pytest

from tasktune.datagen.formats import FORMATS
from tasktune.datagen.validate import explain, format_schema, validate_records
from tasktune.errors import SpecError

META = {"step": "arguments", "template": "arguments/0", "slots": {"place": "济南", "n": 3}, "noise": [
    {"op": "mask", "start": 1, "end": 2, "before": "查", "after": "[MASK]", "at": 1}]}
GOOD = {
    "chatglm": {"content": "a", "summary": "b", "history": [["q", "a"]], "meta": META},
    "jsonl": {"content": "a", "summary": "b", "history": []},
    "alpaca": {"instruction": "a", "input": "", "output": "b", "history": [], "meta": META},
    "sharegpt": {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
    "classification": {"text": "a", "label": "人数检测", "meta": {**META, "label": True}},
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_good_records_pass(fmt):
    validate_records([GOOD[fmt]], fmt)
    assert explain(GOOD[fmt], fmt) == ""


@pytest.mark.parametrize("record, path", [
    ({"content": "", "summary": "b", "history": []}, "$.content"),
    ({"content": "a", "history": []}, "$"),
    ({"content": "a", "summary": "b"}, "$"),  # history is never absent: readers index it on every record
    ({"content": "a", "summary": "b", "history": [], "extra": 1}, "$"),
    ({"content": "a", "summary": "b", "history": [["only one"]]}, "$.history[0]"),
    ({"content": "a", "summary": "b", "history": [], "meta": {**META, "slots": {"place": ["list"]}}},
     "$.meta.slots.place"),
    ({"content": "a", "summary": "b", "history": [], "meta": {**META, "noise": [{"op": "swap"}]}}, "$.meta.noise[0]"),
    ({"content": "a", "summary": "b", "history": [], "meta": {**META, "template": "no-index"}}, "$.meta.template"),
])
def test_bad_records_name_the_path(record, path):
    with pytest.raises(SpecError) as err:
        validate_records([GOOD["chatglm"], record], "chatglm", "train: ")
    message = str(err.value)
    assert message.startswith("train: record 1 (chatglm)") and f"{path}:" in message


def test_schema_is_self_contained_for_fastjsonschema():
    assert "$ref" not in str(format_schema("chatglm"))


def test_unknown_format():
    with pytest.raises(SpecError, match="unknown output format"):
        format_schema("csv")
