"""Compatibility with third-party OpenAI clients (openai, LangChain, LiteLLM, openai-node, curl): requests those
clients really send, and what they need back. Each test names the client behaviour it stands for."""

from __future__ import annotations

import dataclasses
import json

import httpx
import openai
import pytest

from tests.serve.test_api import ARGS_ANSWER, FRAMED, scripted  # noqa: F401 (scripted is a fixture)

HELLO = [{"role": "user", "content": "你好"}]


def test_stream_null_is_not_streaming(live_server):
    """OpenAI's schema has `stream: boolean | null`; clients that serialise unset fields (LiteLLM proxies, some
    Go/Java SDKs) send `"stream": null`. It was a 400 'stream: Input should be a valid boolean'."""
    reply = httpx.post(f"{live_server.url}/v1/chat/completions",
                       json={"model": "grid", "messages": HELLO, "max_tokens": 2, "stream": None})
    assert reply.status_code == 200, reply.text
    assert reply.json()["object"] == "chat.completion"


def test_top_p_zero_is_accepted_and_is_the_most_likely_token(live_server):
    """OpenAI accepts 0 <= top_p <= 1; top_p=0 keeps only the most likely token (greedy). It was a 400
    ('top_p: Input should be greater than 0'); and `top_p or 1.0` would have turned 0 into 1.0 (no cut)."""
    client = live_server.client()
    greedy = client.chat.completions.create(model="grid", messages=[{"role": "user", "content": FRAMED}],
                                            max_tokens=8)
    nucleus = client.chat.completions.create(model="grid", messages=[{"role": "user", "content": FRAMED}],
                                             max_tokens=8, temperature=1.5, top_p=0, seed=1)
    assert nucleus.choices[0].message.content == greedy.choices[0].message.content


def test_a_model_id_with_a_slash_can_be_retrieved(live_server, monkeypatch):
    """The base model is served under its hub id by default (`Qwen/Qwen2.5-0.5B`): GET /v1/models/{id} must take
    the slash, as `client.models.retrieve(id)` sends it. It was the router's bare 404 'Not Found'."""
    monkeypatch.setattr(live_server.service, "base_name", "org/tiny-base")
    client = live_server.client()
    assert "org/tiny-base" in [m.id for m in client.models.list().data]
    assert client.models.retrieve("org/tiny-base").id == "org/tiny-base"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("org/nope")
    assert err.value.body["code"] == "model_not_found"


def test_a_body_without_a_json_content_type_is_a_415(live_server):
    """A form-encoded, text/plain or untyped body is what a page on another site can POST without a CORS preflight
    (it was read as JSON and answered); OpenAI's API takes application/json only (a charset parameter is fine)."""
    body = json.dumps({"model": "grid", "messages": HELLO, "max_tokens": 2}).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None):
        headers = {"content-type": content_type} if content_type else {}
        reply = httpx.post(f"{live_server.url}/v1/chat/completions", content=body, headers=headers)
        assert reply.status_code == 415, (content_type, reply.text)
        assert reply.json()["error"]["code"] == "unsupported_media_type"
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    for content_type in ("application/json", "Application/JSON; charset=utf-8"):
        reply = httpx.post(f"{live_server.url}/v1/chat/completions", content=body,
                           headers={"content-type": content_type})
        assert reply.status_code == 200, (content_type, reply.text)


def test_tool_calls_name_only_tools_the_client_declared(live_server, scripted):  # noqa: F811
    """A client that declares its own tools must not get a call of a tool it never declared: LangChain's
    `with_structured_output(Model, method="function_calling")` declares one tool `Model` (tool_choice naming
    it) and failed with OutputParserException "Unknown tool type: 'site_check'". OpenAI only calls declared
    tools; the answer then is plain text."""
    client = live_server.client()
    mine = [{"type": "function", "function": {"name": "Place", "parameters": {
        "type": "object", "properties": {"place": {"type": "string"}}}}}]
    reply = client.chat.completions.create(model="grid", tools=mine, messages=[{"role": "user", "content": FRAMED}])
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert choice.message.content == ARGS_ANSWER
    chunks = list(client.chat.completions.create(model="grid", tools=mine, stream=True,
                                                 messages=[{"role": "user", "content": FRAMED}]))
    assert not [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # declaring the spec's tool still gets the call
    from tasktune.serve.tools import TaskTools

    ours = client.chat.completions.create(model="grid", tools=TaskTools.from_spec("grid").tools(),
                                          messages=[{"role": "user", "content": FRAMED}])
    assert ours.choices[0].finish_reason == "tool_calls"


def test_a_failed_action_is_not_retried_by_the_openai_client(live_server, scripted, monkeypatch):  # noqa: F811
    """A failed server-side action is a 502; the openai clients (Python, Node) retry 5xx twice by default, so the
    action (a side effect) ran three times for one request. `x-should-retry: false` tells them not to."""
    calls = []

    def site_check(**arguments):
        calls.append(arguments)
        raise ConnectionError("register unreachable")

    monkeypatch.setattr(live_server.service, "actions", {"site_check": site_check})
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=2, timeout=60)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="grid", messages=[{"role": "user", "content": "查查济南的人数"}])
    assert err.value.status_code == 502 and err.value.body["code"] == "action_failed"
    assert len(calls) == 1


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}},
     "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2, "logprobs": True}, "logprobs"),
])
def test_parameters_the_server_cannot_honour_are_refused_not_ignored(live_server, extra, param):
    """`client.chat.completions.parse(response_format=Model)`, LangChain's `with_structured_output` (json_schema /
    json_mode) and `logprobs=True` got a 200 whose text ignored them, and failed later on the client
    (LengthFinishReasonError, pydantic ValidationError, logprobs None). A 400 `unsupported_value` naming the
    parameter (OpenAI's code for a value a model does not support) says why at once."""
    with pytest.raises(openai.BadRequestError) as err:
        live_server.client().chat.completions.create(model="grid", messages=HELLO, max_tokens=2, **extra)
    assert err.value.body["param"] == param and err.value.body["code"] == "unsupported_value"


def test_parameters_that_change_nothing_are_still_accepted(live_server):
    """What clients send by default must keep working: response_format text, logprobs false, penalties,
    parallel_tool_calls, user/metadata/store, name fields, content as text parts."""
    reply = live_server.client().chat.completions.create(
        model="grid", max_tokens=2, response_format={"type": "text"}, logprobs=False, presence_penalty=0.5,
        frequency_penalty=0.5, parallel_tool_calls=False, user="u", metadata={"a": "b"}, store=False,
        messages=[{"role": "system", "content": [{"type": "text", "text": "s"}], "name": "sys"},
                  {"role": "user", "content": [{"type": "text", "text": "你"}, {"type": "text", "text": "好"}],
                   "name": "bob"}])
    assert reply.choices[0].message.content is not None


def test_cors_is_off_by_default_and_opt_in_answers_a_preflight_before_the_api_key(serve_runs, live_server):
    """A browser page on another origin (a JS app using the openai npm client with dangerouslyAllowBrowser)
    sends a preflight OPTIONS without Authorization: with --cors-origin it is answered (and the real request
    still needs the key); without, no Access-Control-Allow-Origin, so the browser blocks the page."""
    from tests.serve.conftest import LiveServer

    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    closed = httpx.options(f"{live_server.url}/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    server = LiveServer([f"grid={serve_runs['grid']}", "--api-key", "k", "--cors-origin", "http://localhost:3000"])
    try:
        r = httpx.options(f"{server.url}/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        post = httpx.post(f"{server.url}/v1/chat/completions", headers={"Origin": "http://localhost:3000"},
                          json={"model": "grid", "max_tokens": 2, "messages": HELLO})
        assert post.status_code == 401 and post.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = httpx.options(f"{server.url}/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()


def test_a_forced_tool_call_that_does_not_parse_is_not_retried(live_server, scripted, monkeypatch):  # noqa: F811
    """tool_choice required, and the model's answer is no call: a 500 `tool_call_failed` that the same request
    meets again. Without `x-should-retry: false` the openai client sent it three times (two retries, with their
    backoff); every deterministic 5xx of the service carries the header (RequestError), a 503 (shutting down)
    does not."""
    from tasktune.serve.service import RequestError

    monkeypatch.setattr("tests.serve.test_api.ARGS_ANSWER", "不知道")
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=2, timeout=60)
    before = len(scripted)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="grid", messages=HELLO, tool_choice="required")
    assert err.value.body["code"] == "tool_call_failed" and err.value.response.headers["x-should-retry"] == "false"
    assert len(scripted) == before + 1  # one model call: the client did not retry
    assert RequestError("x", status=502).headers == {"x-should-retry": "false"}
    assert RequestError("x", status=503).headers is None
    assert RequestError("x", status=429, headers={"Retry-After": "1"}).headers == {"Retry-After": "1"}


@pytest.mark.parametrize("oom, code, retried", [(False, "generation_failed", False), (True, "out_of_memory", True)])
def test_a_generation_failure_is_a_500_the_client_retries_only_for_memory(live_server, monkeypatch, oom, code,
                                                                           retried):
    """A request whose own generation fails in the engine (here its sampler) was a bare RuntimeError -> "internal
    error" 500 without a code, which the openai client retried twice though the same request fails the same way.
    It is now `generation_failed` with x-should-retry: false, on plain and streamed requests alike; only running out
    of memory (the batch beside it changes) stays retryable."""
    import torch

    from tasktune.tuning.inference.engine import Engine

    error = torch.OutOfMemoryError("CUDA out of memory") if oom else ValueError("a seed it cannot take")
    calls = []

    def failing(self, params):
        calls.append(params.seed)
        raise error

    monkeypatch.setattr(Engine, "_generator", failing)
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=2, timeout=60)
    monkeypatch.setattr(openai._base_client.BaseClient, "_calculate_retry_timeout", lambda *a, **k: 0.01)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="grid", messages=HELLO, temperature=1, seed=5, max_tokens=2)
    assert err.value.body["code"] == code and err.value.body["message"].startswith("generation failed:")
    assert len(calls) == (3 if retried else 1)
    assert ("x-should-retry" in err.value.response.headers) is not retried
    stream = client.chat.completions.create(model="grid", messages=HELLO, temperature=1, seed=5, max_tokens=2,
                                            stream=True)
    with pytest.raises(openai.APIError) as err:
        list(stream)
    assert err.value.body["code"] == code


def overflow_by(message: str) -> set[str]:
    """The clients that read a 400 with this message as a context overflow (their rules, 2026-12: with openai-python
    3.x, str(error) is "Error code: 400 - " + the message alone, so the body's `code` is not in it): LangChain's
    ContextOverflowError (langchain_openai `_handle_openai_bad_request`), LangChain.js' (`@langchain/openai`
    `_isOpenAIContextOverflowError`), LiteLLM's ContextWindowExceededError (`is_error_str_context_window_exceeded`)."""
    lower = message.lower()
    rules = {"langchain": "prompt is too long" in message or "context_length_exceeded" in message,
             "langchain.js": "maximum context length" in message or "context_length_exceeded" in message,
             "litellm": "this model's maximum context length is" in lower or "prompt is too long" in lower}
    return {client for client, matched in rules.items() if matched}


def test_a_prompt_over_the_limits_is_a_context_overflow_to_langchain_and_litellm(live_server):
    """A prompt over --max-prompt-tokens was 400 `context_length_exceeded` "the prompt has 1556 tokens, over this
    server's limit of 256": LangChain's ChatOpenAI raised a plain BadRequestError, not its ContextOverflowError (on
    which the SummarizationMiddleware of `create_agent` retries an overflowing summary call with the middle of the
    history cut out), and LiteLLM BadRequestError, not ContextWindowExceededError (its `context_window_fallbacks`
    never fired). Every context_length_exceeded message now says OpenAI's sentence and "the prompt is too long"
    (serve/window.py `overflow_message`); make test-clients checks the clients themselves."""
    from tasktune.serve.protocol import ChatRequest
    from tasktune.serve.service import MAX_PROMPT_CHARS, RequestError

    client = live_server.client()
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="grid", stream=stream,
                                           messages=[{"role": "user", "content": "查查济南的人数" * 300}])
        assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
        assert overflow_by(str(err.value)) == {"langchain", "langchain.js", "litellm"}, str(err.value)
        assert "your messages resulted in" in str(err.value) and "--max-prompt-tokens" in str(err.value)
    service = live_server.service
    with pytest.raises(RequestError) as err:  # over MAX_PROMPT_CHARS (a body over the test server's size limit)
        service.plan(ChatRequest.model_validate({"model": "grid", "messages": [
            {"role": "user", "content": "查" * (MAX_PROMPT_CHARS + 1)}]}))
    assert err.value.code == "context_length_exceeded"
    assert overflow_by(str(err.value)) == {"langchain", "langchain.js", "litellm"}, str(err.value)


def test_an_action_result_too_long_to_answer_is_no_context_overflow(live_server, scripted, monkeypatch):  # noqa: F811
    """The server's own 502 when an action's result makes the summary's prompt too long must not read as the
    client's overflow: LiteLLM matches the phrases whatever the status."""
    monkeypatch.setattr(live_server.service, "actions", {"site_check": lambda **_: {
        "expected": 10 ** 300, "present": 10 ** 300, "ok": 10 ** 300}})
    monkeypatch.setattr(live_server.service, "limits",
                        dataclasses.replace(live_server.service.limits, max_prompt_tokens=100))
    with pytest.raises(openai.APIStatusError) as err:
        live_server.client().chat.completions.create(model="grid", messages=[{"role": "user", "content": "查查济南的人数"}])
    assert err.value.status_code == 502 and err.value.body["code"] == "action_failed", err.value.body
    assert overflow_by(str(err.value)) == set(), str(err.value)
