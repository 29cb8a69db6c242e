"""Browser test helpers: Debian's Chromium (installed on first use), Playwright on it, and a stub chat server.

Fixtures (import them into a test module): `chromium_path` (session; installs the `chromium` package with
apt-get when /usr/bin/chromium is missing, skips with the reason when that fails), `browser` (session; a
headless Chromium driven by Playwright's sync API) and `page` (a fresh browser context and page per test).

`StubServer` serves the real page (serve/static) in front of a tiny FastAPI app that speaks the same protocol as
`tasktune serve` but answers deterministically: it exists for what a tiny trained model cannot be made to do on
demand (a tool call, a call the server ran, an error in the middle of a stream, events cut inside a character).
"""

# (no `from __future__ import annotations`: FastAPI reads the stub's handler annotations, `Request` included)
import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from importlib.resources import files

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def install_chromium() -> str | None:
    """Install Debian's `chromium` (apt-get update once, then install) -> None, or why it could not be done."""
    if os.geteuid() != 0:
        return f"{CHROMIUM} is missing and installing the `chromium` package needs root (running as uid {os.geteuid()})"
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and there is no apt-get to install the `chromium` package"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(argv)}` failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"`{' '.join(argv)}` exited {done.returncode}: {' | '.join(tail)}"
    return None if os.access(CHROMIUM, os.X_OK) else f"the `chromium` package installed no {CHROMIUM}"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        why = install_chromium()
        if why:
            pytest.skip(f"browser tests need Debian's Chromium: {why}")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path):
    # module scope, not session: Playwright's sync API keeps an asyncio loop running on the main thread while it
    # is open, and a later test's asyncio.run() then fails ("cannot be called from a running event loop")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is in the dev extra")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 760})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


# --- the stub server ---------------------------------------------------------------------------------------------

STUB_MODELS = ["grid", "grid2", "stub-base", "auto"]
TOOL_WORD = "人数"  # a user message with it gets a tool call (as the grid spec's argument step would)
FAIL_WORD = "fail-midway"  # a user message with it gets an error event after the first piece of the answer
# A user message with it gets a call the server ran itself, with its result, as `delta.executed_tool_calls`: an
# extension the page understands; `tasktune serve` has it only in non-streamed answers (message.executed_tool_calls).
EXECUTED_WORD = "run-it"
EXECUTED = {"id": "call_stub1", "name": "query_headcount", "arguments": {"place": "青岛"},
            "result": {"expected": 47, "present": 34}}


def stub_answer(model: str, messages: list[dict]) -> str:
    """The stub's deterministic answer: names the model, the last user text and how many messages came."""
    last = messages[-1].get("content") or ""
    return f"[{model}] 收到「{last}」, {len(messages)} messages so far."


def stub_tool_call(messages: list[dict]) -> dict | None:
    last = messages[-1].get("content") or ""
    if TOOL_WORD not in last:
        return None
    return {"id": "call_stub0", "type": "function",
            "function": {"name": "query_headcount", "arguments": json.dumps({"place": "济南", "task": "人数检测"},
                                                                           ensure_ascii=False)}}


def stub_app(api_key: str | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

    static = files("tasktune.serve") / "static"
    app = FastAPI()

    def error(status: int, message: str, code: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": code}}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/") and api_key and \
                request.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "Incorrect or missing API key (stub)", "invalid_api_key")
        return await call_next(request)

    @app.get("/")
    async def index():
        return FileResponse(str(static / "index.html"), media_type="text/html")

    @app.get("/static/{name}")
    async def static_file(name: str):
        return FileResponse(str(static / name))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "tasktune"}
                                           for m in STUB_MODELS]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if body.get("model") not in STUB_MODELS:
            return error(404, f"The model `{body.get('model')}` does not exist", "model_not_found")
        messages = body["messages"]
        text, call = stub_answer(body["model"], messages), stub_tool_call(messages)
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            if call:
                message["tool_calls"] = [call]
            return {"object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}]}
        last = messages[-1].get("content") or ""
        events = _stub_events(text, call, FAIL_WORD in last, EXECUTED if EXECUTED_WORD in last else None)
        return StreamingResponse(events, media_type="text/event-stream")

    return app


async def _stub_events(text: str, call: dict | None, fail: bool, executed: dict | None):
    """SSE bytes of the answer in 5-character pieces, 20 ms apart, each sent in two writes cut inside a character."""
    def event(delta: dict, finish: str | None = None) -> bytes:
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    pieces = [event({"role": "assistant", "content": ""})]
    pieces += [event({"content": text[i:i + 5]}) for i in range(0, len(text), 5)]
    if fail:
        pieces = pieces[:2] + [b'data: {"error": {"message": "generation failed: stub", "type": "server_error"}}\n\n']
    elif call:
        pieces.append(event({"tool_calls": [dict(call, index=0)]}))
    elif executed:
        pieces.append(event({"executed_tool_calls": [executed]}))
    if not fail:
        pieces.append(event({}, "tool_calls" if call else "stop"))
    pieces.append(b"data: [DONE]\n\n")
    for data in pieces:
        cut = next((i for i, b in enumerate(data) if b >= 0xC0), len(data) // 2) + 1  # inside a multi-byte char
        for part in (data[:cut], data[cut:]):
            yield part
            await asyncio.sleep(0.01)


class StubServer:
    """`stub_app` under uvicorn on 127.0.0.1 (a free port) in a daemon thread; `.url`, `.stop()`."""

    def __init__(self, api_key: str | None = None):
        import uvicorn

        self.api_key = api_key
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(stub_app(api_key), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the stub server did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def stub_server():
    server = StubServer()
    yield server
    server.stop()
