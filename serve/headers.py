"""Headers that a request may carry once: sent twice, the request is a 400, before any other check reads one.

The checks after this one read a header by its last value (the site guard its Host and Origin, the key guard its
Authorization, the body its Content-Type), while a proxy in front may have read the first: with `Authorization:
Bearer WRONG` then `Authorization: Bearer KEY`, or `Host: evil.example` then `Host: localhost`, the two disagreed
about the same request and the server took the second. RFC 9110 makes a repeated Host a 400; the others are
single values too (no list syntax), so a repeat is a malformed request, whatever its values. Content-Length and
Transfer-Encoding are the HTTP parser's (a repeat never reaches the app); a list header sent twice (Content-Encoding)
is read as its values joined (`combined`), as RFC 9110 reads it."""

from __future__ import annotations

from starlette.responses import JSONResponse

from .protocol import error_response

#: the headers a request may carry once (lower-case): each has a single value, read by one of the guards
SINGLE = ("host", "authorization", "origin", "content-type")


def repeated(headers: list[tuple[bytes, bytes]]) -> JSONResponse | None:
    """A 400 naming the first header of SINGLE that `headers` (ASGI's raw pairs) carries more than once, else None."""
    seen: set[str] = set()
    for raw, _ in headers:
        name = raw.decode("latin-1").lower()
        if name in SINGLE:
            if name in seen:
                shown = "-".join(part.capitalize() for part in name.split("-"))
                return error_response(400, f"the request carries more than one {shown} header: send it once",
                                      code="invalid_header")
            seen.add(name)
    return None


def combined(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI's raw header pairs as {lower-case name: value}, a repeated header's values joined with ", " (RFC 9110
    5.3: `Content-Encoding: gzip` then `Content-Encoding: identity` is `gzip, identity`, not the last alone)."""
    out: dict[str, str] = {}
    for raw, value in headers:
        name, text = raw.decode("latin-1").lower(), value.decode("latin-1")
        out[name] = f"{out[name]}, {text}" if name in out else text
    return out
