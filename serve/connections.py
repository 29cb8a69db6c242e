"""uvicorn's HTTP protocol with what a server facing any client needs below the app: a deadline and a size bound
for the request head, and protocol errors answered in OpenAI's error shape.

- Deadline: a connection that has not sent a whole request line and headers within --read-timeout seconds of
  opening (or of its last response) is closed. uvicorn closes a kept-alive connection that sends nothing after
  a response, but one that opens and sends nothing, or sends its headers a byte at a time, was held without end:
  each pins a socket, and enough of them use up the process's file descriptors. (The body's own deadline is
  serve/bodylimit.py's: once the head is in, the app answers with a 408.)
- Size: a head (request line and headers) over --max-header-bytes gets 431 Request Header Fields Too Large and
  the connection is closed. httptools (uvicorn's parser where installed) has no bound of its own: 200 headers of
  1 MB each were read whole (+170 MB). Bytes are counted as they arrive while a head is unfinished, so at most
  the bound plus one read (asyncio reads at most 256 KiB) is ever held; the parsed line and headers are counted
  exactly too. Under h11 (without httptools) its own bound on an unfinished event (uvicorn.Config's
  h11_max_incomplete_event_size, serve/shutdown.py) is set to the same size; h11
  answers an oversized head with a 400.
- Protocol errors: a request the parser refuses (an unknown method, a bad chunk size, Content-Length beside
  Transfer-Encoding, a negative Content-Length) got uvicorn's plain-text "Invalid HTTP request received."; it
  now gets the same 400 as a JSON body in OpenAI's shape, code `invalid_http_request`, and the connection closes.
"""

from __future__ import annotations

import http
import json

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .protocol import error_body

MAX_HEAD_BYTES = 32 * 1024  # (Limits.max_head_bytes and --max-header-bytes default to it)
"""The default bound on a request's head: between Node's 16 KiB and nginx's 4 x 8 KiB buffers (32 KiB in all),
far above what API clients send (an API key, a few headers), with room for a browser's cookies on localhost."""


class _HeadTooLarge(Exception):
    """Raised in a parser callback: httptools then stops parsing, and uvicorn calls send_400_response."""


class _Deadline:
    """The head deadline (see the module docstring); `head_timeout` is set on the composed class."""

    head_timeout: float = 30.0
    _head_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        """No request in progress since the timer was armed: nothing, or an unfinished head, came."""
        self._head_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


class _JsonErrors:
    """Protocol-level errors as OpenAI-shaped JSON (uvicorn writes them as text/plain)."""

    _head_refused = False

    def send_400_response(self, msg: str) -> None:
        if self._head_refused:
            self.send_error(431, f"the request's line and headers are over this server's limit of "
                                 f"{self.max_head_bytes} bytes (--max-header-bytes)", "request_header_fields_too_large")
        else:
            self.send_error(400, "invalid HTTP request: the request line, headers or chunked body could not be "
                                 "parsed", "invalid_http_request")

    def send_error(self, status: int, message: str, code: str) -> None:
        """Write `status` with an OpenAI error body and close the connection (no app ran: nothing else to send)."""
        if self.transport.is_closing():
            return
        body = json.dumps(error_body(message, code=code)).encode()
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()


class _HttpToolsHeadLimit:
    """The head bound under httptools (see the module docstring); `max_head_bytes` is set on the composed class."""

    max_head_bytes: int = MAX_HEAD_BYTES
    _in_head = True  # the next bytes belong to a head (a connection starts with one; so does the next request)
    _head_seen = 0  # bytes received since that head began (its end may have come with body bytes)
    _head_parsed = 0  # its request line and headers as parsed

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_seen += len(data)
        super().data_received(data)
        if self._in_head and self._head_seen > self.max_head_bytes and not self.transport.is_closing():
            self._head_refused = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        self._head_parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._parsed(len(url) + 16)  # the method and version around it
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_seen = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_seen = True, 0

    def _parsed(self, size: int) -> None:
        self._head_parsed += size
        if self._head_parsed > self.max_head_bytes:
            self._head_refused = True
            raise _HeadTooLarge


def with_head_deadline(timeout: float, max_head_bytes: int = MAX_HEAD_BYTES,
                       base: type = AutoHTTPProtocol) -> type:
    """uvicorn's HTTP protocol class (httptools' where installed, else h11's) with the head's deadline and bound,
    and protocol errors in OpenAI's shape."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's h11 protocol
        HttpToolsProtocol = None
    # (under h11 the bound is its own: uvicorn.Config's h11_max_incomplete_event_size, serve/shutdown.py)
    limit = (_HttpToolsHeadLimit,) if HttpToolsProtocol and issubclass(base, HttpToolsProtocol) else ()
    name = f"HeadDeadline{base.__name__}"
    return type(name, (_Deadline, _JsonErrors, *limit, base),
                {"head_timeout": timeout, "max_head_bytes": max_head_bytes, "__qualname__": name})
