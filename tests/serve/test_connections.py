"""Below the app (serve/connections.py): a request head over --max-header-bytes is a 431 and the connection closes
(httptools read 200 headers of 1 MB each whole), and requests the HTTP parser refuses get a 400 in OpenAI's JSON
shape (uvicorn wrote text/plain). The server serves on afterwards."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

LIMIT = 4096


class ProtocolServer:
    """`tasktune serve`'s own uvicorn server (serve/shutdown.py's GracefulServer, the protocol class it builds from
    the service's limits) for a LiveServer's app, on another free port, in a thread."""

    def __init__(self, live):
        from tasktune.serve.shutdown import GracefulServer

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = GracefulServer(live.app, live.service, host="127.0.0.1", port=self.port, shutdown_timeout=1,
                                     read_timeout=30)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def small_head(serve_runs):
    """A server started with --max-header-bytes 4096 (its own engine: the shutdown below drains only it)."""
    from tests.serve.conftest import LiveServer

    live = LiveServer([f"grid={serve_runs['grid']}", "--max-header-bytes", str(LIMIT)])
    server = ProtocolServer(live)
    yield server
    server.stop()
    live.stop()


def exchange(port: int, chunks: list[bytes], pause: float = 0.0) -> tuple[int, dict, bytes]:
    """Send `chunks` on a raw socket (stopping where the server closes it) and read the response: its status,
    headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        for chunk in chunks:
            try:
                conn.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(pause)
        data = b""
        try:
            while part := conn.recv(65536):
                data += part
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def request_head(pad: int, count: int = 1) -> bytes:
    lines = [f"X-Pad-{i}: {'a' * pad}\r\n" for i in range(count)]
    return ("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(lines) + "\r\n").encode()


def serves(port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["status"] == "ok"


@pytest.mark.parametrize("chunks", [
    [request_head(1000, 8)],  # ~8 KB of headers at once: a whole head over the limit
    [request_head(1000, 200)],  # the tester's shape, smaller: 200 headers
    [b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "] + [b"a" * 1024] * 64,  # one header that never ends
    [b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"],  # a long request line
])
def test_a_head_over_the_limit_is_a_431_and_the_server_serves_on(small_head, chunks):
    status, headers, body = exchange(small_head.port, chunks, pause=0.001 if len(chunks) > 1 else 0.0)
    assert status == 431 and headers["connection"] == "close", (status, headers, body[:200])
    error = json.loads(body)["error"]
    assert error["code"] == "request_header_fields_too_large" and "--max-header-bytes" in error["message"]
    assert serves(small_head.port)


def test_a_head_under_the_limit_is_served_and_so_is_the_next_on_the_same_connection(small_head):
    status, _, body = exchange(small_head.port, [request_head(1000, 3).replace(b"\r\n\r\n",
                                                                                b"\r\nConnection: close\r\n\r\n")])
    assert status == 200 and json.loads(body)["status"] == "ok"
    with httpx.Client(base_url=f"http://127.0.0.1:{small_head.port}") as client:  # kept alive: heads counted anew
        for _ in range(5):
            assert client.get("/health", headers={"X-Pad": "a" * 3000}).status_code == 200


@pytest.mark.parametrize("raw", [
    b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
])
def test_a_request_the_parser_refuses_is_a_400_in_openais_shape(small_head, raw):
    status, headers, body = exchange(small_head.port, [raw])
    assert status == 400 and headers["content-type"] == "application/json", (status, headers, body)
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_http_request" and error["type"] == "invalid_request_error"
    assert serves(small_head.port)


def test_the_default_limit_and_the_h11_fallback():
    """Without httptools uvicorn parses with h11, whose own bound on an unfinished head (uvicorn.Config's
    h11_max_incomplete_event_size) the server sets to the same size."""
    import asyncio
    from types import SimpleNamespace

    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    from tasktune.serve.connections import MAX_HEAD_BYTES, with_head_deadline
    from tasktune.serve.service import Limits
    from tasktune.serve.shutdown import GracefulServer

    assert Limits().max_head_bytes == MAX_HEAD_BYTES == 32 * 1024

    async def app(scope, receive, send):
        pass

    server = GracefulServer(app, SimpleNamespace(limits=Limits(max_head_bytes=2048)), host="127.0.0.1", port=0,
                            shutdown_timeout=1)
    config = server.config
    config.load()
    protocol = with_head_deadline(30, 2048, base=H11Protocol)
    assert issubclass(protocol, H11Protocol)
    loop = asyncio.new_event_loop()
    try:
        assert protocol(config, ServerState(), {}, _loop=loop).conn._max_incomplete_event_size == 2048
    finally:
        loop.close()
