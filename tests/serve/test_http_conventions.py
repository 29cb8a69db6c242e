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
JSON = {"Content-Type": "application/json"}


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


def test_errors_speak_json_and_quote_the_request_briefly(live_server):
    """A body that is not an object says "expected an object, got an array" (was pydantic's "instance of
    ChatRequest"), a message likewise; a 5,000-digit integer names the limit, not a Python function; a compressed
    or non-UTF-8 body is a 415 (gzip was 'not valid JSON: can't decode byte 0x8b'); a BOM is skipped; a huge model
    name is quoted cut short, and no message is longer than protocol.MAX_MESSAGE."""
    import gzip

    from tasktune.serve.protocol import MAX_MESSAGE

    url = f"{live_server.url}/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    for body, says in ((b"[1, 2]", "expected an object, got an array"), (b"null", "expected an object, got null"),
                       (json.dumps({"model": "grid", "messages": ["hi"]}).encode(), "expected an object, got a string"),
                       (b'{"model": "grid", "max_tokens": ' + b"9" * 5000 + b"}", "more than 4300 digits")):
        reply = httpx.post(url, content=body, headers=JSON)
        assert reply.status_code == 400 and says in reply.json()["error"]["message"], reply.text
        assert "ChatRequest" not in reply.text and "Message" not in reply.text and "sys." not in reply.text
    plain = json.dumps({"model": "grid", "messages": hi, "max_tokens": 2}).encode()
    reply = httpx.post(url, content=gzip.compress(plain), headers={"Content-Encoding": "gzip", **JSON})
    assert reply.status_code == 415 and reply.json()["error"]["code"] == "unsupported_content_encoding"
    reply = httpx.post(url, content=plain, headers={"Content-Type": "application/json; charset=latin-1"})
    assert reply.status_code == 415 and "UTF-8" in reply.json()["error"]["message"]
    reply = httpx.post(url, content=b"\xef\xbb\xbf" + plain, headers={"Content-Type": "application/json; charset=UTF-8"})
    assert reply.status_code == 200, reply.text
    reply = httpx.post(url, content=plain, headers={"Content-Type": "application/json; charset=us-ascii"})
    assert reply.status_code == 200, reply.text  # ASCII is UTF-8
    reply = httpx.post(url, content=b'{"model": "grid", "messages": [{"role": "user", "content": "\xff"}]}',
                       headers=JSON)
    assert reply.status_code == 400 and "not UTF-8 (byte 0xff" in reply.json()["error"]["message"]
    reply = httpx.post(url, json={"model": "m" * 20_000, "messages": hi})
    assert reply.status_code == 404 and len(reply.json()["error"]["message"]) < 400
    assert httpx.get(f"{live_server.url}/v1/models/{'m' * 10_000}").json()["error"]["message"].endswith("does not exist")
    reply = httpx.post(url, json={"model": "grid", "messages": hi, "max_tokens": 10**6})
    assert reply.json()["error"]["code"] == "integer_above_max_value"
    reply = httpx.post(url, json={"model": "grid", "messages": [{"role": "user", "content": "x", "name": "n" * 5000}],
                                  "tool_choice": "x" * 20_000})
    assert len(reply.json()["error"]["message"]) <= MAX_MESSAGE + 40


def test_the_page_and_its_files_carry_headers_that_keep_them_from_being_misused(live_server):
    """The chat page and /static/* had no nosniff, framing or content policy: a browser could sniff a file as
    another type or another site frame the page. The page has no inline code, so `default-src 'self'` holds."""
    for path in ("/", "/static/app.js", "/static/app.css"):
        headers = httpx.get(f"{live_server.url}{path}").headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        policy = headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
    page = httpx.get(f"{live_server.url}/").text
    assert "<script>" not in page and " on" not in page.split("<body", 1)[1].split(">", 1)[0]  # no inline code
