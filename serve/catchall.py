"""The last line of the HTTP layer: an exception nothing else handled becomes OpenAI's 500 error shape *inside*
the other middleware, so the CORS headers, the request counter and the guard still apply to it.

Starlette sends an unhandled exception to its ServerErrorMiddleware, which sits outside every user middleware:
a browser then saw a CORS failure instead of the error body. Pure ASGI; once a response has started (a stream),
nothing can be sent any more, so the exception goes on up (uvicorn logs it and closes the connection)."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("tasktune.serve")


class CatchAll:
    def __init__(self, app, *, response: Callable):
        self.app, self.response = app, response  # response(exc) -> the Response to send

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            await self.response(exc)(scope, receive, send)
