"""Tools a request declares itself (serve/client_tools.py): OpenAI's name rule, one tool a name, schemas whose
references stay inside them (nothing is ever fetched) and end, and strict tools whose arguments must fit."""

from __future__ import annotations

import http.server
import json
import threading

import httpx
import openai
import pytest

from tasktune.serve.client_tools import arguments_error, check_tools
from tests.serve.test_api import ARGS_ANSWER, scripted  # noqa: F401 (the fixture)
from tests.serve.test_validation import refused

SITE_CHECK_INTEGER = {"type": "object", "properties": {"place": {"type": "integer"}}, "required": ["place"],
                      "additionalProperties": False}


def function(name: str = "site_check", **fields) -> dict:
    return {"type": "function", "function": {"name": name, **fields}}


@pytest.mark.parametrize("name", ["a b", "site.check", "查询", "x" * 65, ""])
def test_a_name_outside_openais_characters_is_refused(live_server, name):
    error = refused(live_server, "tools[0].function.name", tools=[function(name)])
    assert "^[a-zA-Z0-9_-]{1,64}$" in error["message"], error


def test_two_tools_of_one_name_are_refused(live_server):
    error = refused(live_server, "tools[1].function.name", tools=[function("a-1_B"), function("a-1_B")])
    assert "declared twice" in error["message"], error


@pytest.mark.parametrize("schema, says", [
    ({"$ref": "https://example.com/schema.json"}, "refers to another document"),
    ({"type": "object", "properties": {"a": {"$ref": "http://169.254.169.254/latest"}}}, "refers to another document"),
    ({"$ref": "other.json#/a"}, "refers to another document"),
    ({"$ref": "#/$defs/missing"}, "refers to nothing"),
    ({"$ref": "#"}, "reference cycle"),
    ({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}},
      "properties": {"x": {"$ref": "#/$defs/a"}}}, "reference cycle"),
    ({"$id": "https://example.com/root", "$defs": {"s": {"$id": "https://example.com/s", "not": {"$ref": "#"}}}},
     "reference cycle"),
])
def test_a_remote_missing_or_cyclic_reference_is_refused(live_server, schema, says):
    error = refused(live_server, "tools[0].function.parameters", tools=[function(parameters=schema)])
    assert says in error["message"], error


def test_references_inside_the_schema_and_recursion_through_the_value_are_taken():
    tree = {"type": "object", "properties": {"name": {"$ref": "#/$defs/name"},
                                             "children": {"type": "array", "items": {"$ref": "#"}}},
            "$defs": {"name": {"type": "string"}}}
    check_tools([function("tree", parameters=tree, strict=True)])
    assert arguments_error(tree, {"name": "a", "children": [{"name": "b", "children": []}]}) is None
    assert arguments_error(tree, {"name": "a", "children": [{"name": 5}]}) == "children[0].name: 5 is not of type " \
                                                                              "'string'"


def test_a_remote_reference_is_never_fetched():
    """The validator of a client's schema resolves through a registry that refuses every retrieval: even a schema
    that got past the request's checks makes no request (jsonschema without a registry fetched it with urllib)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "integer"}')

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        schema = {"properties": {"place": {"$ref": f"http://127.0.0.1:{server.server_port}/s.json"}}}
        assert "cannot be evaluated" in arguments_error(schema, {"place": "济南"})
    finally:
        server.shutdown()
    assert hits == []


def test_a_costly_schema_is_cut_off_by_its_budget():
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]} for i in range(40)}
    schema = {"$ref": "#/$defs/d0", "$defs": {**defs, "d40": {"type": "string"}}}
    check_tools([function(parameters=schema)])  # no cycle: 2**40 evaluations, though
    assert "evaluations" in arguments_error(schema, "x")


@pytest.mark.parametrize("stream", [False, True])
def test_strict_arguments_that_do_not_fit_are_a_500_not_a_silent_200(live_server, scripted, stream):  # noqa: F811
    """The tester's case: the model's call of site_check is {"place": "济南", "check": "人数检测"}, the client
    declared place: integer, additionalProperties false. With strict (OpenAI: the arguments match the schema) it
    is a 500 `tool_arguments_invalid` naming the mismatch (a stream: an error event); without strict the call
    comes as the model gave it, as OpenAI's non-strict calls may (docs/serve.md); a strict schema the arguments
    fit gives the call."""
    client = live_server.client()
    messages = [{"role": "user", "content": "查查济南的人数"}]
    named = {"type": "function", "function": {"name": "site_check"}}
    strict = [function(parameters=SITE_CHECK_INTEGER, strict=True)]
    if stream:
        with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", timeout=60, json={
                "model": "grid", "stream": True, "tool_choice": named, "tools": strict, "messages": messages}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "tool_arguments_invalid", events[-1]
        return
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="grid", messages=messages, tools=strict, tool_choice=named)
    assert err.value.body["code"] == "tool_arguments_invalid" and "strict" in err.value.body["message"]
    assert "Additional properties" in err.value.body["message"] or "integer" in err.value.body["message"]
    assert err.value.response.headers.get("x-should-retry") == "false"
    loose = client.chat.completions.create(model="grid", messages=messages, tool_choice=named,
                                           tools=[function(parameters=SITE_CHECK_INTEGER)])
    (call,) = loose.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"place": "济南", "check": "人数检测"}
    fits = {"type": "object", "properties": {"place": {"type": "string"}, "check": {"enum": ["人数检测", "安全检查"]}},
            "required": ["place", "check"], "additionalProperties": False}
    ok = client.chat.completions.create(model="grid", messages=messages, tool_choice=named,
                                        tools=[function(parameters=fits, strict=True)])
    assert ok.choices[0].finish_reason == "tool_calls" and ok.choices[0].message.content == ARGS_ANSWER
    enum = {**fits, "properties": {**fits["properties"], "check": {"enum": ["安全检查"]}}}
    with pytest.raises(openai.InternalServerError, match="is not one of"):
        client.chat.completions.create(model="grid", messages=messages, tools=[function(parameters=enum, strict=True)])


def test_strict_takes_only_a_boolean(live_server):
    refused(live_server, "tools[0].function.strict", tools=[function(strict="yes")])
