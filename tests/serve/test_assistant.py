"""tasktune.Assistant: two runs on one loaded base answer as eval does; one run answers the same through either
way of batching (engine or generate), a run of a non-prefix method answers through generate; the public API is
importable lazily."""

from __future__ import annotations

import pytest

import tasktune


def test_assistant_shares_one_base_and_answers_as_eval(serve_runs, serve_prompts, monkeypatch):
    from tasktune.tuning.model import load
    from tasktune.tuning.data import encode_prompts, format_prompt
    from tests.serve.test_engine import eval_answers

    loads = []
    real = load.load_model
    monkeypatch.setattr(load, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    with tasktune.Assistant.from_run(serve_runs["grid"], serve_runs["grid2"]) as bot:
        assert len(loads) == 1 and bot.runs == ["grid", "grid2"]
        got = {name: bot.answer(serve_prompts, run=name, max_new_tokens=12) for name in bot.runs}
        base = bot.answer(serve_prompts, base=True, max_new_tokens=12)
        tok = bot.bank.tokenizer
    ids = encode_prompts(tok, [format_prompt(tok, q, []) for q in serve_prompts], "auto")
    for name in ("grid", "grid2"):
        tuned, plain = eval_answers(serve_runs[name], ids, 12)
        assert got[name] == tuned and base == plain


def test_one_run_answers_the_same_through_the_engine_and_through_generate(serve_runs, serve_prompts):
    history = [[] for _ in serve_prompts]
    history[0] = [["步骤#问候*语音#你好", "您好"]]  # a dialogue turn before, framed as training framed it
    got = {}
    for batching in ("engine", "generate"):
        with tasktune.Assistant.from_run(serve_runs["grid"], batching=batching) as bot:
            assert bot.runs == ["grid"] and (bot.engine is not None) == (batching == "engine")
            got[batching] = (bot.answer(serve_prompts, history=history, max_new_tokens=12),
                             bot.answer(serve_prompts, base=True, max_new_tokens=12))
    assert got["engine"] == got["generate"]
    assert got["engine"][0] != got["engine"][1]  # the prefix changes the answers: the two paths are not both base


def test_a_non_prefix_run_answers_through_generate_and_the_engine_refuses_it(tmp_path_factory, serve_prompts):
    from tasktune.errors import ConfigError
    from tasktune.tuning.training.train import fit
    from tests.tuning.conftest import build_tiny_model_dir
    from tests.tuning.runs import fast_config, write_data

    root = tmp_path_factory.mktemp("bitfit")
    run = root / "run"
    fit(fast_config(build_tiny_model_dir(root / "model", "glm"), write_data(root / "data"), run, method="bitfit",
                    max_steps=2), log=lambda *_: None)
    with tasktune.Assistant.from_run(run) as bot:  # auto: one run -> generate
        answers = bot.answer(serve_prompts[:2], max_new_tokens=6)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with pytest.raises(ConfigError, match="prefix"):
        tasktune.Assistant.from_run(run, batching="engine")
    with pytest.raises(ConfigError, match="batching must be one of"):
        tasktune.Assistant.from_run(run, batching="fast")


def test_public_api_names():
    for name in ("generate_data", "train", "evaluate", "Assistant", "builtin_specs"):
        assert callable(getattr(tasktune, name))
    assert set(tasktune.builtin_specs()) >= {"grid", "smarthome"}
