"""`tasktune eval`: base and tuned answers from one loaded model, report files, bad run folders."""

import json

import pytest

from tasktune.errors import ConfigError, DataError
from tests.tuning.runs import fast_config, write_data
from tasktune.tuning.evaluation.eval import EvalConfig, evaluate
from tasktune.tuning.training.train import fit


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    data = write_data(root / "data")
    run = root / "run"
    fit(fast_config(tiny_model_dir("glm"), data, run, max_steps=10, learning_rate=3e-1), log=lambda *_: None)
    return run


def test_eval_uses_one_model_for_base_and_tuned(trained_run, monkeypatch):
    from tasktune import tuning
    import tasktune.tuning.model.load

    loads = []
    real = tuning.model.load.load_model
    monkeypatch.setattr(tuning.model.load, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    out = evaluate(EvalConfig(run_dir=str(trained_run), max_new_tokens=8, batch_size=4), log=lambda *_: None)
    assert len(loads) == 1
    preds = [json.loads(line) for line in (trained_run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and {"prompt", "predict", "label", "base_predict"} <= set(preds[0])
    assert any(p["predict"] != p["base_predict"] for p in preds), "the adapter changed nothing"
    saved = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert saved["tuned"] == out["tuned"] and saved["base"] == out["base"]
    for name in ("report.md", "report.html"):
        assert (trained_run / "eval" / name).stat().st_size > 0


def test_base_pass_equals_the_plain_base_model(trained_run, tiny_model_dir):
    """The base answers are what the model gives with no adapter at all."""
    from tasktune.tuning.data import format_prompt
    from tasktune.tuning.model.generate import generate_batched
    from tasktune.tuning.model.load import load_model, load_tokenizer

    evaluate(EvalConfig(run_dir=str(trained_run), max_new_tokens=8, limit=3), log=lambda *_: None)
    preds = [json.loads(line) for line in (trained_run / "eval" / "predictions.jsonl").read_text().splitlines()]
    model_dir = tiny_model_dir("glm")
    tok = load_tokenizer(model_dir)
    prompts = [format_prompt(tok, json.loads((trained_run.parent / "data" / "dev.json").read_text())[i]["content"])
               for i in range(3)]
    plain, _ = generate_batched(load_model(model_dir), tok, prompts, max_new_tokens=8, progress=False)
    assert plain == [p["base_predict"] for p in preds]


def test_folder_without_adapter(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="no adapter"):
        evaluate(EvalConfig(run_dir=str(tmp_path / "run")))
    with pytest.raises(ConfigError, match="not found"):
        evaluate(EvalConfig(run_dir=str(tmp_path / "nope")))


def test_missing_dev_file(trained_run, tmp_path):
    (tmp_path / "only-train").mkdir()
    (tmp_path / "only-train" / "train.json").write_text("[]")
    with pytest.raises(DataError, match="dev"):
        evaluate(EvalConfig(run_dir=str(trained_run), data=str(tmp_path / "only-train")))


def test_prompts_longer_than_the_context_are_cut(trained_run, tiny_model_dir):
    from tasktune.tuning.model.generate import generate_batched
    from tasktune.tuning.model.load import load_model, load_tokenizer

    model_dir = tiny_model_dir("glm")
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    answers, cut = generate_batched(model, tok, ["你好" * 400, "你好"], max_new_tokens=4, progress=False)
    assert cut == 1 and len(answers) == 2


def test_eval_cuts_prompts_as_training_did(trained_run, monkeypatch):
    """A tuned model never saw more than max_source_length prompt tokens: eval keeps the same last tokens."""
    from tasktune import tuning
    import tasktune.tuning.model.generate
    from tasktune.tuning.run import RunFolder

    seen = []
    real = tuning.model.generate.generate_batched
    monkeypatch.setattr(tuning.model.generate, "generate_batched", lambda *a, **k: seen.append(k) or real(*a, **k))
    evaluate(EvalConfig(run_dir=str(trained_run), max_new_tokens=4, limit=2), log=lambda *_: None)
    limit = RunFolder(trained_run).record().config.max_source_length
    assert [k["max_prompt_tokens"] for k in seen] == [limit, limit]  # base pass and tuned pass


def test_eval_and_chat_feed_a_chat_template_prompt_with_one_bos(trained_run, monkeypatch):
    """With a tokenizer whose chat template writes bos and whose encoding adds one, generation gets the ids
    training saw: one bos (text re-encoded with special tokens would start with two)."""
    import io

    from tasktune import tuning
    import tasktune.tuning.model.load
    from tests.tuning.runs import with_bos_and_chat_template
    from tasktune.tuning.evaluation.chat import chat

    real_tok = tuning.model.load.load_tokenizer
    prompts = []  # the rows generate_batched pads for model.generate: what the model is fed

    def chat_tokenizer(*a, **k):
        tok = with_bos_and_chat_template(real_tok(*a, **k))
        real_pad = tok.pad

        def pad(features, **kw):
            prompts.extend(list(row) for row in features["input_ids"])
            return real_pad(features, **kw)

        tok.pad = pad
        return tok

    monkeypatch.setattr(tuning.model.load, "load_tokenizer", chat_tokenizer)
    evaluate(EvalConfig(run_dir=str(trained_run), max_new_tokens=2, limit=2), log=lambda *_: None)
    chat(trained_run, max_new_tokens=2, stdin=io.StringIO("你好\n"), stdout=io.StringIO())
    bos = real_tok(json.loads((trained_run / "tasktune_run.json").read_text())["config"]["model"]).bos_token_id
    assert len(prompts) == 5  # 2 base + 2 tuned + 1 chat turn
    for ids in prompts:
        assert ids[0] == bos and ids.count(bos) == 1, ids


def test_chat_cuts_its_growing_prompt_as_training_did(trained_run, monkeypatch):
    import io

    from tasktune import tuning
    import tasktune.tuning.model.generate
    from tasktune.tuning.evaluation.chat import chat
    from tasktune.tuning.run import RunFolder

    seen = []
    real = tuning.model.generate.generate_batched
    monkeypatch.setattr(tuning.model.generate, "generate_batched", lambda *a, **k: seen.append(k) or real(*a, **k))
    turns = chat(trained_run, max_new_tokens=4, stdin=io.StringIO("你好\n你是谁\n"), stdout=io.StringIO())
    limit = RunFolder(trained_run).record().config.max_source_length
    assert len(turns) == 2 and [k["max_prompt_tokens"] for k in seen] == [limit, limit]


def test_max_prompt_tokens_keeps_the_last_tokens(tiny_model_dir):
    import torch

    from tasktune.tuning.model.generate import generate_batched
    from tasktune.tuning.model.load import load_model, load_tokenizer

    model_dir = tiny_model_dir("glm")
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    widths = []
    real = model.generate
    model.generate = lambda **k: widths.append(k["input_ids"].shape[1]) or real(**k)
    prompt = "你好" * 40 + "步骤#问候"
    cut_answer, cut = generate_batched(model, tok, [prompt], max_new_tokens=4, progress=False, max_prompt_tokens=8)
    assert widths == [8] and cut == 0
    tail = tok(prompt)["input_ids"][-8:]
    out = real(input_ids=torch.tensor([tail]), max_new_tokens=4, do_sample=False,
               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert cut_answer == [tok.decode(out[0, 8:], skip_special_tokens=True).strip()]


def test_eval_says_when_the_data_or_base_differ_from_what_the_run_was_trained_on(trained_run, tiny_model_dir,
                                                                                  tmp_path):
    """A run evaluated from another working directory resolved its relative --data to other files, and a base
    folder changed since training was used as found: both silently (exit 0, the report overwritten)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    data, model = tmp_path / "data", tmp_path / "model"
    shutil.copytree(trained_run.parent / "data", data)
    shutil.copytree(tiny_model_dir("glm"), model)
    record = json.loads((run / "tasktune_run.json").read_text())
    record["config"].update(data=str(data), model=str(model))
    (run / "tasktune_run.json").write_text(json.dumps(record))
    said: list[str] = []
    evaluate(EvalConfig(run_dir=str(run), max_new_tokens=2, limit=2), log=said.append)
    assert not [line for line in said if line.startswith("warning")], said  # the same files: nothing to say
    dev = json.loads((data / "dev.json").read_text())
    (data / "dev.json").write_text(json.dumps(dev[:-1]))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "note": "edited"}))
    said.clear()
    evaluate(EvalConfig(run_dir=str(run), max_new_tokens=2, limit=2), log=said.append)
    warnings = [line for line in said if line.startswith("warning")]
    assert len(warnings) == 2 and "dev.json changed since" in warnings[0] and "base model" in warnings[1], said
