"""tasktune.datagen.formats: the ChatGLM record (with meta) and its conversion to the other layouts."""

import pytest

from tasktune.datagen.expand import Example
from tasktune.datagen.formats import convert, to_chatglm
from tasktune.errors import SpecError


def example(**kw):
    base = dict(step="arguments", template="arguments/3", prefix="步骤#拆分*语音#", utterance="查[MASK]南",
                suffix="", summary="地名为济南", slots={"place": "济南"}, arguments={"place": "济南"},
                answer_pattern="^地名为(?P<place>.+?)$",
                noise=[{"op": "mask", "start": 1, "end": 2, "before": "济", "after": "[MASK]", "at": 1}])
    base.update(kw)
    return Example(**base)


def test_chatglm_record_shifts_noise_spans_into_the_content():
    r = to_chatglm(example())
    assert r["content"] == "步骤#拆分*语音#查[MASK]南" and r["summary"] == "地名为济南" and r["history"] == []
    span = r["meta"]["noise"][0]
    assert (span["start"], span["end"], span["at"]) == (10, 11, 10)
    assert r["content"][span["at"]: span["at"] + len(span["after"])] == "[MASK]"
    assert r["meta"]["arguments"] == {"place": "济南"} and r["meta"]["answer_pattern"].startswith("^")
    assert list(r) == ["content", "summary", "history", "meta"]


@pytest.mark.parametrize("fmt", ["chatglm", "jsonl", "alpaca"])
def test_single_turn_records_carry_an_empty_history_in_every_format(fmt):
    plain = to_chatglm(example(arguments=None, answer_pattern=None, noise=[]))  # the fast path
    assert plain["history"] == [] and list(plain) == ["content", "summary", "history", "meta"]
    for record in (plain, to_chatglm(example()), {"content": "a", "summary": "b"}):  # (older records: no key)
        assert convert(record, fmt, meta=False)["history"] == []


def test_chain_record_has_history_and_chain():
    r = to_chatglm(example(history=[["步骤#问候*语音#你好", "您好"]], chain=("greet", "arguments")))
    assert list(r) == ["content", "summary", "history", "meta"] and r["meta"]["chain"] == ["greet", "arguments"]


def test_conversions():
    r = to_chatglm(example(history=[["q", "a"]]))
    assert convert(r, "alpaca") == {"instruction": r["content"], "input": "", "output": "地名为济南",
                                    "history": [["q", "a"]], "meta": r["meta"]}
    share = convert(r, "sharegpt", meta=False)
    assert share == {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                                       {"from": "human", "value": r["content"]}, {"from": "gpt", "value": "地名为济南"}]}
    assert convert(r, "jsonl", meta=False) == {"content": r["content"], "summary": "地名为济南", "history": [["q", "a"]]}


def test_classification_needs_label_steps():
    with pytest.raises(SpecError, match="declare `label:`"):
        convert(to_chatglm(example()), "classification")
    r = to_chatglm(example(label=True, arguments=None, summary="人数检测"))
    assert convert(r, "classification", meta=False) == {"text": r["content"], "label": "人数检测"}
