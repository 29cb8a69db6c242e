"""The base model's context window: prefix + prompt + answer must fit it (serve/service.py `Service.sampling`,
serve/window.py). The server decoded past it: on the tiny test base of 512 positions a request asked 900 tokens;
GPT-2's learned position table fails there (an index error: a 500 or a dead engine), RoPE models answer garbage."""

from __future__ import annotations

import contextlib
import io
import re

import openai
import pytest

from tests.serve.conftest import SMALL_WINDOW, LiveServer
from tests.serve.test_api import FRAMED

LONG = [{"role": "user", "content": "hello world, the quick brown fox jumps over the lazy dog " * 40}]
"""Far over the runs' max_source_length (160): the base model's prompt is cut to its last 160 tokens."""
CUT = 160
LEFT = SMALL_WINDOW - CUT  # what the window leaves the base model's answer after the cut prompt


def _server(run, *flags: str) -> LiveServer:
    """A server of the small-window run, `--max-tokens 1000`; its startup's stderr in `server.said`."""
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        server = LiveServer([f"small={run}", "--base-name", "tiny-base", "--max-tokens", "1000", *flags])
    server.said = said.getvalue()
    return server


@pytest.fixture(scope="module")
def small_server(small_window_run):
    server = _server(small_window_run)
    yield server
    server.stop()


def test_a_max_tokens_flag_over_the_window_is_lowered_with_one_warning(small_server):
    warnings = [line for line in small_server.said.splitlines() if "--max-tokens" in line]
    assert len(warnings) == 1 and f"context window of {SMALL_WINDOW} positions" in warnings[0], small_server.said
    assert f"at most {SMALL_WINDOW - 1} tokens" in warnings[0]
    assert small_server.service.limits.max_tokens == SMALL_WINDOW - 1
    with pytest.raises(openai.BadRequestError) as refused:  # the lowered flag is this server's limit now
        small_server.client().chat.completions.create(model="tiny-base", messages=LONG, max_tokens=SMALL_WINDOW)
    assert refused.value.code == "integer_above_max_value"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_prompt_and_max_tokens_over_the_window_are_a_400_naming_the_field(small_server, field, stream):
    """vLLM's check and message, OpenAI's code: the window, the prompt's tokens and the completion's, under the
    field the client sent; a stream is refused before it starts."""
    client = small_server.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny-base", messages=LONG, stream=stream, **{field: LEFT + 1})
    error = refused.value
    assert error.status_code == 400 and error.code == "context_length_exceeded" and error.param == field
    assert error.type == "invalid_request_error"
    assert (f"maximum context length is {SMALL_WINDOW} tokens. However, you requested {SMALL_WINDOW + 1} tokens "
            f"({CUT} in the messages, {LEFT + 1} in the completion)") in error.message, error.message
    assert "the prompt is too long" in error.message  # what LangChain matches (test_clients.py `overflow_by`)
    assert field in error.message.rsplit(".", 2)[-2]
    # a run's prefix takes positions too: its window is the base's less P (4)
    short = [{"role": "user", "content": FRAMED}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="small", messages=short, stream=stream,
                                       **{field: SMALL_WINDOW - 4})
    error = refused.value
    assert error.code == "context_length_exceeded" and error.param == field
    found = re.search(r"maximum context length is (\d+) tokens \(the base model's (\d+) positions less the 4 of "
                      r"its prefix\)\. However, you requested (\d+) tokens \((\d+) in the messages, (\d+) in the "
                      r"completion\)", error.message)
    assert found, error.message
    room, window, total, prompt, completion = map(int, found.groups())
    assert (room, window, completion) == (SMALL_WINDOW - 4, SMALL_WINDOW, SMALL_WINDOW - 4)
    assert total == prompt + completion and 0 < prompt < 100


def test_a_request_that_fills_the_window_is_answered(small_server):
    """prompt + max_tokens = the window exactly: the whole answer (end-of-sequence ignored)."""
    reply = small_server.client().chat.completions.create(model="tiny-base", messages=LONG, max_tokens=LEFT,
                                                          extra_body={"ignore_eos": True})
    assert reply.usage.prompt_tokens == CUT and reply.usage.completion_tokens == LEFT
    assert reply.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_without_a_limit_the_default_answer_is_cut_to_the_window(small_server, stream):
    """The base model's default answer (128 tokens) does not fit after a 160-token prompt: it is cut to what the
    window leaves (vLLM's default), never refused."""
    client = small_server.client()
    if stream:
        chunks = list(client.chat.completions.create(model="tiny-base", messages=LONG, stream=True,
                                                     stream_options={"include_usage": True},
                                                     extra_body={"ignore_eos": True}))
        usage, finish = chunks[-1].usage, [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        reply = client.chat.completions.create(model="tiny-base", messages=LONG, extra_body={"ignore_eos": True})
        usage, finish = reply.usage, reply.choices[0].finish_reason
    assert usage.prompt_tokens == CUT and usage.completion_tokens == LEFT and finish == "length"


def test_the_slots_hold_the_window_and_no_more(small_window_run, small_server):
    """--decode slots (the GPU's default; on the CPU here): a slot is as wide as the window (+ the one column the
    engine keeps spare), not max_source_length + --max-tokens; a request that fills the window fits it and answers
    as the dynamic batch does."""
    server = _server(small_window_run, "--decode", "slots")
    try:
        assert server.service.engine._slots.width == SMALL_WINDOW + 1
        ask = dict(model="tiny-base", messages=LONG, max_tokens=LEFT, extra_body={"ignore_eos": True})
        reply = server.client().chat.completions.create(**ask)
        assert reply.usage.completion_tokens == LEFT and reply.choices[0].finish_reason == "length"
        assert reply.choices[0].message.content == \
            small_server.client().chat.completions.create(**ask).choices[0].message.content
    finally:
        server.stop()


def test_a_follow_up_call_is_cut_to_what_its_prompt_leaves(small_server):
    """The server-side action loop's result step reuses the request's parameters (checked against the first call's
    prompt only): its longer prompt gets what the window leaves, not a call past the window."""
    from tasktune.serve.service import Turn
    from tasktune.tuning.inference.engine import SamplingParams

    service = small_server.service
    params = SamplingParams(max_new_tokens=100)
    assert service._fitted(Turn("small", "", [], ids=[5] * 200), params).max_new_tokens == SMALL_WINDOW - 4 - 200
    assert service._fitted(Turn(None, "", [], ids=[5] * 10), params) is params


def test_fit_window_sizes_the_flags_and_the_slots():
    from tasktune.errors import ConfigError
    from tasktune.serve.window import fit_window
    from tasktune.tuning.inference.bank import ServedRun

    def run(name: str, p: int, source: int) -> ServedRun:
        return ServedRun(name, None, "base", None, p, "auto", source, 64, "data")

    said: list[str] = []
    assert fit_window(None, [run("a", 4, 160)], 1000, said.append) == (1000, 1161)  # no window known
    assert fit_window(2048, [run("a", 4, 160), run("b", 6, 100)], 1024, said.append) == (1024, 1185) and not said
    assert fit_window(512, [run("a", 4, 160), run("b", 6, 100)], 1024, said.append) == (511, 507)
    assert len(said) == 1 and "--max-tokens 1024" in said[0]
    said.clear()
    # not given: the default (1,024) is lowered to the window without a word (every start of a 1,024-position
    # base warned about a flag the user never set)
    assert fit_window(512, [run("a", 4, 160), run("b", 6, 100)], None, said.append) == (511, 507) and not said
    assert fit_window(2048, [run("a", 4, 160)], None, said.append) == (1024, 1185) and not said
    assert fit_window(128, [run("a", 8, 160)], 16, said.append) == (16, 121)
    assert len(said) == 1 and "run a" in said[0] and "last 119 tokens" in said[0]
    with pytest.raises(ConfigError, match="run b: its prefix takes 127 of the base model's 128 positions"):
        fit_window(128, [run("a", 4, 16), run("b", 127, 16)], 16, said.append)
