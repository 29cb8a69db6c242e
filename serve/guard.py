"""The checks every /v1/ request passes before the app sees it: the API key (401), a declared body size over the
limit (413, nothing read), a POST body that is not `application/json`, compressed or in a charset other than
UTF-8 (415), and a server that is draining (503) — each in OpenAI's error shape.

Pure ASGI middleware, not Starlette's `@app.middleware("http")`: that one passes every chunk of a streamed answer
through an extra memory stream and task switch, a per-token cost that showed at many concurrent streams."""

from __future__ import annotations

import hmac
from typing import Callable

from starlette.responses import JSONResponse

from .headers import combined
from .protocol import error_response as _error


class Guard:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, draining: Callable[[], bool],
                 prefix: str = "/v1/", counted: Callable[[int], None] = lambda status: None):
        self.app, self.api_key, self.max_body_bytes, self.draining, self.prefix = (
            app, api_key, max_body_bytes, draining, prefix)
        self.counted = counted  # each refusal's status, for the request counter

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            refusal = self.refusal(combined(scope["headers"]), scope.get("method", "GET"))
            if refusal is not None:
                self.counted(refusal.status_code)
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, headers: dict[str, str], method: str = "GET") -> JSONResponse | None:
        scheme, _, key = headers.get("authorization", "").strip().partition(" ")
        if self.api_key and not (scheme.lower() == "bearer" and  # RFC 7235: the scheme in any case
                                 hmac.compare_digest(key.strip().encode("latin-1"), self.api_key.encode())):
            return _error(401, "Incorrect or missing API key: send `Authorization: Bearer KEY`",
                          "invalid_request_error", "invalid_api_key")
        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > self.max_body_bytes):
            return _error(413, f"request body over this server's limit of {self.max_body_bytes} bytes",
                          code="request_too_large")
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):  # a gzip body was read as text: "not valid JSON: can't decode 0x8b"
            return _error(415, f"Content-Encoding {encoding[:40]!r} is not supported: send the body uncompressed",
                          code="unsupported_content_encoding")
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if method == "POST" and kind != "application/json":  # a form or text/plain body: a cross-site "simple"
            # request a browser sends without a preflight; OpenAI's API takes JSON only
            return _error(415, f"the body must be JSON sent as Content-Type: application/json, not "
                          f"{kind[:60]!r}" if kind else "the body must be JSON sent as Content-Type: "
                          "application/json (the request has no Content-Type)", code="unsupported_media_type")
        charset = _charset(headers.get("content-type", ""))
        if charset not in (None, "utf-8", "utf8", "utf_8", "us-ascii", "ascii"):  # ASCII is UTF-8 too
            return _error(415, f"the body must be UTF-8 JSON; its Content-Type says charset={charset[:40]}",
                          code="unsupported_charset")
        if self.draining():
            return _error(503, "the server is shutting down", "server_error", "shutting_down")
        return None


def _charset(content_type: str) -> str | None:
    """The charset parameter of a Content-Type header, lower-cased and unquoted (None when there is none)."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None

