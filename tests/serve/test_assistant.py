"""tasktune.Assistant: two runs on one loaded base answer as eval does; the public API is importable lazily."""

from __future__ import annotations

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


def test_public_api_names():
    for name in ("generate_data", "train", "evaluate", "Assistant", "builtin_specs"):
        assert callable(getattr(tasktune, name))
    assert set(tasktune.builtin_specs()) >= {"grid", "smarthome"}
