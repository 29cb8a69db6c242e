"""The engine's process (tuning/inference/engine_process.py spawns it): build the bank and the Engine, turn the
server's commands into Engine calls, send the Engine's events back one message a decode step.

The child ignores SIGINT/SIGTERM (the server, which gets them too from a terminal's Ctrl-C or a container's stop,
drains first and then ends the child) and ends at "shutdown" or when its command pipe closes (the server's process
ended).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

from tasktune.errors import ConfigError
from tasktune.tuning.run import Trust

from .engine import Event, Request


COUNTERS_EVERY = 0.1
"""Seconds between the child's looks at the engine's counters when no event woke it: counters that changed after
the last event (a batch that emptied, a queue that drained) reach the parent within this."""


@dataclass(frozen=True)
class ChildConfig:
    """What the child needs to build the bank and the engine (picklable)."""

    run_dirs: list[tuple[str | None, str]]
    max_batch_size: int
    decode: str
    slot_width: int
    decode_weights: str = "nf4"
    threads: int = 0
    fuse: str = "auto"
    max_queue_delay: float = 0.0
    trust: Trust = Trust()  # what the base may run as it loads: the user's flags (tuning/run.py)


def child_main(commands, events, config: ChildConfig) -> None:
    """The child's main thread: build the bank and the engine, then turn commands into engine calls until
    "shutdown" or the parent's end of the pipe closes (the parent died)."""
    import signal

    # A terminal's Ctrl-C or a container's stop signals the whole process group: the server drains its requests
    # and then ends this process, so the signal must not end it first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine, dequantised = build_engine(config)
    except BaseException as exc:  # told to the parent, which raises it; the traceback stays here, on stderr
        if not isinstance(exc, ConfigError):
            import traceback

            traceback.print_exc()
        _send(events, ("failed", type(exc).__name__, str(exc) if isinstance(exc, ConfigError)
                       else f"{type(exc).__name__}: {exc} (the engine process's traceback is above)"))
        return
    if not _send(events, ("ready", str(engine.bank.device), engine.decode, dequantised, engine.fused)):
        engine.shutdown()  # the server went away while the model loaded
        return
    sender = _Sender(events, engine)
    engine.stats.observers.append(sender.observe)
    requests: dict[int, Request] = {}
    try:
        while True:
            try:
                message = commands.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "submit":
                _, request_id, prompt_ids, adapter, params, arrived = message
                request = Request(prompt_ids, adapter, params, emit=sender.emitter(request_id, requests),
                                  arrived=arrived)
                requests[request_id] = request
                engine.submit(request)
            elif kind == "cancel":
                request = requests.get(message[1])
                if request is not None:
                    request.cancel()
            elif kind == "close":
                engine.close(message[1])
            elif kind == "shutdown":
                break
    finally:
        engine.shutdown()
        sender.stop()


def _send(events, message) -> bool:
    """Send to the parent; False when it is gone."""
    try:
        events.send(message)
        return True
    except (BrokenPipeError, OSError):
        return False


def build_engine(config: ChildConfig, tokenizer=None):
    """The bank and the started Engine of `config` in this process, and how many 4-bit linears were dequantised
    (--decode-weights bf16). `tokenizer`: the base's, when the caller has loaded it (load_bank's argument)."""
    import torch

    from .bank import load_bank
    from .engine import Engine

    if config.threads:
        torch.set_num_threads(config.threads)
    bank = load_bank(config.run_dirs, tokenizer, trust=config.trust)
    dequantised = 0
    if config.decode_weights == "bf16":
        from tasktune.tuning.model.dequantize import dequantize_4bit_linears

        dequantised = dequantize_4bit_linears(bank.model)
    engine = Engine(bank, max_batch_size=config.max_batch_size, decode=config.decode,
                    slot_width=config.slot_width, fuse=config.fuse,
                    max_queue_delay=config.max_queue_delay).start()
    return engine, dequantised


class _Sender:
    """The child's events to the parent: the engine thread appends, this thread sends what piled up since its last
    send as one message, with the engine's counters and the metric observations."""

    def __init__(self, events, engine):
        self._events, self._stats = events, engine.stats
        self._box: collections.deque = collections.deque()
        self._observed: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tasktune-engine-sender", daemon=True)
        self._thread.start()

    def emitter(self, request_id: int, requests: dict[int, Request]):
        def emit(event: Event) -> None:  # on the engine thread
            if event.finish_reason:
                requests.pop(request_id, None)
            self._box.append((request_id, event))
            self._wake.set()
        return emit

    def observe(self, name: str, value: float) -> None:  # on the engine thread
        self._observed.append((name, value))
        self._wake.set()

    def _run(self) -> None:
        sent = None  # the counters last sent
        while True:
            self._wake.wait(COUNTERS_EVERY)
            self._wake.clear()
            batch = [self._box.popleft() for _ in range(len(self._box))]
            observed = [self._observed.popleft() for _ in range(len(self._observed))]
            stats = self._stats
            counters = (stats.waiting, stats.running, stats.steps, stats.tokens)
            if batch or observed or counters != sent:  # an idle engine's last counters arrive too (/health, /metrics)
                if not _send(self._events, ("events", batch, counters, observed)):
                    return
                sent = counters
            if self._stop and not self._box:
                return

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(10)
