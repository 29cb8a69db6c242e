"""serve over HTTP: a real server on 127.0.0.1 and the official `openai` client, unchanged."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tasktune.tuning.inference.engine import Event

FRAMED = "步骤#理解并基于输入拆分函数参数*语音#查查济南的人数"


def test_models_lists_runs_base_and_auto(live_server):
    names = [m.id for m in live_server.client().models.list().data]
    assert names == ["grid", "grid2", "tiny-base", "auto"]


def test_chat_answer_equals_eval_and_stream_equals_answer(live_server, serve_runs):
    from tasktune.tuning.data import encode_prompts, format_prompt
    from tests.serve.test_engine import eval_answers

    client = live_server.client()
    tok = live_server.service.tokenizer
    ids = encode_prompts(tok, [format_prompt(tok, FRAMED, [], template="auto")], "auto")
    tuned, base = eval_answers(serve_runs["grid"], ids, 20)
    reply = client.chat.completions.create(model="grid", messages=[{"role": "user", "content": FRAMED}],
                                           max_tokens=20)
    assert reply.choices[0].message.content == tuned[0]
    assert reply.usage.prompt_tokens == len(ids[0]) and reply.usage.total_tokens > reply.usage.prompt_tokens
    plain = client.chat.completions.create(model="tiny-base", messages=[{"role": "user", "content": FRAMED}],
                                           max_tokens=20)
    assert plain.choices[0].message.content == base[0]
    chunks = list(client.chat.completions.create(model="grid", messages=[{"role": "user", "content": FRAMED}],
                                                 max_tokens=20, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == tuned[0]
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_errors_come_in_openai_shape(live_server):
    client = live_server.client()
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="limit of 64"):
        client.chat.completions.create(model="grid", messages=[{"role": "user", "content": "hi"}], max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="256"):
        client.chat.completions.create(model="grid", messages=[{"role": "user", "content": "长" * 400}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="grid", messages=[{"role": "user", "content": "hi"}], temperature=9)
    raw = httpx.post(f"{live_server.url}/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(f"{live_server.url}/v1/chat/completions", content=b"x" * 70000,
                     headers={"content-type": "application/json"})
    assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
    last = httpx.post(f"{live_server.url}/v1/chat/completions",
                      json={"model": "grid", "messages": [{"role": "assistant", "content": "hi"}]})
    assert last.status_code == 400 and "last message" in last.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_refused(live_server):
    """--max-body-bytes holds without a Content-Length too (Transfer-Encoding: chunked): 413, OpenAI's shape."""
    def body(pad: int):
        yield b'{"model": "grid", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "pad": "'
        for _ in range(pad // 5000):
            yield b"x" * 5000
        yield b'"}'

    url, headers = f"{live_server.url}/v1/chat/completions", {"content-type": "application/json"}
    big = httpx.post(url, content=body(70000), headers=headers)  # the server's limit: 65536
    assert big.request.headers.get("transfer-encoding") == "chunked"
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large", big.text
    assert set(big.json()["error"]) == {"message", "type", "param", "code"}
    small = httpx.post(url, content=body(10000), headers=headers)
    assert small.status_code == 200 and small.json()["choices"][0]["message"]["role"] == "assistant"
    with httpx.stream("POST", url, headers=headers, content=b'{"model": "grid", "stream": true, "max_tokens": 3, '
                      b'"messages": [{"role": "user", "content": "hi"}]}') as r:  # streams still stream
        assert r.status_code == 200 and r.read().decode().rstrip().endswith("data: [DONE]")


def test_a_plain_request_whose_client_leaves_frees_its_slot(serve_runs):
    """A non-streamed request is cancelled when its client disconnects (streams: tests/serve/test_soak.py), so the
    engine stops decoding it instead of finishing all its max_tokens for nobody."""
    from tests.serve.conftest import LiveServer

    server = LiveServer([f"grid={serve_runs['grid']}", "--max-tokens", "900"])
    try:
        stats = server.service.engine.stats
        before = stats.tokens
        body = {"model": "grid", "max_tokens": 900, "ignore_eos": True,
                "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.3))
        deadline = time.time() + 30
        while (stats.running or stats.waiting) and time.time() < deadline:
            time.sleep(0.01)
        assert stats.running == 0 and stats.waiting == 0
        assert stats.tokens - before < 900, "the request was decoded to its end after its client left"
        assert server.service.active == 0
    finally:
        server.stop()


def test_a_burst_cannot_overrun_the_queue_limit(serve_runs):
    """--max-batch-size 1 --max-queue 0, 12 requests sent at once to a fresh server: one is answered, the rest
    get 429. (Requests were counted at their first model call, after awaits: a burst all passed the check.)"""
    import concurrent.futures
    import threading

    from tasktune.serve.service import RequestError

    from tests.serve.conftest import LiveServer

    server = LiveServer([f"grid={serve_runs['grid']}", "--max-tokens", "400", "--max-batch-size", "1",
                         "--max-queue", "0"])
    try:
        start = threading.Barrier(12)
        body = {"model": "grid", "max_tokens": 400, "ignore_eos": True, "messages": [{"role": "user", "content": "hi"}]}

        def send(stream: bool) -> int:
            start.wait()
            return httpx.post(f"{server.url}/v1/chat/completions", json=dict(body, stream=stream),
                              timeout=120).status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = sorted(pool.map(send, [False, True] * 6))
        assert codes == [200] + [429] * 11
        # every admission was released: a stream's is, just after its last byte went out (the client may have read
        # it first; on a loaded machine the check right after the reply saw 1)
        deadline = time.monotonic() + 10
        while (server.service.admitted or server.service.active) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.service.admitted == 0 and server.service.active == 0
        # the check and the count are one step: two requests admitted before either awaits anything
        first = server.service.admit()
        with pytest.raises(RequestError) as refused:
            server.service.admit()
        assert refused.value.status == 429
        first.release()
        first.release()  # idempotent
        server.service.admit().release()
        assert server.service.admitted == 0
    finally:
        server.stop()


def test_a_request_beyond_the_batch_and_the_queue_gets_429_with_retry_after(serve_runs):
    """--max-batch-size 1 --max-queue 0: while one stream decodes, the next request is told to come back (429,
    OpenAI's rate-limit shape, Retry-After) instead of queueing; once the stream ends, requests go through."""
    import openai

    from tests.serve.conftest import LiveServer

    server = LiveServer([f"grid={serve_runs['grid']}", "--max-tokens", "900", "--max-batch-size", "1",
                         "--max-queue", "0"])
    try:
        body = {"model": "grid", "max_tokens": 900, "ignore_eos": True, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # the stream holds the batch's one slot now
            r = httpx.post(f"{server.url}/v1/chat/completions",
                           json={"model": "grid", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "rate_limit_exceeded" and "--max-queue 0" in r.json()["error"]["message"]
            with pytest.raises(openai.RateLimitError):
                server.client().chat.completions.create(model="grid", messages=[{"role": "user", "content": "x"}],
                                                        max_tokens=2)
        deadline = time.time() + 30
        while server.service.active and time.time() < deadline:
            time.sleep(0.01)
        answer = server.client().chat.completions.create(model="grid", max_tokens=2,
                                                         messages=[{"role": "user", "content": "x"}])
        assert answer.choices[0].finish_reason in ("stop", "length")
    finally:
        server.stop()


def test_while_draining_new_requests_get_503_in_openai_shape(live_server):
    """What a request gets that still reaches the app after SIGTERM (serve/shutdown.py sets the flag)."""
    live_server.app.state.draining = True
    try:
        r = httpx.post(f"{live_server.url}/v1/chat/completions",
                       json={"model": "grid", "messages": [{"role": "user", "content": "hi"}]})
        health = httpx.get(f"{live_server.url}/health")
    finally:
        live_server.app.state.draining = False
    assert r.status_code == 503 and r.json() == {"error": {"message": "the server is shutting down",
                                                           "type": "server_error", "param": None,
                                                           "code": "shutting_down"}}
    assert health.status_code == 503 and health.json()["status"] == "unavailable"


def test_health_and_metrics(live_server):
    health = httpx.get(f"{live_server.url}/health").json()
    assert health["status"] == "ok" and "grid" in health["models"]
    live_server.client().chat.completions.create(model="grid", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3)
    text = httpx.get(f"{live_server.url}/metrics").text
    for name in ("tasktune_queue_depth", "tasktune_batch_size", "tasktune_generated_tokens_total",
                 "tasktune_ttft_seconds_bucket", "tasktune_latency_seconds_count"):
        assert name in text
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("tasktune_prefill_seconds_count", "tasktune_step_seconds_count"))}
    assert counts["tasktune_prefill_seconds_count"] >= 1 and counts["tasktune_step_seconds_count"] >= 1


def test_api_key_is_required_when_set(serve_runs):
    from tests.serve.conftest import LiveServer

    server = LiveServer([str(serve_runs["grid"]), "--api-key", "sekrit"])
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key="wrong").models.list()
        assert [m.id for m in server.client().models.list().data][0] == serve_runs["grid"].name
        assert httpx.get(f"{server.url}/health").status_code == 200  # health stays open for probes
    finally:
        server.stop()


# -- tools: the engine's answers scripted, so the mapping is tested whatever the tiny model says ----------------

ARGS_ANSWER = "因为出现地名为济南, 所以函数一参数为济南; 因为出现人数要求, 所以函数二参数为人数检测"
SUMMARY_ANSWER = "[人数检测] 应到47人, 实到34人, 有人缺勤"


@pytest.fixture
def scripted(live_server, monkeypatch):
    """The engine answers the argument step with ARGS_ANSWER and the summary step with SUMMARY_ANSWER; the
    prompts it was given are recorded."""
    engine = live_server.service.engine
    seen = []

    def submit(request):
        prompt = live_server.service.tokenizer.decode(request.prompt_ids, skip_special_tokens=True)
        seen.append(prompt)
        text = SUMMARY_ANSWER if "总结" in prompt else ARGS_ANSWER if "拆分函数参数" in prompt else "您好"
        threading.Timer(0.01, request.emit, [Event(text=text, finish_reason="stop", full_text=text,
                                                   prompt_tokens=len(request.prompt_ids),
                                                   completion_tokens=3)]).start()
        return request

    monkeypatch.setattr(engine, "submit", submit)
    return seen


def test_argument_step_answers_with_tool_calls_and_a_tool_result_gets_the_summary(live_server, scripted):
    from tasktune.serve.tools import TaskTools

    client = live_server.client()
    tools = TaskTools.from_spec("grid").tools()
    first = client.chat.completions.create(model="grid", tools=tools,
                                           messages=[{"role": "user", "content": "查查济南的人数"}])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == ARGS_ANSWER
    (call,) = choice.message.tool_calls
    assert json.loads(call.function.arguments) == {"place": "济南", "check": "人数检测"}
    assert scripted[-1].endswith(FRAMED) or FRAMED in scripted[-1]  # plain text was framed as the data frames it
    result = {"expected": 47, "present": 34, "ok": 34}
    second = client.chat.completions.create(model="grid", tools=tools, messages=[
        {"role": "user", "content": "查查济南的人数"},
        {"role": "assistant", "content": choice.message.content,
         "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}])
    assert second.choices[0].message.content == SUMMARY_ANSWER
    assert "步骤#基于函数调用结果进行总结*工单查询#应到47人*目标检测#实到34人*任务类型#人数检测" in scripted[-1]
    bad = {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"expected": 47})}
    with pytest.raises(openai.BadRequestError, match="present"):
        client.chat.completions.create(model="grid", messages=[
            {"role": "user", "content": "x"}, {"role": "assistant", "content": ARGS_ANSWER,
                                               "tool_calls": [call.model_dump()]}, bad])


def test_streamed_tool_calls(live_server, scripted):
    chunks = list(live_server.client().chat.completions.create(
        model="grid", stream=True, messages=[{"role": "user", "content": FRAMED}]))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert json.loads(calls[0].function.arguments)["place"] == "济南"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_server_side_actions_run_the_whole_loop(live_server, scripted, monkeypatch):
    from tasktune.serve.actions import grid_sim

    monkeypatch.setattr(live_server.service, "actions", grid_sim.REGISTRY)
    reply = live_server.client().chat.completions.create(model="grid",
                                                         messages=[{"role": "user", "content": "查查济南的人数"}])
    message = reply.choices[0].message
    assert message.content == SUMMARY_ANSWER and reply.choices[0].finish_reason == "stop"
    (done,) = message.model_extra["executed_tool_calls"]
    assert done["arguments"] == {"place": "济南", "check": "人数检测"}
    assert done["result"] == grid_sim.REGISTRY[done["name"]](**done["arguments"])
    assert f"应到{done['result']['expected']}人" in scripted[-1]


def test_no_action_runs_on_a_place_the_request_never_names(live_server, scripted, monkeypatch):
    """"您好,请简单自我介绍一下" is routed to the arguments step (the grid's greeting route takes one phrase only);
    an answer naming a place the request never says (济南 here, 龙口 from the demo model) was run as a site check.
    Now no call is made, with --actions or with the client's own tools, plain or streamed: the answer is text."""
    from tasktune.serve.actions import grid_sim
    from tasktune.serve.tools import TaskTools

    monkeypatch.setattr(live_server.service, "actions", grid_sim.REGISTRY)
    client = live_server.client()
    greeting = [{"role": "user", "content": "您好,请简单自我介绍一下"}]
    for tools in (openai.NOT_GIVEN, TaskTools.from_spec("grid").tools()):
        reply = client.chat.completions.create(model="grid", messages=greeting, tools=tools)
        message = reply.choices[0].message
        assert message.content == ARGS_ANSWER and not message.tool_calls and reply.choices[0].finish_reason == "stop"
        assert "executed_tool_calls" not in (message.model_extra or {})
    chunks = list(client.chat.completions.create(model="grid", messages=greeting, stream=True))
    assert not any(c.choices and (c.choices[0].delta.tool_calls or (c.choices[0].delta.model_extra or {}).get(
        "executed_tool_calls")) for c in chunks)
    said = client.chat.completions.create(model="grid", messages=[{"role": "user", "content": "查查济[MASK]的人数"}])
    assert said.choices[0].message.model_extra["executed_tool_calls"][0]["arguments"]["place"] == "济南"


def test_auto_routes_by_frame_else_to_the_base(live_server, scripted):
    client = live_server.client()
    framed = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": FRAMED}])
    assert framed.choices[0].message.content == ARGS_ANSWER  # the grid run's step answered
    other = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello world"}])
    assert other.choices[0].message.content == "您好"


def test_streamed_server_side_actions_send_the_calls_made_then_the_summary(live_server, scripted, monkeypatch):
    from tasktune.serve.actions import grid_sim

    monkeypatch.setattr(live_server.service, "actions", grid_sim.REGISTRY)
    lines = []
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", json={
            "model": "grid", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "查查济南的人数"}]}) as r:
        lines = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in lines if c.get("choices")]
    (executed,) = [d["executed_tool_calls"] for d in deltas if "executed_tool_calls" in d]
    assert executed[0]["arguments"] == {"place": "济南", "check": "人数检测"}
    assert "".join(d.get("content") or "" for d in deltas) == SUMMARY_ANSWER
    assert lines[-1]["usage"]["completion_tokens"] == 6  # both model calls counted


def test_the_response_names_the_model_that_answered(live_server, scripted):
    """OpenAI reports the model that answered (an alias resolves to its snapshot): `auto` resolves to the run whose
    frame matched, or to the base; plain and streamed responses alike."""
    client = live_server.client()
    assert client.chat.completions.create(model="auto", messages=[{"role": "user", "content": FRAMED}]).model == "grid"
    assert client.chat.completions.create(model="auto", messages=HELLO_WORLD).model == "tiny-base"
    assert client.chat.completions.create(model="grid2", messages=HELLO_WORLD).model == "grid2"
    chunks = list(client.chat.completions.create(model="auto", stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": FRAMED}]))
    assert {c.model for c in chunks} == {"grid"}


HELLO_WORLD = [{"role": "user", "content": "hello world"}]
REQUIRED_CASES = ("required", {"type": "function", "function": {"name": "site_check"}})


@pytest.mark.parametrize("choice", REQUIRED_CASES)
def test_tool_choice_required_or_named_sends_plain_text_to_the_step_that_calls_the_tool(live_server, scripted, choice):
    """`你好` is routed to the greeting (plain text, no call); with tool_choice required or naming site_check it is
    framed for the argument step, whose answer is the call; `auto` finds the one run that has the tool."""
    client = live_server.client()
    hello = [{"role": "user", "content": "你好"}]
    plain = client.chat.completions.create(model="grid", messages=hello)
    assert plain.choices[0].message.tool_calls is None and "问候" in scripted[-1]
    for model in ("grid", "auto"):
        forced = client.chat.completions.create(model=model, messages=hello, tool_choice=choice)
        assert forced.model == "grid" and forced.choices[0].finish_reason == "tool_calls"
        assert "步骤#理解并基于输入拆分函数参数*语音#你好" in scripted[-1]
        assert forced.choices[0].message.tool_calls[0].function.name == "site_check"
    chunks = list(client.chat.completions.create(model="grid", messages=hello, tool_choice=choice, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_choice_that_cannot_be_honoured_is_refused(live_server, scripted, monkeypatch):
    """400 before any generation where no served step can call the tool (unknown name, a name the request did not
    declare, the base model, content framed for another step, a tool result, a malformed value, "required" with
    only tools the model cannot call); a 500
    `tool_call_failed` (an error event in a stream) when the model's answer is no call; the request counter counts
    a stream by how it ended."""
    client = live_server.client()
    hello = [{"role": "user", "content": "你好"}]
    named = {"type": "function", "function": {"name": "site_check"}}
    summary = "步骤#基于函数调用结果进行总结*工单查询#应到47人*目标检测#实到34人*任务类型#人数检测"
    refused = [
        dict(model="grid", tool_choice={"type": "function", "function": {"name": "weather"}}),
        dict(model="grid", tool_choice=named, tools=[{"type": "function", "function": {"name": "Other"}}]),
        dict(model="tiny-base", tool_choice="required"),
        dict(model="grid2", tool_choice="required"),  # grid2 serves without a spec: no tools
        dict(model="grid", tool_choice="sometimes"),
        dict(model="grid", tool_choice="required", messages=[{"role": "user", "content": summary}]),
        # "required" with only tools of the client's own (pydantic-ai's / llama-index's structured output)
        dict(model="grid", tool_choice="required", tools=[{"type": "function", "function": {
            "name": "final_result", "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}}}]),
        dict(model="auto", tool_choice="required", tools=[{"type": "function", "function": {"name": "final_result"}}]),
    ]
    before = len(scripted)
    for case in refused:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**{"messages": hello, **case})
        assert err.value.body["param"] == "tool_choice", case
    call = {"id": "call_1", "type": "function",
            "function": {"name": "site_check", "arguments": json.dumps({"place": "济南", "check": "人数检测"})}}
    with pytest.raises(openai.BadRequestError, match="calls no tool"):
        client.chat.completions.create(model="grid", tool_choice="required", messages=[
            {"role": "user", "content": "x"}, {"role": "assistant", "content": ARGS_ANSWER, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"expected": 4, "present": 4, "ok": 4})}])
    assert len(scripted) == before  # refused before any generation
    failed_before = _requests_counted(live_server).get("500", 0.0)  # the server is shared with other tests
    monkeypatch.setitem(globals(), "ARGS_ANSWER", "不知道")  # the model answers the argument step with no call
    no_retry = client.with_options(max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        no_retry.chat.completions.create(model="grid", messages=hello, tool_choice="required")
    assert err.value.body["code"] == "tool_call_failed" and "不知道" in err.value.body["message"]
    framed = [{"role": "user", "content": FRAMED}]  # without the promise the same answer is plain text
    assert client.chat.completions.create(model="grid", messages=framed).choices[0].message.content == "不知道"
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", json={
            "model": "grid", "stream": True, "tool_choice": "required", "messages": hello}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "tool_call_failed"
    assert _requests_counted(live_server)["500"] - failed_before == 2  # the plain one and the stream, once each


def _requests_counted(live_server) -> dict[str, float]:
    """/metrics' tasktune_requests_total by status."""
    return {line.split("\"")[1]: float(line.split()[-1]) for line in
            httpx.get(f"{live_server.url}/metrics").text.splitlines() if line.startswith("tasktune_requests_total{")}


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_call_cut_by_max_tokens_is_a_length_finish_not_a_500(live_server, stream):
    """OpenAI answers a forced tool call that max_tokens cuts short with finish_reason "length"; it was a 500
    `tool_call_failed` here (the client's own limit turned into a server error). An answer that ends on its own
    without the call stays the 500 (test above)."""
    body = {"model": "grid", "messages": [{"role": "user", "content": FRAMED}], "max_tokens": 3,
            "tool_choice": "required", "stream": stream}
    if not stream:
        reply = httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]
        assert reply.json()["usage"]["completion_tokens"] == 3
        return
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", json=body, timeout=60) as reply:
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "error" not in events[-2]
    assert [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]][-1] == "length"


def test_threads_flag_sets_torchs_cpu_threads(serve_runs):
    """`--threads N` (torch's intra-op threads; 0 keeps torch's default)."""
    import argparse

    import torch

    from tasktune.serve.cli import build, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    try:
        for threads, expect in ((want, want), (0, want)):  # 0: left as it is
            args = parser.parse_args(["serve", f"grid={serve_runs['grid']}", "--threads", str(threads)])
            _, service, _ = build(args)
            service.engine.shutdown()
            assert torch.get_num_threads() == expect
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "x", "--threads", "-1"])


def test_decode_weights_bf16_on_a_base_that_is_not_4bit_says_so(serve_runs, capsys):
    """`--decode-weights bf16` dequantises a 4-bit base (tests/tuning/test_dequantize.py); on the CPU runs' full
    precision base there is nothing to do, and the server says so instead of claiming it."""
    import argparse

    from tasktune.serve.cli import build, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", f"grid={serve_runs['grid']}", "--decode-weights", "bf16"])
    _, service, _ = build(args)
    service.engine.shutdown()
    assert "no 4-bit linears" in capsys.readouterr().err and args.dequantised == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "x", "--decode-weights", "int8"])
