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
