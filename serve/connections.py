"""A deadline for the request head: a connection that has not sent a whole request line and headers within
--read-timeout seconds of opening (or of its last response) is closed. uvicorn closes a kept-alive connection
that sends nothing after a response, but one that opens and sends nothing, or sends its headers a byte at a time,
was held without end: each pins a socket, and enough of them use up the process's file descriptors. (The body's
own deadline is serve/bodylimit.py's: once the head is in, the app answers with a 408.)"""

from __future__ import annotations

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def with_head_deadline(timeout: float, base: type = AutoHTTPProtocol) -> type:
    """uvicorn's HTTP protocol class (httptools' where installed, else h11's) with the head deadline."""

    class HeadDeadline(base):
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
            self._head_timer = self.loop.call_later(timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            """No request in progress since the timer was armed: nothing, or an unfinished head, came."""
            self._head_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    HeadDeadline.__name__ = HeadDeadline.__qualname__ = f"HeadDeadline{base.__name__}"
    return HeadDeadline
