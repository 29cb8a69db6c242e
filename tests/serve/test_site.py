"""Pages on other sites cannot use a local server (serve/site.py: Origin, Host; serve/guard.py: JSON bodies only)."""

from __future__ import annotations

import httpx
import pytest

from tasktune.serve.site import SiteGuard, allowed_hosts

HELLO = [{"role": "user", "content": "你好"}]
BODY = {"model": "grid", "messages": HELLO, "max_tokens": 2}


def test_a_request_from_another_origin_is_a_403_and_the_pages_own_origin_is_served(live_server):
    """A cross-site POST ran and generated (the page could not read the answer, but the work was done); a browser
    sends Origin on it. The chat page's own fetches carry this server's origin (Chromium sends it on a same-origin
    POST) and still answer; clients that are not browsers send no Origin."""
    url = f"{live_server.url}/v1/chat/completions"
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{live_server.port + 1}",
                   f"https://127.0.0.1:{live_server.port}", f"http://localhost:{live_server.port}"):
        reply = httpx.post(url, json=BODY, headers={"Origin": origin})
        assert reply.status_code == 403, (origin, reply.text)
        assert reply.json()["error"]["code"] == "origin_not_allowed"
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{live_server.url}/v1/models", headers={"Origin": "http://evil.example"}).status_code == 403
    reply = httpx.post(url, json=BODY, headers={"Origin": live_server.url})
    assert reply.status_code == 200, reply.text
    assert httpx.get(f"{live_server.url}/v1/models", headers={"Origin": f"{live_server.url}/"}).status_code == 200
    assert httpx.get(f"{live_server.url}/").status_code == 200


def test_a_host_other_than_this_machines_is_a_403_on_a_loopback_server(live_server):
    """DNS rebinding: a page at http://evil.example:PORT whose name then resolves to 127.0.0.1 is same-origin to
    the browser, and its requests say `Host: evil.example:PORT`; they were answered."""
    url = f"{live_server.url}/v1/chat/completions"
    for host in ("evil.example", f"evil.example:{live_server.port}", "localhost.evil.example"):
        reply = httpx.post(url, json=BODY, headers={"Host": host, "Origin": f"http://{host}"})
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "host_not_allowed", (host, reply.text)
        assert httpx.get(f"{live_server.url}/", headers={"Host": host}).status_code == 403
    for host in ("localhost", f"LOCALHOST:{live_server.port}", "127.0.0.1:1", "[::1]:8000", "[::1]"):
        reply = httpx.post(url, json=BODY, headers={"Host": host})
        assert reply.status_code == 200, (host, reply.text)


def test_allowed_hosts_and_cors_origins():
    """--allowed-host names more Host names (`*`: any); bound elsewhere than loopback, any Host unless names are
    given; an origin --cors-origin allows passes (`*`: any)."""
    assert allowed_hosts("127.0.0.1", []) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("::1", ["API.example"]) == {"localhost", "127.0.0.1", "::1", "api.example"}
    assert allowed_hosts("0.0.0.0", []) is None and allowed_hosts("127.0.0.1", ["*"]) is None
    assert allowed_hosts("0.0.0.0", ["box"]) == {"localhost", "127.0.0.1", "::1", "box"}
    guard = SiteGuard(None, hosts=allowed_hosts("127.0.0.1", ["api.example"]), cors_origins=("http://app.example",))
    assert guard.refusal("http", {"host": "api.example:8000"}) is None
    assert guard.refusal("http", {"host": "10.1.2.3:8000"}) is None  # an IP address: no DNS to rebind
    assert guard.refusal("http", {"host": "other.example"}).status_code == 403
    assert guard.refusal("http", {"host": "localhost", "origin": "http://app.example"}) is None
    assert guard.refusal("http", {"host": "localhost", "origin": "http://localhost:80"}) is None
    assert guard.refusal("https", {"host": "localhost", "origin": "http://localhost"}).status_code == 403
    assert guard.refusal("http", {"host": "localhost", "origin": "http://app2.example"}).status_code == 403
    anyone = SiteGuard(None, hosts=None, cors_origins=("*",))
    assert anyone.refusal("http", {"host": "x.example", "origin": "http://y.example"}) is None
