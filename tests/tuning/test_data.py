"""tuning/data.py: loading records, prompt frames, label masking, truncation counts, collators, DataErrors."""

from __future__ import annotations

import copy
import json
import re

import pytest

from tasktune.errors import DataError
from tests.tuning.runs import with_bos_and_chat_template
from tasktune.tuning.data import (
    IGNORE_INDEX,
    DataConfig,
    encode_prompts,
    format_prompt,
    load_records,
    make_collator,
    tokenize_dataset,
)
from tasktune.tuning.tiny import train_tokenizer

GREET = "您好,我是电网大模型的语言核心,用于拆解执行行为库并向您汇报结果"
RECORDS = [
    {"content": "步骤#问候*语音#你好", "summary": GREET, "meta": {"step": "greet", "noise": []}},
    {
        "content": "步骤#理解并基于输入拆分函数参数*语音#尝试查济南的人数",
        "summary": "因为出现地名为济南, 所以函数一参数为济南; 因为出现人数要求, 所以函数二参数为人数检测",
        "meta": {"step": "arguments", "slots": {"place": "济南", "check": "人数检测"}},
    },
    {
        "content": "步骤#基于函数调用结果进行总结*工单查询#应到47人*目标检测#实到34人*任务类型#人数检测",
        "summary": "[人数检测] 应到47人, 实到34人, 有人缺勤",
        "history": [["步骤#问候*语音#你好", GREET]],
        "meta": {"step": "summary", "slots": {"expected": 47, "present": 34}, "chain": ["greet", "summary"]},
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [r[k] for r in RECORDS for k in ("content", "summary")]
    return train_tokenizer(texts + ["[Round 1]\n\n问：\n\n答：Human: Assistant: 0123456789"], vocab_size=400)


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS) + "\n", encoding="utf-8"
    )
    return tmp_path


# ------------------------------------------------------------------ load_records


def test_load_records_keeps_needed_columns_and_meta_as_json(data_dir):
    ds = load_records(data_dir, "train")
    assert sorted(ds.column_names) == ["content", "history", "meta", "summary"]
    assert ds["content"] == [r["content"] for r in RECORDS]
    assert ds["history"] == [[], [], [["步骤#问候*语音#你好", GREET]]]
    # meta keys differ per record: each comes back intact from its JSON string
    assert [json.loads(m) for m in ds["meta"]] == [r["meta"] for r in RECORDS]


def test_load_records_reads_jsonl_and_single_files(data_dir):
    assert load_records(data_dir, "dev")["summary"] == [r["summary"] for r in RECORDS]
    assert len(load_records(data_dir / "train.json", "ignored")) == 3


def test_load_records_custom_columns(tmp_path):
    rows = [{"q": "问题", "a": "回答", "turns": [["x", "y"]]}]
    (tmp_path / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    ds = load_records(tmp_path, "train", DataConfig(prompt_column="q", response_column="a", history_column="turns"))
    assert ds["q"] == ["问题"] and ds["turns"] == [[["x", "y"]]] and ds["meta"] == ["{}"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no train.json or train.jsonl"),
        ("[]", "no records"),
        ('[{"content": "x"}]', "no column 'summary'"),
        ('[{"content": 3, "summary": "y"}]', "column 'content' must be a string"),
        ('[{"content": "x", "summary": "y"}, {"content": "", "summary": ""}]', "record 1: column 'content' is empty"),
        ('[{"content": "x", "summary": " \\n"}]', "record 0: column 'summary' is empty"),
        ('[{"content": "x", "summary": "y", "history": [["only one"]]}]', "history must be a list"),
        ('{"content": "x"}', "expected a JSON array"),
        ('[{"content": "x",\n "summary": }]', ":2: invalid JSON"),
        # shapes that reached pyarrow, the tokenizer or eval's metrics (tracebacks, some after the whole eval)
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('[{"content": "a\\ud800b", "summary": "y"}]', "lone UTF-16 surrogate"),
        ('[{"content": "x", "summary": "y", "meta": ["x"]}]', "meta must be an object"),
        ('[{"content": "x", "summary": "y", "meta": {"step": ["s"]}}]', "meta.step must be a string"),
        ('[{"content": "x", "summary": "y", "meta": {"arguments": ["a"]}}]', "meta.arguments must be an object"),
        ('[{"content": "x", "summary": "y", "meta": {"answer_pattern": 5}}]', "meta.answer_pattern must be a string"),
    ],
)
def test_load_records_errors_name_file_and_problem(tmp_path, content, message):
    if content is not None:
        (tmp_path / "train.json").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_records(tmp_path, "train")
    assert str(tmp_path) in str(info.value)


ARGS = {"place": "济南", "check": "人数检测"}
GOOD = "^地名为(?P<place>.+?), 任务为(?P<check>.+?)$"


@pytest.mark.parametrize("meta, message", [
    ({"arguments": ARGS, "answer_pattern": "(unclosed"},
     r"record 1: meta.answer_pattern is not a valid regular expression \(missing \), unterminated subpattern at "
     r"position 0\): '\(unclosed'"),
    ({"arguments": ARGS}, r"record 1: meta.arguments \(place, check\) without meta.answer_pattern"),
    ({"arguments": ARGS, "answer_pattern": "^地名为(?P<place>.+?)$"},
     r"record 1: meta.answer_pattern has no group \(\?P<check>...\) for argument 'check'"),
    ({"answer_pattern": "[z-a]"}, r"record 1: meta.answer_pattern is not a valid regular expression \(bad character "
                                  r"range z-a"),
], ids=["uncompilable", "missing", "no group for an argument", "uncompilable without arguments"])
@pytest.mark.parametrize("split", ["train", "dev"])
def test_an_answer_pattern_that_cannot_score_is_refused_when_read(tmp_path, meta, message, split):
    """eval scored every argument of such a record wrong, exit 0 (metrics' _compile gave None); train read it too.
    Now the reader refuses it, for train and eval alike, naming file, record and field, with the regex error."""
    rows = [{"content": "a", "summary": "b", "meta": {"arguments": ARGS, "answer_pattern": GOOD}},
            {"content": "a", "summary": "b", "meta": meta}]
    (tmp_path / f"{split}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / f"{split}.json")) + ": " + message):
        load_records(tmp_path, split)


def test_patterns_tasktune_writes_still_load(tmp_path):
    """A group name written twice (renamed name__2 for scoring) and a pattern without arguments are fine."""
    rows = [{"content": "a", "summary": "b", "meta": {"arguments": {"place": "x"},
                                                       "answer_pattern": "^(?P<place>.+?)=(?P<place>.+?)$"}},
            {"content": "a", "summary": "b", "meta": {"answer_pattern": "^ok$"}},
            {"content": "a", "summary": "b", "meta": {"arguments": {}}}]
    (tmp_path / "dev.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    assert len(load_records(tmp_path, "dev")) == 3


def test_a_folder_with_both_formats_is_ambiguous(tmp_path):
    """`tasktune data` in one folder with --format chatglm then jsonl leaves both files; train read the older
    train.json silently while stats.json described the other set."""
    for name in ("train.json", "train.jsonl"):
        (tmp_path / name).write_text('[{"content": "a", "summary": "b"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"holds both train.json and train.jsonl .*the newer is"):
        load_records(tmp_path, "train")
    assert len(load_records(tmp_path / "train.json", "train")) == 1  # the file itself is taken


def test_load_records_missing_file_and_bad_jsonl_line(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        load_records(tmp_path / "nope.json", "train")
    (tmp_path / "train.jsonl").write_text('{"content": "a", "summary": "b"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.jsonl:2: invalid JSON"):
        load_records(tmp_path, "train")


# ------------------------------------------------------------------ format_prompt


def test_chatglm_frame_with_history(tokenizer):
    prompt = format_prompt(tokenizer, "问题三", [["问题一", "回答一"], ["问题二", "回答二"]])
    assert prompt == (
        "[Round 1]\n\n问：问题一\n\n答：回答一\n\n"
        "[Round 2]\n\n问：问题二\n\n答：回答二\n\n"
        "[Round 3]\n\n问：问题三\n\n答："
    )
    assert format_prompt(tokenizer, "你好") == "[Round 1]\n\n问：你好\n\n答："


@pytest.mark.parametrize("content, history, parts", [
    ("a" * 200_000, [], "column 'content' 200,000"),
    ("a", [["q" * 60_000, "a" * 60_000]], "column 'content' 1, column 'history' 120,000"),
])
def test_a_record_too_long_to_frame_is_named_with_its_file_index_and_length(tmp_path, content, history, parts):
    """A 200,000-character content is over what any template renders; the error named only the template (and
    eval's did not even name the file or record). Now the reader refuses it, for train and eval alike, before
    a model loads, naming the record, its columns and their lengths."""
    rows = RECORDS[:2] + [{"content": content, "summary": "b", "history": history}]
    (tmp_path / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError) as refused:
        load_records(tmp_path, "train")
    message = str(refused.value)
    assert f"train.json: record 2: its prompt is {len(content) + 120_000 * bool(history):,} characters long " \
           f"({parts}): over the 100,000 characters a prompt template may build" in message
    assert "shorten the record or leave it out" in message and "prompt template /" not in message


def test_text_the_frame_takes_over_the_bound_is_named_as_too_long(tmp_path, tokenizer):
    """99,990 characters pass the reader, and the frame takes them over 100,000: still the text's length, with
    the template's refusal beside it."""
    rows = RECORDS[:2] + [{"content": "a" * 99_990, "summary": "b"}]
    (tmp_path / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"train.json: record 2: the prompt is 99,990 characters long \(query 99,990\)"
                                        r": with its frame \(prompt template .*chatglm.jinja: cannot render"):
        tokenize_dataset(load_records(tmp_path, "train"), tokenizer, DataConfig())


def test_many_short_turns_the_frame_takes_over_the_bound_are_named_as_such(tmp_path, tokenizer):
    """A seventh probe: 5,000 turns of 2 characters pass the reader (10,027 characters), and the frame's own text
    around each turn takes them over 100,000: the error was the template's bare refusal (`prompt template
    .../chatglm.jinja: cannot render (SecurityError: ...)`), as the server's was before the sixth probe."""
    rows = RECORDS[:2] + [{"content": "b", "summary": "b", "history": [["问", "答"]] * 5000}]
    (tmp_path / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError) as refused:
        tokenize_dataset(load_records(tmp_path, "train"), tokenizer, DataConfig())
    assert str(refused.value).startswith(
        f"{tmp_path / 'train.json'}: record 2: the prompt is 10,001 characters long (query 1, history 10,000): with "
        "the template's own text around each of its 5,001 turns it is over the 100,000 characters"), refused.value
    hostile = tmp_path / "big.jinja"  # a template too long by itself is still named, with or without history
    hostile.write_text("{{ 'x' * 99999 }}{{ 'y' * 99999 }}{{ query }}", encoding="utf-8")
    with pytest.raises(DataError, match="big.jinja: cannot render"):
        format_prompt(tokenizer, "q", [["a", "b"]], template=str(hostile))


def test_human_assistant_frame(tokenizer):
    assert format_prompt(tokenizer, "你好", template="human_assistant") == "Human: 你好\n\nAssistant: "
    assert format_prompt(tokenizer, "b", [["a", "x"]], template="human_assistant") == (
        "Human: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: "
    )


def test_custom_template_file_and_strict_undefined(tokenizer, tmp_path):
    good = tmp_path / "mine.jinja"
    good.write_text("Q={{ query }} n={{ history | length }}", encoding="utf-8")
    assert format_prompt(tokenizer, "hi", [["a", "b"]], template=str(good)) == "Q=hi n=1"
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ querry }}", encoding="utf-8")
    with pytest.raises(Exception, match="querry"):
        format_prompt(tokenizer, "hi", template=str(bad))
    with pytest.raises(DataError, match="prompt template"):
        format_prompt(tokenizer, "hi", template="alpaca")


def test_chat_template_wins_in_auto_mode(tokenizer):
    chat_tok = copy.deepcopy(tokenizer)
    chat_tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_prompt(chat_tok, "q2", [["q1", "a1"]]) == "<user>q1<assistant>a1<user>q2<assistant>"
    # an explicit Jinja frame still overrides the chat template
    assert format_prompt(chat_tok, "q", template="chatglm") == "[Round 1]\n\n问：q\n\n答："
    with pytest.raises(DataError, match="no chat template"):
        format_prompt(tokenizer, "q", template="chat")


# ------------------------------------------------------------------ tokenize_dataset


def test_labels_mask_exactly_the_prompt(data_dir, tokenizer):
    ds = load_records(data_dir, "train")
    cfg = DataConfig(max_source_length=512, max_target_length=512)
    tokenized, report = tokenize_dataset(ds, tokenizer, cfg)
    assert (report.total, report.source_truncated, report.target_truncated) == (3, 0, 0)
    for record, row in zip(RECORDS, tokenized):
        prompt = format_prompt(tokenizer, record["content"], record.get("history"))
        p_ids = tokenizer(prompt)["input_ids"]
        a_ids = tokenizer(record["summary"], add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == p_ids + a_ids + [tokenizer.eos_token_id]
        assert row["labels"] == [IGNORE_INDEX] * len(p_ids) + a_ids + [tokenizer.eos_token_id]
        assert tokenizer.decode(a_ids) == record["summary"]


def test_truncation_counts_and_kept_parts(data_dir, tokenizer):
    ds = load_records(data_dir, "train")
    lengths = [len(tokenizer(format_prompt(tokenizer, r["content"], r.get("history")))["input_ids"]) for r in RECORDS]
    answers = [len(tokenizer(r["summary"], add_special_tokens=False)["input_ids"]) for r in RECORDS]
    src, tgt = sorted(lengths)[1], sorted(answers)[1]  # the middle lengths: exactly one longer each
    tokenized, report = tokenize_dataset(ds, tokenizer, DataConfig(max_source_length=src, max_target_length=tgt))
    assert report.source_truncated == sum(n > src for n in lengths) == 1
    assert report.target_truncated == sum(n > tgt for n in answers) == 1
    longest = lengths.index(max(lengths))
    row = tokenized[longest]
    full = tokenizer(format_prompt(tokenizer, RECORDS[longest]["content"], RECORDS[longest].get("history")))
    assert row["input_ids"][:src] == full["input_ids"][-src:]  # the prompt keeps its end (query + 答：)
    assert row["labels"][:src] == [IGNORE_INDEX] * src
    assert all(len([t for t in r["labels"] if t != IGNORE_INDEX]) <= tgt + 1 for r in tokenized)
    assert "1 prompts truncated" in str(report)
    # what keeps every token is said (grid's whole-dialogue records lost tokens at the default 64, with no hint)
    assert str(report).endswith(f"(keeping every token takes --max-source-length {max(lengths)} and "
                                f"--max-target-length {max(answers)})")
    _, whole = tokenize_dataset(ds, tokenizer, DataConfig(max_source_length=max(lengths), max_target_length=tgt))
    assert str(whole).endswith(f"(keeping every token takes --max-target-length {max(answers)})")


def test_all_responses_or_prompts_too_long_is_an_error(data_dir, tokenizer):
    ds = load_records(data_dir, "train")
    with pytest.raises(DataError, match="every response in column 'summary'.*max_target_length=2") as info:
        tokenize_dataset(ds, tokenizer, DataConfig(max_target_length=2))
    assert "train.json" in str(info.value)
    with pytest.raises(DataError, match="every prompt in column 'content'"):
        tokenize_dataset(ds, tokenizer, DataConfig(max_source_length=3))


def test_tokenize_rejects_missing_columns_and_empty(data_dir, tokenizer):
    ds = load_records(data_dir, "train")
    with pytest.raises(DataError, match="no column 'instruction'"):
        tokenize_dataset(ds, tokenizer, DataConfig(prompt_column="instruction"))
    with pytest.raises(DataError, match="no records"):
        tokenize_dataset(ds.select([]), tokenizer, DataConfig())


# ------------------------------------------------------------------ collators and generation


def test_collator_pads_right_with_ignore_labels(tokenizer):
    collate = make_collator(tokenizer)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert make_collator(tokenizer, pad_to_multiple_of=4)([{"input_ids": [1], "labels": [1]}])["input_ids"].shape == (1, 4)


def test_prompt_ids_hold_one_bos_and_are_the_training_prompts(data_dir, tokenizer):
    tok = with_bos_and_chat_template(tokenizer)
    bos = tok.bos_token_id
    assert tok("q")["input_ids"][0] == bos  # the tokenizer adds bos to plain text
    chat_ids = encode_prompts(tok, [format_prompt(tok, r["content"], r.get("history")) for r in RECORDS])
    frame = [format_prompt(tok, r["content"], r.get("history"), template="chatglm") for r in RECORDS]
    frame_ids = encode_prompts(tok, frame, "chatglm")
    for ids in chat_ids + frame_ids:
        assert ids[0] == bos and ids.count(bos) == 1  # the chat template's bos, not a second one
    assert frame_ids == [tok(p)["input_ids"] for p in frame]
    rows, _ = tokenize_dataset(load_records(data_dir, "train"), tok, DataConfig(max_source_length=512,
                                                                                 max_target_length=512))
    for ids, row in zip(chat_ids, rows):  # what training put before the answer
        assert row["input_ids"][:len(ids)] == ids and row["labels"][:len(ids)] == [IGNORE_INDEX] * len(ids)


def test_the_data_columns_must_differ():
    """--prompt-column content --response-column content reached pyarrow (ArrowInvalid)."""
    with pytest.raises(DataError, match="--prompt-column content, --response-column content"):
        DataConfig(prompt_column="content", response_column="content")


def test_a_missing_prompt_template_file_is_named_as_the_flags_not_a_records(data_dir, tokenizer, tmp_path):
    """`--prompt-template /x/nosuch.jinja` said `train.json: record 0: prompt template ...: expected auto, chat, ...`:
    it blamed the first record and listed the names, when the file is what is missing."""
    missing = tmp_path / "nosuch.jinja"
    with pytest.raises(DataError) as err:
        tokenize_dataset(load_records(data_dir, "train"), tokenizer, DataConfig(prompt_template=str(missing)))
    assert str(err.value) == \
        f"prompt_template (--prompt-template): prompt template {str(missing)!r}: no such .jinja file"


@pytest.mark.parametrize("record, hint", [
    ({"instruction": "q", "input": "", "output": "a"}, "alpaca-shaped: add --prompt-column instruction "
                                                       "--response-column output"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt-shaped"),
    ({"text": "q", "label": "a"}, "--task classification"),
    ({"prompt": "q", "response": "a", "history": []}, "ChatGLM2-6B's ptuning layout: add --prompt-column prompt "
                                                     "--response-column response"),  # (a seventh probe)
])
def test_data_in_another_layout_says_how_to_train_on_it(tmp_path, tokenizer, record, hint):
    """`tasktune data --format alpaca` (or sharegpt, classification) then `tasktune train` on it said only `no
    column 'content' (has: ...)`: the flags that read it (or the format to write) were left to guess."""
    (tmp_path / "train.json").write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(DataError, match="no column 'content'") as err:
        tokenize_dataset(load_records(tmp_path, "train"), tokenizer, DataConfig())
    assert hint in str(err.value)


@pytest.mark.parametrize("extra, said", [
    ({"input": "在济南"}, "column 'input' holds text ('在济南') that would not be read: LLaMA-Factory's alpaca layout"),
    ({"system": "你是助手"}, "column 'system' holds text ('你是助手') that would not be read"),
])
def test_alpaca_prompt_text_outside_the_prompt_column_is_not_dropped(tmp_path, extra, said):
    """A seventh probe: an alpaca record's non-empty `input` (or `system`) was dropped without a word with
    --prompt-column instruction; the model trained on, and eval scored, the instruction alone."""
    records = [{"instruction": "查查人数", "input": "", "output": "好的", "history": []},
               {"instruction": "查查人数", "output": "好的", **extra}]
    (tmp_path / "train.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    config = DataConfig(prompt_column="instruction", response_column="output")
    with pytest.raises(DataError) as err:
        load_records(tmp_path, "train", config)
    assert str(err.value).startswith(f"{tmp_path / 'train.json'}: record 1: {said}"), err.value
    records[1].update({key: "" for key in extra})  # empty, as `tasktune data --format alpaca` writes: read
    (tmp_path / "train.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    assert len(load_records(tmp_path, "train", config)) == 2
