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


@pytest.mark.parametrize("batching", ["engine", "generate"])
def test_the_api_refuses_what_it_cannot_answer_and_a_closed_assistant(serve_runs, batching):
    """A string was answered one character at a time, a short history list dropped prompts (zip), 0 or NaN
    max_new_tokens fell back to the default, base="no" answered from the base, ids outside the vocabulary were an
    IndexError in the embedding; a closed engine-mode Assistant waited for ever."""
    from tasktune.errors import ConfigError, DataError

    bot = tasktune.Assistant.from_run(serve_runs["grid"], batching=batching)
    prompt = "步骤#问候*语音#你好"
    assert len(bot.answer([prompt, prompt], max_new_tokens=2)) == 2 and bot.answer([], max_new_tokens=2) == []
    for call, says in [
        (lambda: bot.answer(prompt), "prompts: expected a list of strings"),
        (lambda: bot.answer([prompt, None]), r"prompts\[1\]: expected a string"),
        (lambda: bot.answer(["a\udc80b"]), "lone UTF-16 surrogate"),
        (lambda: bot.answer([prompt, prompt], history=[[["a", "b"]]]), "history: expected a list of 2"),
        (lambda: bot.answer([prompt], history=[[["a"]]]), r"history\[0\]"),
        (lambda: bot.answer([prompt], max_new_tokens=0), "max_new_tokens"),
        (lambda: bot.answer([prompt], max_new_tokens=float("nan")), "max_new_tokens"),
        (lambda: bot.answer([prompt], base="no"), "base: expected True or False"),
        (lambda: bot.generate([[10**9]]), r"prompt_ids\[0\]: token ids"),
        (lambda: bot.generate([[]]), r"prompt_ids\[0\]: expected a non-empty"),
        (lambda: bot.generate([[1]], batch_size=0), "batch_size"),
    ]:
        with pytest.raises((ConfigError, DataError), match=says):
            call()
    bot.close()
    with pytest.raises(ConfigError, match="closed"):
        bot.answer([prompt], max_new_tokens=2)


def test_boolean_and_text_settings_take_only_their_kind(tmp_path):
    """allow_pickle="false" is a non-empty string, so it was true: pickle weights loaded and trained."""
    from pathlib import Path

    from tasktune.errors import ConfigError
    from tasktune.tuning.config import TrainConfig
    from tasktune.tuning.evaluation.eval import EvalConfig

    for field in ("allow_pickle", "trust_remote_code", "prefix_projection", "answer_logits", "allow_config_change"):
        with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}: expected true or false, got 'false'"):
            TrainConfig(out=str(tmp_path / "r"), **{field: "false"})
    for field, value in (("model", None), ("data", 5), ("out", b"x"), ("prompt_template", 5)):
        with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}: expected text"):
            TrainConfig(**{"out": str(tmp_path / "r"), field: value})
    with pytest.raises(ConfigError, match="NUL"):
        TrainConfig(out=str(tmp_path / "x\0y"))
    assert TrainConfig(out=tmp_path / "r", data=Path("d")).data == "d"  # a path is text
    assert TrainConfig(out=str(tmp_path / "r"), quantization_bit=4, bf16=True).quantization == 4  # choices: as before
    with pytest.raises(ConfigError, match="--data: expected text"):
        EvalConfig(run_dir="r", data=5)


def test_generate_data_and_train_check_their_arguments(tmp_path):
    """generate_data(seed=nan) wrote other data on every call (and "seed": NaN in stats.json); a dict for
    train()'s config failed deep inside; None or a NUL in a path were TypeError / ValueError."""
    from tasktune.errors import ConfigError

    for kwargs, says in [(dict(seed=float("nan")), "seed"), (dict(seed=-1), "seed"), (dict(seed="x"), "seed"),
                         (dict(n=float("nan")), "n"), (dict(n="10"), "n"), (dict(out=None), "out: expected a path"),
                         (dict(out="d\0x"), "out: expected a path")]:
        with pytest.raises(ConfigError, match=says):
            tasktune.generate_data("grid", **{"out": str(tmp_path / "d"), **kwargs})
    with pytest.raises(ConfigError, match="spec: expected a path"):
        tasktune.generate_data(None, str(tmp_path / "d"))
    with pytest.raises(ConfigError, match="expected a TrainConfig"):
        tasktune.train({"model": "m"})
    assert not (tmp_path / "d").exists()


def test_the_engine_fits_prompts_to_the_context_window_as_generate_does(small_window_run, serve_prompts):
    """The engine path cut prompts to max_source_length only: with a long answer asked, prefix + prompt + answer
    went past the base's window (garbage for RoPE, an index error for a learned position table); and a
    max_new_tokens over the window was not refused."""
    from tasktune.errors import ConfigError
    from tests.serve.conftest import SMALL_WINDOW

    got = {}
    for batching in ("engine", "generate"):
        with tasktune.Assistant.from_run(small_window_run, batching=batching) as bot:
            _, ids = bot.encode(serve_prompts[:2])
            with pytest.raises(ConfigError, match="leaves no room for a prompt"):
                bot.generate(ids, max_new_tokens=SMALL_WINDOW)
            shortest = min(len(row) for row in ids)
            got[batching] = bot.generate(ids, max_new_tokens=SMALL_WINDOW - bot.settings(None).pre_seq_len
                                         - shortest + 3)
    assert got["engine"][1] == got["generate"][1] == 2  # both prompts cut by 3+ tokens to fit
    assert got["engine"] == got["generate"]


@pytest.mark.parametrize("batching", ["engine", "generate"])
def test_from_run_names_runs_and_takes_the_clis_grants_as_keywords(serve_runs, serve_prompts, batching, monkeypatch):
    """Two runs of one folder name were refused with "name them apart with NAME=RUN_DIR", which from_run did not
    take ('run folder not found: b=runs/grid'); a base with its own code said "pass trust_remote_code=True", which
    from_run refused as an unknown keyword. Both are taken now, as the CLI takes them."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.inference import assistant

    seen = []
    real = assistant._LoadedRun.load
    monkeypatch.setattr(assistant._LoadedRun, "load", classmethod(
        lambda cls, run_dir, trust=assistant.Trust(): seen.append(trust) or real(run_dir, trust)))
    runs = [f"mine={serve_runs['grid']}"] + ([f"other={serve_runs['grid']}"] if batching == "engine" else [])
    with tasktune.Assistant.from_run(*runs, batching=batching, trust_remote_code=False, allow_pickle=True) as bot:
        assert bot.runs == ["mine", "other"][:len(runs)]
        assert bot.answer(serve_prompts[:1], run="mine", max_new_tokens=2)
    assert seen == ([assistant.Trust(pickle=True)] if batching == "generate" else [])
    with pytest.raises(ConfigError, match="not both"):
        tasktune.Assistant.from_run(serve_runs["grid"], trust_remote_code=True, trust=assistant.Trust())
    with pytest.raises(ConfigError, match="NAME=RUN_DIR with a name and a folder"):
        tasktune.Assistant.from_run("=runs/x")
