"""Running server-side actions (`tasktune serve --actions`): each call on a bounded pool of daemon threads of its
own, with a deadline, its result copied into plain JSON values, and nothing it raises or does reaching the server.

- **Isolation**: whatever the function raises, `SystemExit` and `KeyboardInterrupt` included, ends that call
  only (`ActionFailed`, the request's 502): raised in a thread of asyncio's default executor, a `SystemExit`
  reached the event loop and stopped the server. Converting the result into JSON values happens on the worker
  thread too, so an odd object (a `Mapping` whose `items()` raises, or blocks) is held to the same rules.
- **A pool of its own**: at most `workers` threads (`--action-workers`), started as needed; actions no longer
  queue behind (or hold up) other users of asyncio's default executor.
- **A deadline** (`--action-timeout`): a call not answered in time, queued or running, is `ActionTimedOut` (the
  request's 504). Python cannot stop a thread: a function that never returns keeps its worker; the pool stays
  bounded, and once every worker hangs a new call waits its deadline out and says so.
- **Seen**: `running` counts the calls on worker threads and `overdue` those whose request stopped waiting
  (/metrics' `tasktune_actions_running` / `tasktune_actions_overdue`): a hung action stays visible there.
- **Daemon threads**: a hung action cannot hold the process at exit (the threads of a ThreadPoolExecutor are
  joined when the interpreter exits); `close(reason)` (the server's shutdown timeout) ends every call still
  waiting at once with `ActionsClosed` (the request's 503 `shutting_down`).
"""

from __future__ import annotations

import asyncio
import math
import numbers
import operator
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = 30.0  # seconds (--action-timeout)
DEFAULT_WORKERS = 32  # threads (--action-workers; as --max-batch-size's default)
MAX_DEPTH = 64  # how deep a result may nest (serve/reading.py holds request JSON to the same depth)


class ActionFailed(Exception):
    """An action raised, or returned something that is not JSON (the server answers 502 `action_failed`)."""


class ActionTimedOut(ActionFailed):
    """An action did not answer within the deadline (the server answers 504 `action_timeout`)."""


class ActionsClosed(Exception):
    """The server is shutting down: a call still waiting is cut (the server answers 503 `shutting_down`)."""


@dataclass(eq=False)
class _Job:
    """One call for the workers; `abandoned` once its request stopped waiting (a queued job is then skipped)."""

    call: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None]
    started: bool = False
    abandoned: bool = False


class _Workers:
    """At most `size` daemon threads taking jobs from one queue, started when a job finds none idle (as
    ThreadPoolExecutor does, without its join at exit)."""

    def __init__(self, size: int):
        self.size, self.started = size, 0
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._running: set[_Job] = set()

    @property
    def running(self) -> int:
        """Calls on a worker thread now."""
        return len(self._running)

    @property
    def overdue(self) -> int:
        """Calls on a worker thread whose request stopped waiting (timed out or cut): hung, or late."""
        return sum(job.abandoned for job in list(self._running))

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)
        if self._idle.acquire(blocking=False):
            return
        with self._lock:
            if self.started < self.size:
                self.started += 1
                threading.Thread(target=self._work, name=f"tasktune-action-{self.started}", daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if not job.abandoned:
                job.started = True
                with self._lock:
                    self._running.add(job)
                try:
                    job.done(*_outcome(job.call))
                finally:
                    with self._lock:
                        self._running.discard(job)
            del job
            self._idle.release()


def _outcome(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except BaseException as exc:  # SystemExit, KeyboardInterrupt too: they end this call, never the server
        return None, _Said(exc)


class _Said(Exception):
    """What an action raised, described on its worker thread: an exception's `__str__` is the library's code too
    (one that raised was a 500 `internal error: RuntimeError` with a traceback on the terminal; one that hangs
    would have held the event loop)."""

    def __init__(self, error: BaseException):
        super().__init__(_said(error))
        self.error = error


class ActionRunner(Mapping[str, Callable[..., Any]]):
    """The `--actions` REGISTRY (tool name -> callable, as a read-only mapping) and the means to run its functions
    (`run`), each call on the pool's threads within `timeout` seconds."""

    def __init__(self, registry: Mapping[str, Callable[..., Any]], *, timeout: float = DEFAULT_TIMEOUT,
                 workers: int = DEFAULT_WORKERS):
        self.registry, self.timeout = dict(registry), timeout
        self._workers = _Workers(workers)
        self._waiting: dict[asyncio.Future, asyncio.AbstractEventLoop] = {}
        self.closed: str | None = None  # why, once `close` was called

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self.registry[name]

    @property
    def running(self) -> int:
        """Calls running on the workers now, overdue ones included."""
        return self._workers.running

    @property
    def overdue(self) -> int:
        """Calls still running whose request no longer waits for them (past --action-timeout, or cut at shutdown):
        Python cannot stop them; each holds one of the --action-workers threads until it returns."""
        return self._workers.overdue

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry)

    def __len__(self) -> int:
        return len(self.registry)

    async def run(self, name: str, arguments: dict[str, Any]) -> Any:
        """`REGISTRY[name](**arguments)`'s result as plain JSON values; ActionFailed (it raised, or returned what
        JSON cannot hold), ActionTimedOut, or ActionsClosed (the server is shutting down)."""
        if self.closed is not None:
            raise ActionsClosed(f"{self.closed} (action {name} was not started)")
        function = self.registry[name]
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(value: Any, error: BaseException | None) -> None:  # on a worker thread
            try:
                loop.call_soon_threadsafe(_settle, future, value, error)
            except RuntimeError:  # the event loop is gone (the server stopped): nobody waits for it
                pass

        job = _Job(lambda: plain_json(function(**arguments)), done)
        self._waiting[future] = loop
        try:
            self._workers.submit(job)
            value, error = await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise ActionTimedOut(self._late(name, job.started)) from None
        finally:
            job.abandoned = True
            self._waiting.pop(future, None)
        if isinstance(error, ActionsClosed):
            raise ActionsClosed(f"{error} (action {name} was still running)")
        if isinstance(error, _Said) and isinstance(error.error, _NotJson):
            raise ActionFailed(f"action {name} returned a result that is not JSON: {error.error}")
        if error is not None:
            raise ActionFailed(f"action {name} failed: {error}")
        return value

    def _late(self, name: str, started: bool) -> str:
        if started:
            return (f"action {name} did not return within {self.timeout:g} s (--action-timeout); it may still be "
                    f"running")
        return (f"action {name} did not start within {self.timeout:g} s (--action-timeout): all "
                f"{self._workers.size} action workers are busy (--action-workers)")

    def close(self, reason: str) -> None:
        """Refuse new calls and end every call still waiting with ActionsClosed(reason) (from any thread; the
        functions themselves run on: a thread cannot be stopped, and the workers are daemon threads)."""
        self.closed = reason
        for future, loop in list(self._waiting.items()):
            try:
                loop.call_soon_threadsafe(_settle, future, None, ActionsClosed(reason))
            except RuntimeError:  # its event loop is closed
                pass


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:  # on the event loop
    if not future.done():
        future.set_result((value, error))


def _said(error: BaseException) -> str:
    """`Type: message`; the type alone when the message is empty or cannot be read (its `__str__` raised)."""
    kind = type(error).__name__
    try:
        text = str(error)
    except BaseException as exc:  # noqa: BLE001 (whatever it raises, the call's failure is still said)
        return f"{kind} (its message could not be read: {type(exc).__name__})"
    return f"{kind}: {text}" if text else kind


class _NotJson(Exception):
    """A result that JSON cannot hold (the message says where in it)."""


def plain_json(value: Any, where: str = "result", depth: int = 0) -> Any:
    """`value` as plain JSON values (dict with string keys, list, str, int, finite float, bool, None; a Mapping
    becomes a dict, a tuple a list); _NotJson naming the place for anything else: NaN, a generator, an object."""
    if depth > MAX_DEPTH:
        raise _NotJson(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(_utf8(value, where))
    if isinstance(value, int):
        try:
            str(value)  # (json.dumps cannot write an integer Python will not convert: over 4,300 digits)
        except ValueError:
            raise _NotJson(f"{where}: an integer too long to write") from None
        return int(value)
    if isinstance(value, numbers.Integral):  # numpy's int64 (a count from numpy or pandas): an int, as it says
        return plain_json(operator.index(value), where, depth)
    if isinstance(value, (float, numbers.Real)):  # numpy's float32 too (float64 is a float)
        number = float(value)
        if not math.isfinite(number):
            raise _NotJson(f"{where}: {value} is not a JSON number")
        return number
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJson(f"{where}: key {_brief(key)} is not a string")
            _utf8(key, f"{where}: key")
            out[key] = plain_json(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [plain_json(item, f"{where}[{k}]", depth + 1) for k, item in enumerate(value)]
    kind = type(value)
    named = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    raise _NotJson(f"{where}: {named!r} is not a JSON type")  # (numpy.bool, not a bare 'bool')


def _utf8(text: str, where: str) -> str:
    """`text`, which must be writable as UTF-8: a lone surrogate (`"\\ud800"`, half an emoji, as a bad decode with
    `surrogateescape` leaves) in a result was a 500 `internal error: UnicodeEncodeError` (a stream was cut)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _NotJson(f"{where}: a string with a lone surrogate ({text[exc.start]!r} at character {exc.start}), "
                       "which UTF-8 cannot write") from None
    return text


def _brief(value: Any) -> str:
    """repr(value) in at most 60 characters, or its type where its repr fails."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        return f"of type {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."
