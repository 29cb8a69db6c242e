"""tuning/tiny/: the tokenizer covers the grid text, the corpus never pairs prompt and answer,
pre-training lowers the loss, the builder writes a loadable model atomically."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from dataclasses import asdict

import pytest

import tasktune
from tasktune.errors import ConfigError, SpecError
from tasktune.tuning import tiny
from tasktune.tuning.tiny import RECORD_FILE, TinyConfig, build_corpus, build_tiny_model, make_model, pretrain, train_tokenizer

GREET = "您好,我是电网大模型的语言核心,用于拆解执行行为库并向您汇报结果"


def _record(content, summary, **slots):
    return {"content": content, "summary": summary, "meta": {"slots": slots}}


TRAIN = [
    _record("步骤#问候*语音#你好", GREET),
    _record("步骤#问候*语音#中午[MASK]", GREET),
    _record(
        "步骤#理解并基于输入拆分函数参数*语音#检测在邹城的电笔配备情况",
        "因为出现地名为邹城, 所以函数一参数为邹城; 因为出现设备要求, 所以函数二参数为设备检查",
        place="邹城", check="设备检查",
    ),
    _record(
        "步骤#理解并基于输入拆分函数参数*语音#尝试查济南的人数",
        "因为出现地名为济南, 所以函数一参数为济南; 因为出现人数要求, 所以函数二参数为人数检测",
        place="济南", check="人数检测",
    ),
    _record(
        "步骤#基于函数调用结果进行总结*工单查询#应到47人*目标检测#实到34人*任务类型#人数检测",
        "[人数检测] 应到47人, 实到34人, 有人缺勤",
        check="人数检测", scenario="absent",
    ),
]
DEV = [
    _record(
        "步骤#理解并基于输入拆分函数参数*语音#检查历城有没有设备异常",
        "因为出现地名为历城, 所以函数一参数为历城; 因为出现设备要求, 所以函数二参数为设备检查",
        place="历城", check="设备检查",
    ),
]
SMALL = dict(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, batch_size=4,
             copy_warmup_steps=0)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(TRAIN, DEV, ["name: grid\ndescription: power-grid site assistant"])


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus.tokenizer_text, 500, words=corpus.words)


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec" / "spec.yaml"
    path.parent.mkdir()
    path.write_text("name: grid\n", encoding="utf-8")
    (path.parent / "places.txt").write_text("邹城\n济南\n历城\n", encoding="utf-8")
    return path


def test_tokenizer_round_trips_grid_text_without_unk(tokenizer):
    from tasktune.tuning.data import format_prompt

    texts = [r[k] for r in TRAIN + DEV for k in ("content", "summary")]
    texts += [format_prompt(tokenizer, TRAIN[2]["content"], [[TRAIN[0]["content"], GREET]])]
    texts += ["Human: hello\n\nAssistant: name: grid"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text
    assert tokenizer.chat_template is None  # so the ChatGLM Jinja frame is used
    assert tokenizer.convert_tokens_to_ids("[MASK]") == tokenizer.mask_token_id
    assert "[MASK]" in tokenizer.convert_ids_to_tokens(tokenizer(TRAIN[1]["content"])["input_ids"])


def test_unseen_characters_fall_back_to_bytes(tokenizer):
    ids = tokenizer("龘", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == 3  # three UTF-8 bytes
    assert tokenizer.decode(ids) == "龘"


def test_slot_values_are_single_tokens_in_prompt_and_answer(tokenizer):
    # the place must be spelled by the same token ids in the question and in the answer, so it can be copied
    for record in TRAIN[2:4] + DEV:
        place = record["meta"]["slots"]["place"]
        place_ids = tokenizer(place, add_special_tokens=False)["input_ids"]
        assert len(place_ids) == 1
        for text in (record["content"], record["summary"]):
            assert place_ids[0] in tokenizer(text, add_special_tokens=False)["input_ids"]


def test_corpus_never_pairs_content_with_summary(corpus):
    texts = [text for text, _ in corpus.documents]
    for record in TRAIN:
        assert record["content"] in texts and record["summary"] in texts
        assert not any(record["content"] in t and record["summary"] in t for t in texts)
    framed = [(t, closed) for t, closed in corpus.documents if t.startswith("[Round 1]")]
    assert framed and all(t.endswith("答：") and not closed for t, closed in framed)  # no answer, no eos
    assert not any(r["content"] in t for r in DEV for t in texts)  # dev text only reaches the tokenizer
    assert corpus.words == ["人数检测", "历城", "济南", "设备检查", "邹城"]  # "absent" is not in any text


def test_copy_and_skill_documents_stay_unpaired():
    corpus = build_corpus(TRAIN, DEV, [], copy_docs=True, skill_docs=True, rng=random.Random(0))
    texts = [t for t, _ in corpus.documents]
    assert any(t.endswith("答：47 34") for t in texts)  # the numbers of the question
    assert any(t.endswith("答：邹城") for t in texts)  # the slot words it names
    assert any(t.endswith("答：" + TRAIN[3]["content"]) for t in texts)  # the question echoed
    copies = [t for t in texts if "\n" in t and not t.startswith("[Round")]
    assert len(copies) == len(TRAIN) and all(a == b for a, b in (t.split("\n") for t in copies))
    for record in TRAIN:
        assert not any(record["summary"] in t and record["content"] in t for t in texts)


def test_pretraining_lowers_the_loss_and_is_deterministic(corpus, tokenizer):
    import torch

    cfg = TinyConfig(**SMALL, pretrain_steps=25, warmup_steps=3, lr=1e-2)
    model = make_model(cfg, tokenizer)
    first = [t for t, _ in corpus.documents]
    batch = tokenizer(first[:4], add_special_tokens=False, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        before = model(**batch, labels=labels).loss.item()
    final = pretrain(model, tokenizer, corpus.documents, cfg, progress=False)
    with torch.no_grad():
        after = model(**batch, labels=labels).loss.item()
    assert after < before - 1.0 and final < before
    twin = make_model(cfg, tokenizer)
    assert pretrain(twin, tokenizer, corpus.documents, cfg, progress=False) == pytest.approx(final, rel=1e-4)


def test_build_writes_a_loadable_model_and_record(spec, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "models" / "tiny-glm"
    result = build_tiny_model(spec, out, seed=3, config=TinyConfig(**SMALL), pretrain_steps=2,
                              records=(TRAIN, DEV), progress=False)
    assert result == out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", RECORD_FILE} <= names
    record = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
    assert record["seed"] == 3 and record["pretrain_steps"] == 2 and record["spec"] == str(spec)
    assert len(record["spec_sha256"]) == 64 and record["parameters"] > 0 and record["final_loss"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "glm" and model.config.vocab_size == len(tok)
    assert model.config.num_key_value_heads == 2 and tok.chat_template is None
    assert tok.decode(tok("邹城的电笔")["input_ids"]) == "邹城的电笔"  # "邹城" comes from the spec's pool file too
    assert not list(out.parent.glob(".tiny-glm*"))  # no temp folders left behind


def test_a_failed_build_leaves_nothing(spec, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    out = tmp_path / "tiny"
    monkeypatch.setattr("tasktune.files.write_json", boom)  # the record, written last into the staging folder
    with pytest.raises(RuntimeError, match="disk full"):
        build_tiny_model(spec, out, config=TinyConfig(**SMALL), pretrain_steps=1, records=(TRAIN, DEV), progress=False)
    assert list(tmp_path.iterdir()) == [spec.parent]


def test_the_data_seed_picks_the_generator_run_and_the_seed_the_rest(spec, tmp_path, monkeypatch):
    asked = []

    def fake_generate(spec_path, seed, n):
        asked.append(seed)
        return TRAIN, DEV

    monkeypatch.setattr(tiny.build, "generate_records", fake_generate)
    build_tiny_model(spec, tmp_path / "a", seed=7, config=TinyConfig(**SMALL), pretrain_steps=0, progress=False)
    build_tiny_model(spec, tmp_path / "b", seed=7, config=TinyConfig(**SMALL, data_seed=42), pretrain_steps=0,
                     progress=False)
    assert asked == [7, 42]  # base seed 7 on the split of `tasktune data --seed 42`: none of its dev text trains
    record = json.loads((tmp_path / "b" / RECORD_FILE).read_text(encoding="utf-8"))
    assert (record["seed"], record["config"]["seed"], record["data_seed"]) == (7, 7, 42)
    assert json.loads((tmp_path / "a" / RECORD_FILE).read_text(encoding="utf-8"))["data_seed"] == 7


def test_build_refuses_foreign_folders_and_missing_spec(spec, tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a tiny model folder"):
        build_tiny_model(spec, foreign, config=TinyConfig(**SMALL), pretrain_steps=0, records=(TRAIN, DEV),
                         progress=False)
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me"
    with pytest.raises(SpecError, match="no such spec"):
        build_tiny_model(tmp_path / "nope.yaml", tmp_path / "m", records=(TRAIN, DEV))
    with pytest.raises(ConfigError, match="--hidden 30: must divide by --heads 4"):
        TinyConfig(hidden_size=30, num_heads=4)


def test_cli_arguments_reach_the_config(monkeypatch, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    tiny.add_arguments(parser)
    args = parser.parse_args(["--spec", "s.yaml", "--out", str(tmp_path / "m"), "--steps", "7", "--layers", "3",
                              "--hidden", "48", "--heads", "4", "--kv-heads", "2", "--lr", "0.01"])
    seen = {}
    monkeypatch.setattr(tiny.cli, "build_tiny_model", lambda spec, out, *, seed, config, device: seen.update(
        spec=spec, out=out, seed=seed, config=config, device=device) or out)
    assert tiny.run(args) == 0
    cfg = seen["config"]
    assert (cfg.pretrain_steps, cfg.num_layers, cfg.hidden_size, cfg.lr, seen["seed"]) == (7, 3, 48, 0.01, 42)
    assert (cfg.copy_docs, cfg.para_docs, cfg.skill_docs, cfg.tie_embeddings, cfg.copy_warmup_steps) == \
        (True, True, True, True, 600)
    assert (cfg.round_docs, cfg.block_size, cfg.answer_pairs, seen["device"]) == (0.3, 256, True, "cpu")
    assert cfg.data_seed is None
    args = parser.parse_args(["--no-copy-docs", "--no-tie-embeddings", "--copy-warmup-steps", "0", "--no-skill-docs",
                              "--round-docs", "0", "--no-answer-pairs", "--device", "cuda", "--seed", "7",
                              "--data-seed", "42"])
    tiny.run(args)
    cfg = seen["config"]
    assert (cfg.copy_docs, cfg.tie_embeddings, cfg.copy_warmup_steps, cfg.skill_docs) == (False, False, 0, False)
    assert (cfg.round_docs, cfg.answer_pairs, seen["device"]) == (0.0, False, "cuda")
    assert (seen["seed"], cfg.data_seed) == (7, 42)
    with pytest.raises(SystemExit):  # refused by the flag's range (tasktune/flags.py) before any work
        parser.parse_args(["--round-docs", "1.5"])
    with pytest.raises(ConfigError, match="--round-docs 1.5"):  # and by TinyConfig for API callers
        tiny.TinyConfig(round_docs=1.5)


def test_para_documents_pair_requests_with_the_same_slots_never_answers():
    twin = _record("步骤#理解并基于输入拆分函数参数*语音#告诉我邹城配备电笔检查结果",
                   TRAIN[2]["summary"], place="邹城", check="设备检查")
    corpus = build_corpus(TRAIN + [twin], DEV, [], para_docs=True, rng=random.Random(0))
    paras = [t for t, _ in corpus.documents if "\n" in t and not t.startswith("[Round")]
    assert sorted(paras) == sorted([f"{TRAIN[2]['content']}\n{twin['content']}",
                                    f"{twin['content']}\n{TRAIN[2]['content']}"])
    assert not any(r["summary"] in t for r in TRAIN for t in paras)


def test_build_runs_the_copy_warm_up_first(spec, tmp_path, monkeypatch):
    phases = []
    real = tiny.pretrain

    def spy(model, tokenizer, docs, cfg, progress=True, desc="pre-training tiny LM"):
        phases.append((desc, cfg.pretrain_steps, cfg.batch_size, len(docs)))
        return real(model, tokenizer, docs, cfg, progress, desc)

    monkeypatch.setattr(tiny.build, "pretrain", spy)
    cfg = TinyConfig(**{**SMALL, "copy_warmup_steps": 2}, copy_batch_size=8)
    out = build_tiny_model(spec, tmp_path / "m", config=cfg, pretrain_steps=1, records=(TRAIN, DEV), progress=False)
    assert [p[:3] for p in phases] == [("copy warm-up", 2, 8), ("pre-training tiny LM", 1, 4)]
    assert phases[0][3] == len(TRAIN)  # the copy strings alone: one per training record
    record = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
    assert record["copy_warmup_loss"] > 0 and record["config"]["tie_embeddings"] is True


def test_number_chunks_keep_a_number_one_token():
    corpus = build_corpus(TRAIN, DEV, [])
    digits = train_tokenizer(corpus.tokenizer_text, 500, words=corpus.words)
    chunks = train_tokenizer(corpus.tokenizer_text, 500, words=corpus.words, number_chunks=True)
    text = "[人数检测] 应到47人, 实到34人"
    assert {"47", "34"} <= set(chunks.tokenize(text))
    assert not {"47", "34"} & set(digits.tokenize(text)) and "4" in digits.tokenize(text)
    assert chunks.decode(chunks(text, add_special_tokens=False)["input_ids"]) == text
    parser = argparse.ArgumentParser()
    tiny.add_arguments(parser)
    assert parser.parse_args(["--number-chunks"]).number_chunks is True


def test_multi_round_documents_chain_reading_answers_never_task_answers():
    corpus = build_corpus(TRAIN, DEV, [], skill_docs=True, rng=random.Random(0), round_docs=1.0)
    rounds = [t for t, closed in corpus.documents if "[Round 2]" in t]
    assert len(rounds) == len(TRAIN) and all(t.startswith("[Round 1]\n\n问：") for t in rounds)
    for text in rounds:
        turns = text.split("\n\n答：")
        assert len(turns) in (3, 4)  # 2 or 3 rounds: each question followed by an answer
        answers = [turn.split("\n\n[Round")[0] for turn in turns[1:]]
        questions = [turn.split("问：")[-1] for turn in turns[:-1]]
        for question, answer in zip(questions, answers):  # a reading of its own question
            assert answer in tiny.reading_answers(question, corpus.words)
        assert not any(r["summary"] in text for r in TRAIN)
    assert not [t for t, _ in build_corpus(TRAIN, DEV, [], skill_docs=True, round_docs=0.0).documents
                if "[Round 2]" in t]


def test_compare_documents_answer_how_neighbouring_numbers_compare_never_the_task_answer():
    from tasktune.tuning.tiny.corpus import compare_answers

    frame = "步骤#基于函数调用结果进行总结*工单查询#应到47人*目标检测#实到34人*安全帽检测#34人佩戴*任务类型#安全检查"
    assert compare_answers(frame) == ["47与34: 大于\n34与34: 等于"]
    assert compare_answers("应到3人*实到12人") == ["3与12: 小于"]  # numbers, not strings ("3" > "12")
    assert compare_answers("查查济南的人数") == [] and compare_answers("实到5人") == []
    plain = build_corpus(TRAIN, DEV, [], skill_docs=True, rng=random.Random(0))
    compared = build_corpus(TRAIN, DEV, [], skill_docs=True, rng=random.Random(0), compare_docs=True)
    extra = set(compared.documents) - set(plain.documents)
    assert extra and all(": 大于" in t or ": 小于" in t or ": 等于" in t for t, _ in extra)
    assert not any(r["summary"] in t for t, _ in extra for r in TRAIN)


def test_length_batches_keep_every_row_and_group_similar_lengths():
    rng = random.Random(0)
    rows = [[1] * rng.randint(2, 200) for _ in range(203)]
    out = tiny.length_batches(rows, 8, random.Random(1), window=4)
    assert sorted(map(len, out)) == sorted(map(len, rows))  # same rows, reordered
    tail = [out[len(out) - 8 * (i + 1): len(out) - 8 * i] for i in range(len(out) // 8)]  # what pretrain pops
    padded = sum(8 * max(map(len, b)) for b in tail)
    shuffled = list(rows)
    random.Random(2).shuffle(shuffled)
    baseline = sum(8 * max(map(len, shuffled[i:i + 8])) for i in range(len(rows) % 8, len(rows), 8))
    assert padded < 0.7 * baseline  # far less padding than random batches
    assert tiny.length_batches(rows, 8, random.Random(1), window=4) == out  # deterministic for a seed


def test_a_cuda_build_without_cuda_is_a_clear_error(spec, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        build_tiny_model(spec, tmp_path / "m", config=TinyConfig(**SMALL), records=(TRAIN, DEV), progress=False,
                         device="cuda")
    assert not (tmp_path / "m").exists()


def test_answer_pairs_repeat_a_place_and_never_contradict_a_number():
    other_check = _record("步骤#理解并基于输入拆分函数参数*语音#开始检查邹城的安全状况",
                          "因为出现地名为邹城, 所以函数一参数为邹城; 因为出现安全要求, 所以函数二参数为安全检查",
                          place="邹城", check="安全检查")
    other_count = _record("步骤#基于函数调用结果进行总结*工单查询#应到20人*目标检测#实到20人*任务类型#人数检测",
                          "[人数检测] 应到20人, 实到20人, 无人缺勤, 正常出工", check="人数检测", scenario="full")
    records = [{**r, "meta": {**r["meta"], "step": step}} for r, step in
               zip(TRAIN + [other_check, other_count], ["greet"] * 2 + ["arguments"] * 2 + ["summary", "arguments",
                                                                                          "summary"])]
    corpus = build_corpus(records, DEV, [], answer_pairs=True, rng=random.Random(0))
    pairs = [t for t, _ in corpus.documents if "\n" in t and not t.startswith("[Round") and "步骤#" not in t]
    # the two 邹城 answers (one place, two check types) pair both ways; 济南 has no twin, and the two head-count
    # answers share their check type but not their numbers, so they do not pair
    assert sorted(pairs) == sorted([f"{TRAIN[2]['summary']}\n{other_check['summary']}",
                                    f"{other_check['summary']}\n{TRAIN[2]['summary']}"])
    assert pairs[0] not in [t for t, _ in build_corpus(records, DEV, [], rng=random.Random(0)).documents]


# ---- the shipped base (templates/demo/tiny-glm: what `make demo` trains on) ---------------------------------

SHIPPED = tasktune.TEMPLATES / "demo" / "tiny-glm"
SHIPPED_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json")


def test_the_shipped_base_is_the_default_build_of_todays_grid_spec():
    """The shipped base was built from the grid spec as it is now, with today's defaults, on a GPU (`make tiny-model`
    there): an edited spec or default needs a rebuild copied to templates/demo/tiny-glm (docs/tiny-model.md). Its
    rebuild is checked by metrics on a GPU (tests/gpu/test_shipped_base.py): GPU builds are not bit-identical."""
    record = json.loads((SHIPPED / RECORD_FILE).read_text(encoding="utf-8"))
    spec = tasktune.TEMPLATES / "grid" / "spec.yaml"
    assert record["spec_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest(), \
        f"{spec} changed since {SHIPPED} was built: rebuild it (docs/tiny-model.md, 'The shipped base')"
    assert record["seed"] == 42 and record["data_seed"] == 42 and record["device"] == "cuda"
    # options added after the build, at the value that leaves the build unchanged (recorded: what it was built with)
    config = {"number_docs": 0, **record["config"]}
    assert config.pop("data_seed") in (None, 42)  # None means the build seed (42): the same documents
    expected = {**asdict(TinyConfig()), "seed": 42}
    expected.pop("data_seed")
    assert config == expected  # the defaults, nothing else
    for name in SHIPPED_FILES:
        assert (SHIPPED / name).is_file(), name


def test_a_cpu_rebuild_gives_the_shipped_tokenizer_and_model_config(tmp_path):
    """The part of a rebuild any machine can check (seconds): `tasktune tiny-model --spec grid --seed 42` with
    no pre-training steps writes the shipped base's tokenizer byte for byte and its model configuration. The weights
    come from a GPU and are checked by metrics there (tests/gpu/test_shipped_base.py)."""
    from tests.gpu.test_shipped_base import assert_same_recipe

    config = TinyConfig(pretrain_steps=0, copy_warmup_steps=0)
    out = build_tiny_model("grid", tmp_path / "tiny-glm", seed=42, config=config, progress=False)
    assert_same_recipe(out, SHIPPED)


def test_number_documents_compare_random_pairs_in_the_records_range_and_name_no_task():
    corpus = build_corpus(TRAIN, DEV, [], rng=random.Random(0), number_docs=300)
    plain = build_corpus(TRAIN, DEV, [], rng=random.Random(0))
    numeric = [t for t, closed in corpus.documents if "与" in t and closed]
    assert len(corpus.documents) - len(plain.documents) == len(numeric) >= 290  # a few may repeat (deduplicated)
    top = max(int(n) for r in TRAIN for n in re.findall(r"\d+", r["content"] + r["summary"]))
    relations = {"大于": 0, "小于": 0, "等于": 0}
    for text in numeric:
        assert 4 <= len(text.split("\n")) <= 8 and "[Round" not in text
        for line in text.split("\n"):
            a, b, relation = re.fullmatch(r"(\d+)与(\d+): (\S+)", line).groups()
            a, b = int(a), int(b)
            assert 0 <= min(a, b) and max(a, b) <= top
            assert relation == ("大于" if a > b else "小于" if a < b else "等于")
            relations[relation] += 1
    assert min(relations.values()) > 0.25 * sum(relations.values())  # equal pairs as common as the others
    parser = argparse.ArgumentParser()
    tiny.add_arguments(parser)
    assert parser.parse_args(["--number-docs", "12"]).number_docs == 12


@pytest.mark.parametrize("out", ["", ".", "/", ".."])
def test_tiny_model_out_without_a_folder_name_is_refused_before_the_build(out, capsys):
    """`tasktune tiny-model --out ""` built the model, then failed with "PosixPath('.') has an empty name"."""
    from tasktune.cli import main

    assert main(["tiny-model", "--out", out, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "give the model folder a name" in err and "Traceback" not in err, err
