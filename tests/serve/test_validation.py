"""What the server refuses with a 400 before any generation (OpenAI's rules and shape), and values it must take."""

from __future__ import annotations

import json

import httpx
import pytest

from tasktune.serve.protocol import ChatRequest
from tasktune.serve.service import RequestError
from tests.serve.test_api import FRAMED

URL = "/v1/chat/completions"
FRAMED_MESSAGES = [{"role": "user", "content": FRAMED}]


def post(live_server, **fields) -> httpx.Response:
    body = {"model": "grid", "messages": FRAMED_MESSAGES, "max_tokens": 8, **fields}
    return httpx.post(f"{live_server.url}{URL}", json=body, timeout=60)


def refused(live_server, param: str, **fields) -> dict:
    """The error of a request that must be refused with a 400 naming `param`."""
    reply = post(live_server, **fields)
    assert reply.status_code == 400, (fields, reply.text)
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", (fields, error)
    return error


@pytest.mark.parametrize("seed", [10**23, 2**63, -(2**63) - 1])
def test_a_seed_outside_int64_is_refused(live_server, seed):
    """OpenAI's seed is an int64. 10**23 reached torch's manual_seed in the engine thread, whose OverflowError
    failed every request decoding beside it."""
    refused(live_server, "seed", seed=seed, temperature=1)


def test_int64_seeds_and_tiny_temperatures_answer(live_server):
    """The ends of int64 seed; a temperature too small to divide by (1e-300, 5e-324: softmax gave NaN, which
    failed the batch) decodes greedily, so it answers as temperature 0."""
    greedy = post(live_server, temperature=0).json()["choices"][0]["message"]["content"]
    for seed in (2**63 - 1, -(2**63)):
        assert post(live_server, seed=seed, temperature=1).status_code == 200
    for temperature in (1e-300, 5e-324, 1e-6):
        reply = post(live_server, temperature=temperature, seed=3)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == greedy


def test_at_most_four_stop_sequences_of_bounded_length(live_server):
    """OpenAI allows up to 4 stop sequences; each is at most protocol.MAX_STOP_CHARS (256) characters. 95,000 stops
    in one body were looked for at every token of every row and stalled the whole batch."""
    from tasktune.serve.protocol import MAX_STOP_CHARS

    assert "4" in refused(live_server, "stop", stop=["a", "b", "c", "d", "e"])["message"]
    refused(live_server, "stop", stop=[f"s{i}" for i in range(5000)])  # 95,000 would pass 1 MiB bodies
    refused(live_server, "stop", stop="x" * (MAX_STOP_CHARS + 1))
    refused(live_server, "stop", stop=["x", "y" * (MAX_STOP_CHARS + 1)])
    refused(live_server, "stop", stop=5)
    refused(live_server, "stop", stop=["x", 5])
    for stop in (["never", "seen", "in", "x" * MAX_STOP_CHARS], "never", [], None):
        assert post(live_server, stop=stop).status_code == 200, stop


@pytest.mark.parametrize("param, value", [
    ("stream", "yes"), ("stream", 1), ("stream", "false"),
    ("max_tokens", True), ("max_tokens", "2"), ("max_tokens", 2.0), ("max_tokens", 2.5),
    ("max_completion_tokens", "2"), ("max_completion_tokens", False),
    ("temperature", "1"), ("temperature", True), ("top_p", "0.5"), ("top_p", False),
    ("seed", "3"), ("seed", 3.0), ("seed", True),
    ("n", "1"), ("n", True),
    ("ignore_eos", "false"), ("ignore_eos", 1), ("ignore_eos", "true"),
    ("logprobs", "false"), ("logprobs", 0), ("top_logprobs", "2"),
    ("stream_options", {"include_usage": "no"}), ("model", 5), ("user", 5),
])
def test_a_value_of_the_wrong_type_is_refused(live_server, param, value):
    """OpenAI answers 400 for a wrong type; pydantic's lax mode took "stream": "yes" (or 1) as a stream,
    "max_tokens": true as 1 and "2" as 2, "temperature": "1" as 1.0, and ignore_eos (read with bool() from the
    extra fields) took "false" as true. Integers take JSON integers only: 2.0 is refused, as OpenAI refuses it."""
    error = refused(live_server, param, **{param: value})
    assert error["message"].startswith(param)
    assert error["code"] == "invalid_type"  # api.openai.com's code for it (clients branch on it), not null


def test_values_of_the_right_type_are_taken(live_server):
    """Integers for number fields, null where OpenAI allows null, booleans for booleans."""
    fields = dict(temperature=1, top_p=1, seed=0, stream=None, n=1, logprobs=False, ignore_eos=False,
                  stream_options=None, max_completion_tokens=4, max_tokens=None)
    reply = post(live_server, **fields)
    assert reply.status_code == 200, reply.text
    assert post(live_server, ignore_eos=True, max_tokens=5).json()["usage"]["completion_tokens"] == 5
    assert post(live_server, stream_options={"include_usage": None}).status_code == 200


def test_n_above_one_is_unsupported_and_a_limit_is_reported_under_the_field_sent(live_server):
    """n=2 was refused with code null (a pydantic bound); like logprobs and response_format it is a value this
    server does not support. An over-limit max_completion_tokens was reported as "max_tokens"."""
    assert refused(live_server, "n", n=2)["code"] == "unsupported_value"
    refused(live_server, "n", n=0)
    assert "max_completion_tokens" in refused(live_server, "max_completion_tokens", max_completion_tokens=65,
                                              max_tokens=None)["message"]
    assert "max_tokens" in refused(live_server, "max_tokens", max_tokens=65)["message"]


@pytest.mark.parametrize("fields, param, code", [
    ({"temperature": 3.0}, "temperature", "decimal_above_max_value"),
    ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({"temperature": -0.5}, "temperature", "decimal_below_min_value"),
    ({"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ({"messages": []}, "messages", "empty_array"),
    ({"messages": None}, "messages", "invalid_type"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "invalid_value"),
])
def test_a_refused_value_carries_openais_code(live_server, fields, param, code):
    """Validation errors came with code null; OpenAI's own 400s name the kind of mistake
    (invalid_type, integer_above_max_value, empty_array, ...), and SDKs and retry logic read it."""
    error = refused(live_server, param, **fields)
    assert error["code"] == code, error


def test_a_missing_required_field_is_named_with_openais_code(live_server):
    reply = httpx.post(f"{live_server.url}{URL}", json={"model": "grid"}, timeout=60)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "missing_required_parameter"
    assert reply.json()["error"]["param"] == "messages"


def test_a_text_part_without_text_says_so(live_server):
    """{"type": "text"} without "text" was told "only text parts are supported"."""
    for part in ({"type": "text"}, {"type": "text", "text": 5}):
        message = refused(live_server, "messages[0].content",
                          messages=[{"role": "user", "content": [part]}])["message"]
        assert "only text parts" not in message and "'text'" in message, message
    image = {"type": "image_url", "image_url": {"url": "http://x"}}
    assert "only text parts" in refused(live_server, "messages[1].content", messages=[
        {"role": "system", "content": "s"}, {"role": "user", "content": [image]}])["message"]


CALL = {"id": "c1", "type": "function",
        "function": {"name": "site_check", "arguments": '{"place": "济南", "check": "人数检测"}'}}


def tool_round(result: str, arguments: str = CALL["function"]["arguments"]) -> list[dict]:
    call = {**CALL, "function": {**CALL["function"], "arguments": arguments}}
    return [{"role": "user", "content": "查查济南的人数"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": result}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("param, value", [
    ("tool_choice", {"type": "function", "function": "site_check"}), ("tool_choice", {"type": "function"}),
    ("tool_choice", "sometimes"), ("tools[0].function.name", [{"type": "function", "function": {"name": ["x"]}}]),
    ("tools[0]", [{"type": "function"}]), ("tools[0]", [{"type": "function", "function": "x"}]),
    ("tools[1]", [{"type": "function", "function": {"name": "y"}}, {"type": "retrieval", "function": {"name": "x"}}]),
    ("tools[0].function.parameters", [{"type": "function", "function": {"name": "x", "parameters": "{}"}}]),
    ("tools[0].function.parameters", [{"type": "function", "function": {"name": "x", "parameters": {"type": 5}}}]),
    ("tools[0].function.parameters", [{"type": "function", "function": {"name": "x", "parameters": {
        "type": "object", "properties": {"a": {"enum": "x"}}}}}]),
    ("tools", []),
])
def test_tools_and_tool_choice_of_the_wrong_shape_are_refused(live_server, stream, param, value):
    """A tool whose name was a list, or a tool_choice whose function was not an object, was a 500 (an
    AttributeError/TypeError in the tool matching), and a stream was cut off mid-body; OpenAI answers 400, naming
    the place (`tools[0].function.parameters`), for parameters that are no JSON Schema and an empty `tools` too
    (both were taken)."""
    field = param.split("[")[0]
    refused(live_server, param, stream=stream, **{field: value})


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "查" * 100_001}],
    [{"role": "user", "content": [{"type": "text", "text": "a" * 50_000}] * 2}],
    [{"role": "assistant", "content": "a" * 100_001}, {"role": "user", "content": "你好"}],
    [{"role": "user", "content": "a" * 8}, {"role": "assistant", "content": "b" * 8}] * 6_000
    + [{"role": "user", "content": "你好"}],
], ids=["one message", "text parts", "history", "many short rounds"])
@pytest.mark.parametrize("model", ["grid", "tiny-base", "auto"])
def test_text_over_what_the_templates_render_is_a_context_length_400(live_server, messages, model):
    """Over 100,000 characters the prompt templates refuse to render (render.MAX_TEXT): that escaped as a 500
    (ToolError, DataError) instead of the 400 a too-long prompt gets. (Asked of the service: these bodies are over
    the test server's --max-body-bytes, which answers 413 first; the default 1 MiB lets them through.)"""
    with pytest.raises(RequestError) as refused_:
        service = live_server.service
        service.encode(service.plan(ChatRequest.model_validate({"model": model, "messages": messages})))
    assert refused_.value.status == 400 and refused_.value.code == "context_length_exceeded", refused_.value
    assert refused_.value.param == "messages"


@pytest.mark.parametrize("result, arguments", [
    ("[" * 100_000 + "]" * 100_000, None), ('{"a":' * 3_000 + "1" + "}" * 3_000, None),
    ('{"expected": ' + "9" * 5_000 + ', "present": 1, "ok": 1}', None),
    ('{"expected": 47, "present": 34, "ok": 34}', "[" * 50_000 + "]" * 50_000),
], ids=["deep list", "deep object", "huge integer", "deep arguments"])
def test_a_tool_result_or_arguments_that_json_cannot_take_is_a_400(live_server, result, arguments):
    """The JSON inside a tool message (or a call's arguments) skipped the body's checks: json.loads raised
    RecursionError / ValueError (integer too long), which came out as 500s."""
    messages = tool_round(result, arguments) if arguments else tool_round(result)
    with pytest.raises(RequestError) as refused_:  # (the service: the longest are over the test server's body limit)
        live_server.service.plan(ChatRequest.model_validate({"model": "grid", "messages": messages}))
    param = "messages[1].tool_calls[0].function.arguments" if arguments else "messages[2].content"
    if "characters of messages" in str(refused_.value):  # over MAX_PROMPT_CHARS first: the messages as a whole
        param = "messages"
    assert refused_.value.status == 400 and refused_.value.param == param, refused_.value
    if len(json.dumps(messages)) < 60_000:  # and over HTTP where the body fits
        reply = httpx.post(f"{live_server.url}{URL}", json={"model": "grid", "messages": messages, "max_tokens": 4})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text[:300]


@pytest.mark.parametrize("param", ["presence_penalty", "frequency_penalty"])
def test_penalties_are_accepted_in_range_and_refused_outside(live_server, param):
    """Accepted and not applied (serve/service.py); OpenAI's range is -2..2, and a value outside is its 400."""
    assert post(live_server, **{param: 1.5}).status_code == 200
    refused(live_server, param, **{param: 3.5})
    refused(live_server, param, **{param: "1"})


def test_an_unknown_static_file_or_a_trailing_slash_is_a_404_in_openais_shape(live_server):
    """A 256-character file name was a 500 (ENAMETOOLONG); a trailing slash was Starlette's 307 to a URL built
    from the Host header (an open redirect behind a proxy), with an empty body."""
    assert httpx.get(f"{live_server.url}/static/{'a' * 256}").status_code == 404
    reply = httpx.post(f"{live_server.url}{URL}/", json={}, headers={"Host": "localhost:1"})
    assert reply.status_code == 404 and "location" not in reply.headers
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_a_failure_after_a_stream_opened_ends_it_with_an_error_event(live_server, monkeypatch):
    """The 200 of a stream is out before its end is computed; an exception there cut the chunked body (httpx:
    'incomplete chunked read', openai: APIConnectionError). It now ends with OpenAI's error event and [DONE]."""
    def broken(*args, **kwargs):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(live_server.service, "tool_calls", broken)
    with httpx.stream("POST", f"{live_server.url}{URL}", json={"model": "grid", "messages": FRAMED_MESSAGES,
                                                                 "max_tokens": 4, "stream": True}) as reply:
        assert reply.status_code == 200
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"] == {"message": "internal error: TypeError", "type": "server_error",
                                               "param": None, "code": None}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(live_server, constant):
    """Python's json reads NaN and Infinity, which RFC 8259 does not have: `temperature: NaN` was refused with a
    misleading 'should be less than or equal to 2'. Now the body is not JSON, as any strict client library says."""
    body = f'{{"model": "grid", "messages": [{{"role": "user", "content": "你好"}}], "temperature": {constant}}}'
    reply = httpx.post(f"{live_server.url}{URL}", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and f"{constant.lstrip('-')} is not a JSON number" in reply.json()["error"]["message"]


def test_assistant_refusal_parts_are_history_and_head_answers_where_get_does(live_server):
    """OpenAI's assistant messages may hold refusal parts (400 'only text parts' here before); HEAD on a model or
    a static file was a 405 while GET answered."""
    history = [{"role": "user", "content": "你好"},
               {"role": "assistant", "content": [{"type": "refusal", "refusal": "不能回答"}]},
               {"role": "user", "content": FRAMED}]
    assert post(live_server, messages=history).status_code == 200
    refusal_from_user = [{"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}]
    assert post(live_server, messages=refusal_from_user).status_code == 400
    assert httpx.head(f"{live_server.url}/v1/models/grid").status_code == 200
    assert httpx.head(f"{live_server.url}/static/app.js").status_code == 200


SEQ_RESULT = json.dumps({"expected": 4, "present": 4, "ok": 4})


@pytest.mark.parametrize("messages, says, param", [
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
      {"role": "tool", "content": SEQ_RESULT}], "messages[2].tool_call_id is required", "messages[2].tool_call_id"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [CALL, dict(CALL, id="c2")]},
      {"role": "tool", "tool_call_id": "c1", "content": SEQ_RESULT}], "unanswered", "messages[1].tool_calls"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [CALL, CALL]},
      {"role": "tool", "tool_call_id": "c1", "content": SEQ_RESULT}], "not unique", "messages[1].tool_calls"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
      {"role": "user", "content": "y"}], "messages[1]: the assistant message with tool_calls",
     "messages[1].tool_calls"),
    ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c1", "content": SEQ_RESULT}],
     "no open call has the id 'c1'", "messages[1].tool_call_id"),
    ([{"role": "user", "content": None}], "messages[0].content is required for a message of role 'user'",
     "messages[0].content"),
    ([{"role": "user"}], "messages[0].content is required", "messages[0].content"),
    ([{"role": "user", "content": []}], "messages[0].content is an empty array", "messages[0].content"),
    ([{"role": "system", "content": None}, {"role": "user", "content": "x"}], "messages[0].content is required",
     "messages[0].content"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None}, {"role": "user", "content": "y"}],
     "messages[1].content is required", "messages[1].content"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
     "messages[1]: the last message must be from the user or a tool", "messages[1].role"),
])
def test_a_conversation_openai_would_refuse_is_a_400_naming_the_message(live_server, messages, says, param):
    """OpenAI's rules on the message sequence: each assistant tool call answered by a tool message with its id
    before anything else, no tool message without an open call, content required (an assistant's only when it
    carries calls). Each of these was answered with a 200. `param` is OpenAI's path to the place, as the message
    says it (it was `messages`, while pydantic's own errors said `messages.0.role`)."""
    error = refused(live_server, param, messages=messages)
    assert says in error["message"], error
    assert not error["message"].startswith("messages: messages"), error
    assert "{" not in error["message"].replace('{"', ""), error  # no template placeholder left unfilled


def test_logit_bias_takes_openais_shape_only(live_server):
    assert post(live_server, logit_bias={"50256": -100, "7": 2.5}).status_code == 200
    for bad in ([1, 2], {"abc": 5}, {"1": 500}, {"1": "x"}, {"1": True}):
        refused(live_server, "logit_bias", logit_bias=bad)
    assert "'abc': 5 is not that" in refused(live_server, "logit_bias", logit_bias={"abc": 5})["message"]


def test_a_tool_result_written_as_a_python_dict_is_read_and_text_is_refused_naming_the_message(live_server):
    """llama-index's FunctionAgent sends a tool's output as str(dict): single quotes. It is read as the same
    fields (literals only); text that is neither is a 400 naming messages[i].content and the tool."""
    as_json = live_server.service.plan(ChatRequest.model_validate({"model": "grid", "messages": tool_round(SEQ_RESULT)}))
    as_python = live_server.service.plan(ChatRequest.model_validate(
        {"model": "grid", "messages": tool_round(str({"expected": 4, "present": 4, "ok": 4}))}))
    assert as_python.query == as_json.query and "应到4人" in as_json.query
    for text in ("应到5人, 实到4人", "{'expected': float('nan')}", "{'expected': {1, 2}}", "[1, 2]", "null",
                 "{__import__('os').system('true')}"):
        error = refused(live_server, "messages[2].content", messages=tool_round(text))
        assert error["message"].startswith("messages[2].content: the result of tool site_check"), error
    error = refused(live_server, "messages[2].content", messages=tool_round('{"expected": 4}'))  # a field missing
    assert error["message"].startswith("messages[2].content: ") and "present" in error["message"], error


@pytest.mark.parametrize("fields, param", [
    ({"response_format": "text"}, "response_format"), ({"response_format": {}}, "response_format.type"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"parallel_tool_calls": "x"}, "parallel_tool_calls"), ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
    ({"max_tokens": 8, "max_completion_tokens": 4}, "max_tokens"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"top_logprobs": 2, "logprobs": False}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x", "name": 5}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f"}}]}]}, "messages[1].tool_calls[0].function.arguments"),
])
def test_values_openai_refuses_are_refused_naming_the_param(live_server, fields, param):
    """Each was taken (or, top_logprobs, reported under `logprobs`; max_completion_tokens silently won over a
    different max_tokens): OpenAI answers 400. Both token limits alike are still taken (nothing to choose)."""
    refused(live_server, param, **fields)
    assert post(live_server, max_tokens=4, max_completion_tokens=4, parallel_tool_calls=False,
                response_format={"type": "text"}).status_code == 200


@pytest.mark.parametrize("arguments, says", [
    ({"place": "济南", "check": "{{7*7}}"}, "check: '{{7*7}}' is not one of"),
    ({"place": 5, "check": "人数检测"}, "place: 5 is not of type 'string'"),
    ({"check": "人数检测"}, "'place' is a required property"),
])
def test_tool_call_arguments_outside_the_tools_schema_are_refused(live_server, arguments, says):
    """A client's call sent back with its result was framed into the summary prompt as it was, whatever the
    action's parameters say (`check: "{{7*7}}"` outside its enum): 400 naming the arguments."""
    messages = tool_round(SEQ_RESULT, json.dumps(arguments, ensure_ascii=False))
    error = refused(live_server, "messages[1].tool_calls[0].function.arguments", messages=messages)
    assert says in error["message"], error
    assert post(live_server, messages=tool_round(SEQ_RESULT)).status_code == 200
