"""--max-body-bytes and --read-timeout for bodies of any framing: a request body sent chunked (no Content-Length) is
counted as it arrives and refused with 413 once over the limit, before the app reads it (the Content-Length case
is refused earlier, in serve/app.py's guard, without reading anything); a body that has not all arrived within
the timeout is a 408, and one still arriving when the server begins its shutdown a 503 `shutting_down` at once.
A stalled body was waited for without end: it pinned a task and a connection, and held the shutdown for its
whole graceful timeout, then ended in uvicorn's plain-text 500."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

from .protocol import error_body

#: how often a body's wait looks at the clock and the drain flag (seconds)
POLL = 0.25


class BodyLimit:
    """Pure ASGI middleware for paths under `prefix`: buffer the body up to `limit` bytes within `timeout`
    seconds, then hand it on."""

    def __init__(self, app, limit: int, prefix: str = "/v1/", counted=lambda status: None, timeout: float = 30.0,
                 draining: Callable[[], bool] = lambda: False):
        self.app, self.limit, self.prefix, self.counted = app, limit, prefix, counted
        self.timeout, self.draining = timeout, draining

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        deadline = time.monotonic() + self.timeout
        while True:
            message = await self._next(receive, deadline)
            if isinstance(message, tuple):  # (status, error body): timed out, or the server is shutting down
                return await self._refuse(send, *message)
            if message["type"] != "http.request":  # the client left before its body was complete
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._refuse(send, 413, error_body(
                    f"request body over this server's limit of {self.limit} bytes", code="request_too_large"))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnects (a stream stops when its client leaves)

        await self.app(scope, replay, send)

    async def _next(self, receive, deadline: float):
        """The next ASGI message, or (status, error body) when the deadline passes or the drain begins first."""
        pending = asyncio.ensure_future(receive())
        try:
            while True:
                left = deadline - time.monotonic()
                done, _ = await asyncio.wait({pending}, timeout=max(0.0, min(POLL, left)))
                if done:
                    return pending.result()
                if self.draining():
                    return 503, error_body("the server is shutting down", "server_error", "shutting_down")
                if time.monotonic() >= deadline:
                    return 408, error_body(f"the request body did not arrive within this server's read timeout "
                                           f"of {self.timeout:g} s", code="request_timeout")
        finally:
            if not pending.done():
                pending.cancel()

    async def _refuse(self, send, status: int, body: dict) -> None:
        self.counted(status)
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
