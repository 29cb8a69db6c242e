"""Graceful shutdown of `tasktune serve` on SIGTERM or SIGINT (uvicorn's Server, with a drain made explicit).

1. The first SIGTERM/SIGINT: the listening socket closes (new connections are refused) and idle keep-alive
   connections are closed; a request that still reaches the app gets 503 `shutting_down` in OpenAI's error
   shape, and /health answers 503.
2. Requests in flight (streams included) keep decoding for up to `--shutdown-timeout` seconds.
3. Then, or at once on a second signal, the engine cancels every row and queued request, and every request
   waiting for a server-side action stops waiting (`Service.cut`; the action's daemon thread is left to itself,
   so a hung action cannot hold the exit): a stream gets a final `data: {"error": {... "code":
   "shutting_down"}}` event and `data: [DONE]`; a plain request a 503.
4. uvicorn waits GRACE seconds more for those last bytes (its `timeout_graceful_shutdown` is the timeout plus
   GRACE) and only then cancels connections that are still open.
5. The engine thread stops and one line goes to stderr (a model call or an action cut counts as cancelled):
   `tasktune serve: SIGTERM: drained 2 request(s), cancelled 1 (3 in flight; shutdown timeout 30 s)`.

Exit code 0 in every case: stopping when asked is a server's normal end (systemd and Kubernetes read 0 as a clean
stop); whether requests had to be cut is in the line. (`tasktune train` exits 143 on SIGTERM because its work
is left unfinished; a server has no unfinished work of its own.) uvicorn would re-raise the signal after its
shutdown (the process then dies by SIGTERM, or with a KeyboardInterrupt traceback on SIGINT); this server
does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from typing import Callable

import uvicorn

#: seconds uvicorn waits, after the engine cancelled what was left, for the last events to be sent
GRACE = 5.0


class GracefulServer(uvicorn.Server):
    """uvicorn's Server for one tasktune app: a timed drain, then cancellation through the engine."""

    def __init__(self, app, service, *, host: str, port: int, shutdown_timeout: float,
                 banner: Callable[[int], str] | None = None, read_timeout: float = 30.0):
        from .connections import with_head_deadline

        protocol = with_head_deadline(read_timeout, service.limits.max_head_bytes)  # the head's deadline and bound
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=protocol,
                                h11_max_incomplete_event_size=service.limits.max_head_bytes,  # (httptools: ours)
                                timeout_graceful_shutdown=shutdown_timeout + GRACE)
        super().__init__(config)
        self.app, self.service, self.shutdown_timeout = app, service, shutdown_timeout
        self.banner = banner  # the line printed once the port is open, given the port bound
        self.signal: str | None = None  # the signal that started the shutdown
        self.in_flight = 0  # model calls in flight when it started
        self._begun = False

    # -- startup: say where we listen once we do ----------------------------------------------------------
    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.banner:
            port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
            print(self.banner(port), file=sys.stderr, flush=True)

    # -- signals ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's, without re-raising the signal after the shutdown (the process exits 0 instead)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame) -> None:
        if self.signal is not None:  # a second signal: cancel what is left now (streams still end cleanly)
            self.service.cut("the server is shutting down (second signal)")
            return
        self.signal = signal.Signals(sig).name
        self.begin()
        self.should_exit = True

    # -- the drain ----------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Refuse new requests (503) and start counting how the ones in flight end."""
        if self._begun:
            return
        self._begun = True
        self.app.state.draining = True
        self.in_flight = self.service.begin_shutdown()

    def cancel_rest(self) -> None:
        self.service.cut(f"the server is shutting down: answers still running after {self.shutdown_timeout:g} s "
                         f"are cut")

    async def shutdown(self, sockets=None) -> None:
        self.begin()
        timer = asyncio.get_running_loop().call_later(self.shutdown_timeout, self.cancel_rest)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def summary(self) -> str | None:
        """The one line for stderr (None when no shutdown began)."""
        if not self._begun:
            return None
        ended = self.service.shutdown_outcomes
        return (f"tasktune serve: {self.signal or 'stopped'}: drained {ended['drained']} request(s), cancelled "
                f"{ended['cancelled']} ({self.in_flight} in flight; shutdown timeout {self.shutdown_timeout:g} s)")
