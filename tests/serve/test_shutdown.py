"""SIGTERM on a real `python -m tasktune serve` process with streams in flight (serve/shutdown.py).

Drain: the streams finish whole, new connections are refused, the process exits 0 with one summary line.
Timeout: with --shutdown-timeout 1 the streams (and a plain request) are cut with an error event / a 503 in
OpenAI's error shape, and the process still exits 0 promptly. Never a traceback on stderr.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "步骤#理解并基于输入拆分函数参数*语音#查查北京的人数"


class ServeProcess:
    """`python -m tasktune serve grid=RUN --port 0 ...` with its stderr in a file; the port read from its banner."""

    def __init__(self, run: Path, log: Path, *flags: str, new_session: bool = False):
        """`new_session`: the server leads a process group of its own (a terminal's Ctrl-C or a container's stop
        signals the whole group: os.killpg)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "tasktune", "serve", f"grid={run}", "--port", "0",
                                      "--max-batch-size", "8", *flags], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=new_session,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.url = self._wait_for_banner(120)

    def _wait_for_banner(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = re.search(r"tasktune serve: .* on (http://127\.0\.0\.1:\d+) ", self.stderr())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"the server did not start:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _stream(url: str, max_tokens: int, out: dict, started: threading.Event) -> None:
    """One streamed chat (end-of-sequence ignored); `out`: status, content chunks, error event, done, finish."""
    body = {"model": "grid", "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": PROMPT}]}
    out.update(chunks=0, error=None, done=False, finish=None)
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    out["done"] = True
                elif line.startswith("data: {"):
                    data = json.loads(line[6:])
                    if "error" in data:
                        out["error"] = data["error"]
                    for choice in data.get("choices", []):
                        if choice["delta"].get("content"):
                            out["chunks"] += 1
                            started.set()
                        out["finish"] = choice["finish_reason"] or out["finish"]
    except httpx.HTTPError as exc:  # a stream cut without its end: the failure this test looks for
        out["broken"] = repr(exc)


#: The drain tests' --shutdown-timeout: 3 x 400 tokens drain in ~6 s on 2 quiet cores, but not within the default
#: 30 s on a loaded machine (2026-12-07, beside other test runs: ~260 of 400 tokens); what they test is the drain.
DRAIN_TIME = ("--shutdown-timeout", "150")


def _start_streams(url: str, n: int, max_tokens: int) -> tuple[list[threading.Thread], list[dict]]:
    outs, threads, started = [{} for _ in range(n)], [], []
    for out in outs:
        started.append(threading.Event())
        threads.append(threading.Thread(target=_stream, args=(url, max_tokens, out, started[-1]), daemon=True))
        threads[-1].start()
    for event in started:
        assert event.wait(60), "a stream sent no content"
    return threads, outs


def _wait_decoding(url: str, rows: int, timeout: float = 60) -> None:
    """Until /metrics says `rows` rows are decoding (tasktune_batch_size)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"^tasktune_batch_size (\S+)$", httpx.get(f"{url}/metrics", timeout=10).text, re.M)
        if found and float(found[1]) >= rows:
            return
        time.sleep(0.05)
    pytest.fail(f"fewer than {rows} rows were decoding after {timeout} s")


def _exit(server: ServeProcess, timeout: float) -> tuple[int, float]:
    start = time.monotonic()
    try:
        code = server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"the server was still running {timeout} s after SIGTERM:\n{server.stderr()}")
    return code, time.monotonic() - start


def _wait_streams_and_exit(server: ServeProcess, threads: list[threading.Thread]) -> tuple[int, int]:
    """After the signal: how many streams were still running, then (all joined) the server's exit code."""
    still_running = sum(t.is_alive() for t in threads)
    for t in threads:
        t.join(150)
    code, _ = _exit(server, 30)
    return still_running, code


def _assert_drained_whole(outs: list[dict], still_running: int) -> None:
    """Every stream ran to its length and [DONE], none cut, and some were still running when the signal came."""
    assert still_running > 0, "the streams ended before the drain could be seen; make them longer"
    for out in outs:
        assert out.get("status") == 200 and "broken" not in out, out
        assert out["error"] is None and out["finish"] == "length" and out["done"], out


@pytest.mark.timeout(240)
def test_sigterm_drains_streams_in_flight_then_exits_0(serve_runs, tmp_path):
    server = ServeProcess(serve_runs["grid"], tmp_path / "serve.log", *DRAIN_TIME)
    try:
        threads, outs = _start_streams(server.url, 3, 400)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # uvicorn notices the signal within 0.1 s and closes the listening socket
        refused = None
        try:
            r = httpx.post(f"{server.url}/v1/chat/completions", timeout=5,
                           json={"model": "grid", "messages": [{"role": "user", "content": "hi"}]})
            refused = r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        except httpx.ConnectError:
            refused = True
        assert refused, "a new request was served during the drain"
        still_running, code = _wait_streams_and_exit(server, threads)
    finally:
        server.kill()
    err = server.stderr()
    _assert_drained_whole(outs, still_running)
    assert code == 0, err
    assert "Traceback" not in err, err
    assert re.search(r"tasktune serve: SIGTERM: drained 3 request\(s\), cancelled 0 \(3 in flight", err), err


@pytest.mark.timeout(240)
def test_shutdown_timeout_cancels_what_is_left_and_exits_promptly(serve_runs, tmp_path):
    server = ServeProcess(serve_runs["grid"], tmp_path / "serve.log", "--shutdown-timeout", "1")
    plain: dict = {}

    def ask() -> None:  # a non-streamed request in flight too
        body = {"model": "grid", "max_tokens": 900, "ignore_eos": True,
                "messages": [{"role": "user", "content": PROMPT}]}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        plain.update(status=r.status_code, body=r.json())

    try:
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        threads, outs = _start_streams(server.url, 2, 900)
        _wait_decoding(server.url, 3)  # the plain request too (under load it had not arrived: 2 in flight, not 3)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code, took = _exit(server, 20)
        for t in [*threads, asking]:
            t.join(10)
    finally:
        server.kill()
    err = server.stderr()
    assert code == 0, err
    assert time.monotonic() - sent < 15, f"took {time.monotonic() - sent:.1f} s to exit"
    assert "Traceback" not in err, err
    for out in outs:  # cut, but cleanly: an error event in OpenAI's shape, then [DONE]
        assert out.get("status") == 200 and "broken" not in out, out
        assert out["chunks"] > 0 and out["done"], out
        assert out["error"]["code"] == "shutting_down" and out["error"]["type"] == "server_error", out
        assert set(out["error"]) == {"message", "type", "param", "code"}, out
    assert plain["status"] == 503 and plain["body"]["error"]["code"] == "shutting_down", plain
    assert re.search(r"SIGTERM: drained 0 request\(s\), cancelled 3 \(3 in flight; shutdown timeout 1 s\)", err), err


@pytest.mark.timeout(240)
def test_sigint_then_a_second_signal_cancels_at_once(serve_runs, tmp_path):
    """Ctrl-C starts the same drain (exit 0, no KeyboardInterrupt traceback); a second signal cuts at once."""
    server = ServeProcess(serve_runs["grid"], tmp_path / "serve.log")  # the default 30 s timeout
    try:
        threads, outs = _start_streams(server.url, 2, 900)
        server.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        code, took = _exit(server, 20)
        for t in threads:
            t.join(10)
    finally:
        server.kill()
    err = server.stderr()
    assert code == 0 and took < 15 and "Traceback" not in err, err
    for out in outs:
        assert out["done"] and out["error"]["code"] == "shutting_down", out
    assert "tasktune serve: SIGINT: drained 0 request(s), cancelled 2" in err, err


@pytest.mark.timeout(240)
def test_a_signal_to_the_process_group_drains_the_engine_process_too(serve_runs, tmp_path):
    """With --engine-process on, Ctrl-C in a terminal (SIGINT to the whole group) reaches the engine's child as
    well; the child leaves its end to the server, so the streams in flight still drain whole."""
    server = ServeProcess(serve_runs["grid"], tmp_path / "serve.log", "--engine-process", "on", *DRAIN_TIME,
                          new_session=True)
    try:
        threads, outs = _start_streams(server.url, 3, 400)
        os.killpg(server.proc.pid, signal.SIGINT)
        still_running, code = _wait_streams_and_exit(server, threads)
    finally:
        server.kill()
    err = server.stderr()
    _assert_drained_whole(outs, still_running)
    assert code == 0 and "Traceback" not in err, err
    assert "engine in its own process" in err
    assert re.search(r"drained 3 request\(s\), cancelled 0", err), err


def _send_and_read(url: str, payload: bytes, wait: float) -> bytes:
    """Open a connection, send `payload` and no more; whatever the server sends until it closes (or `wait`)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as conn:
        if payload:
            conn.sendall(payload)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
        return received


PARTIAL_BODY = (b'POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n'
                b'Content-Length: 1000\r\n\r\n{"model"')


@pytest.mark.timeout(240)
def test_a_client_that_stalls_is_timed_out_and_cannot_hold_the_shutdown(serve_runs, tmp_path):
    """--read-timeout: a connection that sends nothing, or half a head, is closed; a body that stalls gets a 408
    in OpenAI's shape. They were held without end, and a stalled body held SIGTERM's exit for the whole graceful
    timeout (38 s), then got uvicorn's plain-text 500 and a traceback in the log. Now a body still arriving when
    the shutdown begins gets a 503 `shutting_down` at once, and the server exits promptly."""
    import concurrent.futures

    server = ServeProcess(serve_runs["grid"], tmp_path / "timeout.log", "--read-timeout", "1")
    try:
        start = time.monotonic()
        assert _send_and_read(server.url, b"", 20) == b""  # closed by the server, not by the 20 s wait
        assert _send_and_read(server.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost:", 20) == b""
        assert time.monotonic() - start < 10
        reply = _send_and_read(server.url, PARTIAL_BODY, 20)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert httpx.get(f"{server.url}/health").status_code == 200  # and the server serves on
    finally:
        server.kill()

    server = ServeProcess(serve_runs["grid"], tmp_path / "drain.log")  # default --read-timeout 30
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(_send_and_read, server.url, PARTIAL_BODY, 30)
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            code, took = _exit(server, 30)
            reply = stalled.result()
        assert code == 0 and took < 10, (code, took, server.stderr())
        assert reply.startswith(b"HTTP/1.1 503"), reply
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "shutting_down"
        assert "Traceback" not in server.stderr(), server.stderr()
    finally:
        server.kill()
