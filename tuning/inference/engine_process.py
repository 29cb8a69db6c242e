"""The engine in a process of its own, so the HTTP side and the model's Python do not share one GIL.

In one process, uvicorn's event loop (parsing requests, tokenizing prompts, sending server-sent events) and the
engine thread (eager prefill, sampling, detokenizing) take turns at the GIL: on an H200 the engine alone decoded
32 rows in 8.2 ms a step and admitted them in one 50 ms admission, and beside the HTTP side 9.8 ms and ~240 ms a
wave (benchmarks/RESULTS.md). `EngineProcess` keeps the Engine's outside (`submit`, `close`, `shutdown`, `stats`,
`alive`, `closed`, `max_batch_size`, `bank`) and runs the Engine itself in a spawned child that loads the model;
the parent holds only the runs and the tokenizer (`BankView`); the child's side is tuning/inference/engine_child.py.

The wire: two one-way pipes of pickled tuples. Parent -> child: ("submit", id, prompt ids, run, SamplingParams,
arrival time), ("cancel", id), ("close", message), ("shutdown",), sent by one writer thread (so `close` may be
called from a signal handler: it only puts on a SimpleQueue). Child -> parent: ("ready", device, decode mode,
dequantised, fused layers) or ("failed", kind, message) once, then ("events", [(id, Event)], counters,
[(metric, seconds)]) batches: the child's sender thread sends what the engine emitted since its last send, so a
decode step of N rows is one message. If the child dies, every request in flight ends with an error event and
/health says so.
"""

from __future__ import annotations

import atexit
import dataclasses
import multiprocessing
import queue
import sys
import threading

from tasktune.errors import ConfigError

from .engine import EngineStats, Event, Request
from .engine_child import ChildConfig, child_main


class EngineProcess:
    """The Engine's interface, the engine in a spawned child process (see the module's docstring)."""

    def __init__(self, view, config: ChildConfig, *, start_timeout: float = 900.0):
        """`view`: the runs' BankView (bank.load_view); blocks until the child has loaded the model (its failure is
        raised here: a ConfigError when the child's was one)."""
        self.bank = view
        self.max_batch_size = config.max_batch_size
        self.stats = EngineStats()
        self.dequantised = 0
        self.fused = 0
        self._pending: dict[int, Request] = {}
        self._lock = threading.Lock()  # _pending and _ended: the event loop adds, the reader thread ends them
        self._ended: str | None = None  # set (under _lock) once the child is gone: why
        self._closed = threading.Event()
        self._stopping = False  # shutdown() began: what is left ends "cancelled", as the thread's engine ends it
        self._close_message = "server shutting down"
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        context = multiprocessing.get_context("spawn")  # a forked CUDA context is unusable; spawn also starts clean
        commands_in, self._commands = context.Pipe(duplex=False)
        self._events, events_out = context.Pipe(duplex=False)
        self._process = context.Process(target=child_main, args=(commands_in, events_out, config),
                                        name="tasktune-engine", daemon=True)
        self._process.start()
        commands_in.close()
        events_out.close()
        # Before multiprocessing's own exit hook, which would SIGTERM the child (ignored there) and join it forever
        # when the server's process ends without shutdown() (an exception, Ctrl-C while the model loads)
        atexit.register(self._end_child)
        try:
            self._ready(start_timeout)
        except BaseException:
            self._end_child()
            raise
        self._writer = threading.Thread(target=self._write, name="tasktune-engine-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="tasktune-engine-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def _ready(self, timeout: float) -> None:
        if not self._events.poll(timeout):
            raise RuntimeError(f"the engine process did not load the model within {timeout:g} s")
        try:
            message = self._events.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"the engine process exited while loading the model (exit code "
                               f"{self._process.exitcode}; its error is above)") from None
        if message[0] == "failed":
            _, kind, text = message
            raise (ConfigError if kind == "ConfigError" else RuntimeError)(text)
        _, device, self.decode, self.dequantised, self.fused = message
        import torch

        self.bank = dataclasses.replace(self.bank, device=torch.device(device))

    def _end_child(self, timeout: float = 10.0) -> None:
        """Close the command pipe (the child ends at its end of file), wait up to `timeout`, else kill; reap it.
        Idempotent; the exit hook and shutdown() both come here."""
        atexit.unregister(self._end_child)
        self._commands.close()
        self._process.join(timeout)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join(5)

    # -- the Engine's outside ------------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        if request.adapter is not None and request.adapter not in self.bank.runs:
            raise ConfigError(f"unknown run {request.adapter!r}")
        with self._lock:  # the reader ends what is pending once, under this lock: nothing is added after that
            ended = self._ended
            if ended is None and not self._closed.is_set():
                self._pending[request.id] = request
        if ended is not None or self._closed.is_set():
            request.emit(Event(finish_reason="cancelled" if self._closed.is_set() else "error",
                               error=self._close_message if self._closed.is_set() else ended,
                               prompt_tokens=len(request.prompt_ids)))
            return request
        request.on_cancel = lambda: self._cancel(request.id)
        self.stats.waiting += 1  # until the child's next counters
        self._outbox.put(("submit", request.id, request.prompt_ids, request.adapter, request.params,
                          request.arrived))
        return request

    def _cancel(self, request_id: int) -> None:
        if request_id in self._pending:  # a finished request's cancel (every stream's last act) sends nothing
            self._outbox.put(("cancel", request_id))

    def close(self, message: str = "server shutting down") -> None:
        """As Engine.close: from any thread or a signal handler (it only queues the message)."""
        self._close_message = message
        self._closed.set()
        self._outbox.put(("close", message))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel what is in flight, stop the child (killed if it does not stop within `timeout`), and the threads."""
        self._stopping = True
        self._outbox.put(("shutdown",))
        self._outbox.put(None)  # the writer sends "shutdown", then stops
        self._writer.join(timeout)
        self._reader.join(timeout)  # it ends at the child's end (and reaps it)
        self._end_child(timeout)  # a child that did not stop: killed
        self._reader.join(5)
        self._events.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def alive(self) -> bool:
        """Whether the child still serves: its event pipe is open (the reader sees its end of file at its death;
        no waitpid here, which the reader's reaping would race)."""
        return self._ended is None and self._reader.is_alive()

    # -- the parent's two threads --------------------------------------------------------------------------
    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._commands.send(message)
            except (BrokenPipeError, OSError):  # the child is gone; the reader fails what was in flight
                return
            except Exception as exc:  # a message that does not pickle: its request alone fails
                if message[0] == "submit":
                    with self._lock:
                        request = self._pending.pop(message[1], None)
                    if request is not None:
                        _deliver(request, Event(finish_reason="error", error=f"{type(exc).__name__}: {exc}",
                                                prompt_tokens=len(request.prompt_ids)))

    def _read(self) -> None:
        try:
            while True:
                _, events, counters, observed = self._events.recv()
                self.stats.waiting, self.stats.running, self.stats.steps, self.stats.tokens = counters
                for name, value in observed:
                    try:
                        self.stats.observe(name, value)
                    except Exception:  # an observer's failure (a metric) must not end the stream of events
                        pass
                for request_id, event in events:
                    with self._lock:
                        request = self._pending.pop(request_id, None) if event.finish_reason else \
                            self._pending.get(request_id)
                    if request is not None:
                        _deliver(request, event)
        except (EOFError, OSError):
            pass
        except Exception as exc:  # a message this side cannot read: the child cannot be trusted any more
            print(f"tasktune serve: the engine process sent what could not be read ({type(exc).__name__}: "
                  f"{exc}); stopping it", file=sys.stderr, flush=True)
        finally:
            self._fail_pending()

    def _fail_pending(self) -> None:
        """The child is gone (or stopped): every request still pending ends, once."""
        if self._process.exitcode is None:
            self._process.join(5)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join(5)
        stopping = self._closed.is_set() or self._stopping
        message = self._close_message if stopping else \
            f"the engine process exited (exit code {self._process.exitcode})"
        with self._lock:
            left, self._pending, self._ended = list(self._pending.values()), {}, message
        for request in left:
            _deliver(request, Event(finish_reason="cancelled" if stopping else "error", error=message,
                                    prompt_tokens=len(request.prompt_ids)))
        self.stats.waiting = self.stats.running = 0


def _deliver(request: Request, event: Event) -> None:
    try:
        request.emit(event)
    except Exception:  # the client's own failure: nobody is left to tell
        pass
