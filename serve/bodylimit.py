"""--max-body-bytes for bodies of any framing: a request body sent chunked (no Content-Length) is counted as it
arrives and refused with 413 once over the limit, before the app reads it (the Content-Length case is refused
earlier, in serve/app.py's guard, without reading anything)."""

from __future__ import annotations

import json

from .protocol import error_body


class BodyLimit:
    """Pure ASGI middleware for paths under `prefix`: buffer the body up to `limit` bytes, then hand it on."""

    def __init__(self, app, limit: int, prefix: str = "/v1/", counted=lambda status: None):
        self.app, self.limit, self.prefix, self.counted = app, limit, prefix, counted

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body was complete
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._refuse(send)
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

    async def _refuse(self, send) -> None:
        self.counted(413)
        payload = json.dumps(error_body(f"request body over this server's limit of {self.limit} bytes",
                                        code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
