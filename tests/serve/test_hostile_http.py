"""A sixth probe of `tasktune serve` (2026-12-08, docs/reliability.md "A sixth probe (serve HTTP)"): what a hostile
or careless client still got wrong. Each test failed before its fix: a header sent twice read as its last value,
a lone surrogate in a key answered with a 500, errors found in the JSON walk without their `param`, the prompt
template's path and an internal class name in a 400, a garbled tool_choice message, tool_calls on a user message
dropped unread."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

KEY = "sekrit"


@pytest.fixture(scope="module")
def keyed_server(serve_runs):
    """The two runs behind an API key, with a body limit (2 MB) that holds thousands of messages."""
    from tests.serve.conftest import LiveServer, two_runs_argv

    server = LiveServer(two_runs_argv(serve_runs, "--spec", "grid=grid", "--api-key", KEY,
                                      "--max-body-bytes", "2000000"))
    yield server
    server.stop()


def _raw(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send one request as these bytes (head without its blank line) and read the answer: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        length = b"Content-Length: %d\r\n" % len(body) if body else b""
        conn.sendall(head + length + b"Connection: close\r\n\r\n" + body)
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
    status_line, _, rest = out.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"null")


CHAT = json.dumps({"model": "grid", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2}).encode()


def test_a_header_that_comes_once_sent_twice_is_a_400(keyed_server):
    """The guards read a header by its last value while a proxy in front may read the first: `Authorization:
    Bearer WRONG` then the key was answered 200 (the key first, then a wrong one: 401), `Host: evil.example` then
    `Host: localhost` passed the DNS-rebinding check. Now any repeat of Host, Authorization, Origin or Content-Type
    is a 400 `invalid_header` naming it, before any guard; a list header sent twice is read joined."""
    port = keyed_server.port
    start = b"POST /v1/chat/completions HTTP/1.1\r\n"
    host, auth = b"Host: 127.0.0.1\r\n", f"Authorization: Bearer {KEY}\r\n".encode()
    json_type = b"Content-Type: application/json\r\n"
    assert _raw(port, start + host + auth + json_type, CHAT)[0] == 200
    cases = {
        "Authorization": start + host + b"Authorization: Bearer wrong\r\n" + auth + json_type,
        "Host": start + b"Host: evil.example\r\n" + host + auth + json_type,
        "Origin": start + host + auth + json_type + f"Origin: http://127.0.0.1:{port}\r\n".encode()
        + b"Origin: http://evil.example\r\n",
        "Content-Type": start + host + auth + b"Content-Type: text/plain\r\n" + json_type,
    }
    for name, head in cases.items():
        status, body = _raw(port, head, CHAT)
        assert status == 400, (name, status, body)
        assert body["error"]["code"] == "invalid_header" and f"more than one {name} header" in body["error"]["message"]
    # Content-Encoding is a list: gzip then identity is "gzip, identity", not identity (then "not UTF-8")
    status, body = _raw(port, start + host + auth + json_type + b"Content-Encoding: gzip\r\n"
                        + b"Content-Encoding: identity\r\n", CHAT)
    assert status == 415 and body["error"]["code"] == "unsupported_content_encoding", body
    health = _raw(port, b"GET /health HTTP/1.1\r\nHost: evil.example\r\nHost: localhost\r\n")
    assert health[0] == 400, health


def _post(server, body: str | bytes, **headers) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", content=body, timeout=60,
                      headers={"Content-Type": "application/json", **headers})


def test_a_lone_surrogate_in_a_key_is_a_400_naming_its_place(live_server):
    """`{"\\ud800": "\\ud800"}`: the JSON walk checked the value first and quoted its key in the message, which
    could not be encoded as UTF-8: a 500 `internal error: UnicodeEncodeError`. Keys are checked before their values
    now, and an error message never holds a lone surrogate (written as its escape)."""
    chat = '{"model": "grid", "messages": [{"role": "user", "content": "hi"%s}]%s}'
    for body, param in ((chat % ("", ', "\\ud800": "\\ud800"'), None),
                        (chat % ("", ', "\\ud800": ' + "[" * 70 + "]" * 70), None),
                        (chat % (', "\\udc00": 1', ""), "messages[0]")):
        reply = _post(live_server, body)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert "a key holds a lone UTF-16 surrogate" in error["message"] and error["param"] == param, error
    from tasktune.serve.protocol import error_body

    assert json.dumps(error_body("model `\ud800x`", param="a.\udfff"), ensure_ascii=False).encode() \
        == '{"error": {"message": "model `\\\\ud800x`", "type": "invalid_request_error", "param": "a.\\\\udfff", ' \
           '"code": null}}'.encode()


def test_what_the_json_walk_refuses_is_named_in_param(live_server):
    """A lone surrogate or nesting past 64 levels named its place in the message (`messages.0.content`) but sent
    `param: null` and `code: null`; now `param` is OpenAI's path and `code` invalid_value."""
    lone = '{"model": "grid", "messages": [{"role": "user", "content": "a\\ud83d"}]}'
    error = _post(live_server, lone).json()["error"]
    assert error["param"] == "messages[0].content" and error["code"] == "invalid_value", error
    assert error["message"].startswith("messages[0].content: a string holds a lone UTF-16 surrogate"), error
    deep = '{"model": "grid", "messages": [{"role": "user", "content": "a"}], "metadata": {"a": %s}}' % (
        "[" * 70 + "]" * 70)
    error = _post(live_server, deep).json()["error"]
    assert error["param"] == "metadata.a[0][0]" and "nested more than 64 levels deep" in error["message"], error


def test_thousands_of_short_messages_are_refused_without_the_servers_paths(keyed_server):
    """25,000 one-character messages are under the 80,000 characters of text a request may bring, but the
    template's own text around each turn takes the prompt over the 100,000 characters a template may build. The
    400 was `prompt template /…/templates/prompts/chatglm.jinja: cannot render (SecurityError: …)`: a path of
    the server and an internal class. Now it says why in the client's terms."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(25_000)]
    body = json.dumps({"model": "grid", "max_tokens": 2, "messages": messages + [{"role": "user", "content": "x"}]})
    reply = _post(keyed_server, body, Authorization=f"Bearer {KEY}")
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages", error
    assert "12,501 turns" in error["message"] and "send fewer or shorter messages" in error["message"], error
    assert "prompt is too long" in error["message"] and "maximum context length" in error["message"], error
    assert ".jinja" not in error["message"] and "SecurityError" not in error["message"], error


def test_tool_choice_that_no_run_can_honour_under_auto_reads_as_a_sentence(live_server):
    """It said `..., but model auto: no served run can call it has no such tool`."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "你好"}],
            "tool_choice": {"type": "function", "function": {"name": "nosuch"}}}
    error = _post(live_server, json.dumps(body)).json()["error"]
    assert error["message"] == "tool_choice asks for the tool 'nosuch', but with model auto, no served run can " \
                               "call it", error
    assert error["param"] == "tool_choice"


@pytest.mark.parametrize("message, field", [
    ({"role": "user", "content": "你好", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "site_check", "arguments": "{}"}}]}, "tool_calls"),
    ({"role": "user", "content": "你好", "tool_call_id": "c1"}, "tool_call_id"),
])
def test_tool_fields_on_a_message_of_another_role_are_a_400(live_server, message, field):
    """A user message's tool_calls (or a tool_call_id outside a tool message) were dropped unread, 200; OpenAI's
    schema has them on assistant (tool) messages only. A null or empty value is still fine (clients that send
    every field)."""
    reply = _post(live_server, json.dumps({"model": "grid", "max_tokens": 2, "messages": [message]}))
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == f"messages[0].{field}", reply.text
    empty = {"role": "user", "content": "你好", "tool_calls": [], "tool_call_id": None}
    assert _post(live_server, json.dumps({"model": "grid", "max_tokens": 2, "messages": [empty]})).status_code == 200
