"""HTTP conventions an outside review found missing (2026-12-06): OpenAI's "Invalid URL" 404s and an Allow header
on 405s, HEAD probes, bodies JSON parsers accept but nothing downstream can take (lone surrogates, deep nesting),
`usage: null` on stream chunks, the Bearer scheme in any case, CORS headers on a 500, and every refusal counted."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

HELLO = [{"role": "user", "content": "你好"}]


def _count(server, status: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(rf'^tasktune_requests_total{{status="{status}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_unknown_routes_and_methods_answer_like_openai(live_server):
    client = live_server.client()
    with pytest.raises(openai.NotFoundError) as err:  # the legacy completions API is not served
        client.completions.create(model="grid", prompt="hi")
    assert err.value.body["message"] == "Invalid URL (POST /v1/completions)"
    wrong = httpx.get(f"{live_server.url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["message"].startswith("Invalid URL (GET /v1/chat/completions)")
    for path in ("/health", "/v1/models", "/"):
        head = httpx.head(f"{live_server.url}{path}")
        assert head.status_code == 200 and head.content == b"", path


@pytest.mark.parametrize("body", [
    b'{"model": "grid", "messages": [{"role": "user", "content": "a\\ud800b"}]}',  # a cut emoji, as JSON escape
    b'{"model": "a\\udfff", "messages": [{"role": "user", "content": "hi"}]}',  # echoed by the 404's message
    b'{"model": "grid", "tool_choice": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "grid", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b"[" * 30_000 + b"]" * 30_000,  # deeper than json itself recurses
    b'{"model": "grid", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',  # a surrogate's UTF-8 bytes
])
def test_bodies_nothing_downstream_can_take_are_400s(live_server, body):
    before = _count(live_server, "400")
    reply = httpx.post(f"{live_server.url}/v1/chat/completions", content=body,
                       headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert _count(live_server, "400") == before + 1
    assert httpx.get(f"{live_server.url}/health").json()["status"] == "ok"


def test_stream_chunks_carry_usage_null_until_the_usage_chunk(live_server):
    body = {"model": "grid", "messages": HELLO, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", json=body, timeout=60) as reply:
        lines = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-1]["system_fingerprint"] == "tasktune"
    plain = {**body, "stream_options": None}
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", json=plain, timeout=60) as reply:
        first = json.loads(next(line[6:] for line in reply.iter_lines() if line.startswith("data: ")))
    assert "usage" not in first


def test_bearer_scheme_in_any_case_and_refusals_counted(serve_runs):
    from tests.serve.conftest import LiveServer

    server = LiveServer([f"grid={serve_runs['grid']}", "--api-key", "sekrit"])
    try:
        url = f"{server.url}/v1/models"
        assert httpx.get(url, headers={"Authorization": "bearer sekrit"}).status_code == 200
        assert httpx.get(url, headers={"Authorization": "BEARER  sekrit"}).status_code == 200
        before = _count(server, "401")
        for header in ("Bearer sekri", "Basic sekrit", "sekrit"):
            assert httpx.get(url, headers={"Authorization": header}).status_code == 401
        assert _count(server, "401") == before + 3
        missing = httpx.get(f"{server.url}/v1/nothing", headers={"Authorization": "Bearer sekrit"})
        assert missing.status_code == 404 and _count(server, "404") >= 1
    finally:
        server.stop()


def test_a_500_keeps_the_cors_headers_and_the_error_shape(serve_runs, monkeypatch):
    """An unexpected exception used to be answered outside the CORS middleware: a browser saw a CORS failure."""
    from tests.serve.conftest import LiveServer

    server = LiveServer([f"grid={serve_runs['grid']}", "--cors-origin", "http://app.example"])
    try:
        def broken(*args, **kwargs):
            raise KeyError("boom")

        monkeypatch.setattr(server.service, "plan", broken)
        monkeypatch.setattr(server.service, "answer", broken)
        reply = httpx.post(f"{server.url}/v1/chat/completions", headers={"Origin": "http://app.example"},
                           json={"model": "grid", "messages": HELLO, "max_tokens": 2})
        assert reply.status_code == 500
        assert reply.headers["access-control-allow-origin"] == "http://app.example"
        assert reply.json()["error"] == {"message": "internal error: KeyError", "type": "server_error",
                                         "param": None, "code": None}
        assert _count(server, "500") == 1
    finally:
        server.stop()
