"""Continuous batching of requests for many prefixes on one base: one thread owns the model and steps a batch.

Each loop of the engine thread:
1. admit waiting requests into free slots (up to `max_batch_size` rows), prefill them together (left-padded,
   each row with its own prefix) and sample their first token;
2. merge their caches into the running batch (left padding to the longest row: the 2D attention mask hides it),
   or in slots mode (tuning/inference/slots.py) copy their blocks, prefilled in the slots' layout, into free slots;
3. decode one token for every row at once;
4. finish rows that are done (eos, a stop string, max_tokens) or whose client went away; their slots are free
   for the next loop, so a short request that arrives while a long one decodes joins it and finishes first. The
   dynamic batch keeps a finished row (decoded along, ignored) until the next merge or until half the batch is
   finished, so a finish and the arrival that follows it cost one cache rebuild, not two (`_settle`).

Why not transformers' continuous batching (`generate_batch`, paged cache)? It flattens every request into one
row of a paged cache, while a P-tuning v2 prefix is per row: our attention wrapper prepends each row's prefix
keys/values, which the paged kernels cannot take, and its API moved between the transformers versions we
support. The padded dynamic cache used here is what `generate()` itself uses for eval's batches, so greedy
answers equal eval's (tests/serve/test_engine.py).

Longer than 300 lines because the scheduler (admit, prefill, merge caches, decode, retire) owns one thread and its
batch state; every step touches the same rows, so it is kept in one class.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from tasktune.errors import ConfigError

from .detokenize import IncrementalText
from .stops import cut_at_stop, sendable, stop_at

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily. Dividing the logits by 1e-300 (or 5e-324) overflows to inf and softmax
gives NaN; at 1e-5 a logit gap of 0.001 is already a factor e^100, so the sample is the argmax anyway. Above it,
logits / temperature stay far inside float32's range."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes: greedy when temperature is 0 (or below GREEDY_BELOW), else temperature + top-p with
    its own seed (torch.Generator takes -2**63 .. 2**64-1; the server admits OpenAI's int64)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass
class Event:
    """What the engine reports for a request: new text, and at the end the reason it finished."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    full_text: str | None = None  # the whole answer, on the finishing event (deltas may hold back odd bytes)


@dataclass(eq=False)
class Request:
    """A prompt (token ids) for one served run (`adapter`; None = the base model) and where its events go."""

    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    emit: Callable[[Event], None]
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)  # CLOCK_MONOTONIC: the same clock in every process
    on_cancel: Callable[[], None] | None = None  # an engine in another process is told here (engine_process.py)

    def cancel(self) -> None:
        """Free the request's slot at the next step (a client that went away)."""
        self.cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel()


@dataclass(eq=False)
class _Row:
    """A request being decoded: its tokens so far, their text, the text already sent, its sampler."""

    request: Request
    text: IncrementalText
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    generator: torch.Generator | None = None
    first_token_at: float | None = None
    slot: int = -1  # slots mode: the row's slot
    done: bool = False  # finished and reported; the dynamic batch drops it at its next rebuild (`_settle`)


class EngineStats:
    """Counters the metrics endpoint reads (the engine thread writes them)."""

    def __init__(self):
        self.waiting = 0
        self.running = 0
        self.steps = 0
        self.tokens = 0
        self.observers: list[Callable[[str, float], None]] = []

    def observe(self, name: str, value: float) -> None:
        for observer in self.observers:
            observer(name, value)


ARRIVAL_GAP = 0.005
"""Seconds: an idle engine takes arrivals closer together than this as one burst, admitted together
(`_admission_due`)."""


class Engine:
    """Owns the model on one thread; `submit()` from any thread; events come back through each request's `emit`."""

    def __init__(self, bank, *, max_batch_size: int = 32, idle_wait: float = 0.05, decode: str = "auto",
                 slot_width: int = 512, fuse: str = "auto", max_queue_delay: float = 0.0):
        """`decode`: "dynamic" (the padded dynamic batch), "slots" (fixed slots of `slot_width` columns, CUDA
        graphs on a GPU: tuning/inference/slots.py) or "auto" (slots on CUDA, dynamic elsewhere). `fuse`: "on"
        runs the slots' decode steps through torch.compile'd decoder layers (tuning/inference/fused_decode.py),
        "auto" does so on CUDA, "off" never. `max_queue_delay` (seconds): how long a waiting request may be held
        back so that requests arriving right after it share its prefill (`_admission_due`); 0: admit at once."""
        if max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be >= 1, got {max_batch_size}")
        if decode not in ("auto", "dynamic", "slots"):
            raise ConfigError(f"decode must be auto, dynamic or slots, got {decode!r}")
        if fuse not in ("auto", "on", "off"):
            raise ConfigError(f"fuse must be auto, on or off, got {fuse!r}")
        self.bank, self.tokenizer, self.model = bank, bank.tokenizer, bank.model
        self.max_batch_size = max_batch_size
        self.idle_wait = idle_wait
        if not 0 <= max_queue_delay <= 10:
            raise ConfigError(f"max_queue_delay must be 0 .. 10 seconds, got {max_queue_delay!r}")
        self.max_queue_delay = max_queue_delay
        self._last_arrival = 0.0  # perf_counter of the latest submit
        self.stats = EngineStats()
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id
        self._waiting: queue.Queue[Request] = queue.Queue()
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # (rows, cached length): 1 = a real token
        self._prefix = None  # the running rows' PrefixKV, rebuilt only when rows join or leave
        if decode == "auto":
            decode = "slots" if self.bank.device.type == "cuda" else "dynamic"
        self.decode = decode
        self._slots = self._make_slots(slot_width) if decode == "slots" else None
        from tasktune.tuning.inference.fused_decode import fuse_decode_layers, unfuse_decode_layers

        if self._slots is not None and (fuse == "on" or (fuse == "auto" and self.bank.device.type == "cuda")):
            self.fused = fuse_decode_layers(self.model)  # decoder layers whose slot steps run compiled
            self._slots.compile_prefill = bool(self.fused)  # and the prefill of joining rows
        else:
            unfuse_decode_layers(self.model)  # an earlier engine over this model may have fused it
            self.fused = 0
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by submit/close/shutdown: an idle loop starts at once
        self._closed = threading.Event()  # close(): cancel everything, refuse what comes later
        self._close_message = "server shutting down"
        self._thread = threading.Thread(target=self._loop, name="tasktune-engine", daemon=True)

    # -- the outside -------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._slots is not None:
            self._slots.warm_up()  # CUDA graphs (and fused layers' compile) before the first request, not during it
        self._thread.start()
        return self

    def submit(self, request: Request) -> Request:
        if request.adapter is not None and request.adapter not in self.bank.runs:
            raise ConfigError(f"unknown run {request.adapter!r}")
        if self._closed.is_set():
            request.emit(Event(finish_reason="cancelled", error=self._close_message,
                               prompt_tokens=len(request.prompt_ids)))
            return request
        self._last_arrival = time.perf_counter()
        self._waiting.put(request)
        self.stats.waiting = self._waiting.qsize()
        self._wake.set()
        return request

    def close(self, message: str = "server shutting down") -> None:
        """From any thread (a signal handler too): at the next step, end every running and queued request with
        finish_reason "cancelled" and `message`; requests submitted later are cancelled at once."""
        self._close_message = message
        self._closed.set()
        self._wake.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel what is in flight and stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _make_slots(self, width: int):
        from tasktune.tuning.model.prefix import read_prefix_shape

        from tasktune.tuning.inference.slots import Slots

        shape = read_prefix_shape(self.model.config)
        dtype = next(iter(self.bank.kv.values())).dtype if self.bank.kv else \
            self.model.get_input_embeddings().weight.dtype
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            dtype = torch.bfloat16
        return Slots(self.model, self.max_batch_size, width + self.bank.width, shape.num_layers, shape.num_kv_heads,
                     shape.head_dim, dtype, graphs=True)

    # -- the loop ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._closed.is_set():
                    if self._rows or not self._waiting.empty():
                        self._fail_all(self._close_message, reason="cancelled")
                    self._idle()
                    continue
                admitted = self._admit()
                if not self._rows and not admitted:
                    self._idle() if self._waiting.empty() else None
                    continue
                if self._rows:
                    self._decode()
            except Exception as exc:  # a failed step fails its requests, never the server
                self._fail_all(f"{type(exc).__name__}: {exc}")
        self._fail_all("server shutting down", reason="cancelled")

    def _idle(self) -> None:
        """Nothing to do: wait until a request comes (submit wakes us at once; before, an idle loop slept
        idle_wait = 50 ms whatever came, so a request reaching an idle server waited up to 50 ms for its first
        token) or idle_wait passes."""
        self._wake.wait(self.idle_wait)
        self._wake.clear()

    def _fail_all(self, message: str, reason: str = "error") -> None:
        """Every row and queued request ends: only for what the whole batch shares (its forward, its cache), a
        close or the shutdown. One row's own failure ends that row alone (`_fail_row`)."""
        for row in self._live():
            _tell(row.request, Event(finish_reason=reason, error=message, prompt_tokens=len(row.request.prompt_ids),
                                     completion_tokens=len(row.tokens)))
        if self._slots is not None:
            for row in self._rows:
                self._slots.release(row.slot)
        self._rows, self._cache, self._mask, self._prefix = [], None, None, None
        while True:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                break
            _tell(request, Event(finish_reason=reason, error=message, prompt_tokens=len(request.prompt_ids)))
        self.stats.running = self.stats.waiting = 0

    def _fail_row(self, row: _Row, exc: Exception) -> None:
        """One row's own failure (its generator, its sampling, its text, its client's callback): it alone ends with
        an error event and counts as finished, so `_settle` frees its place as any finished row's; the other rows
        decode on. Before, such an error reached `_loop` and failed every request in the batch."""
        row.done = True
        _tell_failed(row.request, exc, completion_tokens=len(row.tokens))

    def _admission_due(self) -> bool:
        """Admit the waiting requests now, or hold them back a little (False) so that more share their prefill.
        Each admission is one prefill whose cost is mostly fixed (a 6B GLM on an H100, eager: ~26 ms for one prompt,
        ~54 ms for 32) and stalls every running row meanwhile, and clients of a batch come in bursts (their previous
        answers ended at the same step): 32 arrivals admitted as they came cost 2-4 prefills a wave. So, as
        text-generation-inference's router does (it waits for enough waiting requests, or for max_waiting_tokens
        steps): admit at once when the waiting fill the free slots; else, while rows decode, decode on (their steps
        are due anyway) until the oldest has waited `max_queue_delay`; an idle engine waits only until arrivals
        pause for ARRIVAL_GAP (a lone request: that long), within the same bound. Off by default (0): on an H100
        it cut the admissions' time in some serve_bench rounds but not the tokens/s (benchmarks/RESULTS.md)."""
        while self.max_queue_delay > 0:
            if self._stop.is_set() or self._closed.is_set():
                return False  # the loop cancels what waits
            waiting, running = self._waiting.qsize(), len(self._live())
            if not waiting or waiting >= self.max_batch_size - running:
                return True
            try:
                oldest = self._waiting.queue[0].arrived  # only this thread takes from the queue
            except IndexError:
                return True
            now = time.perf_counter()
            if now - oldest >= self.max_queue_delay:
                return True
            if running:
                return False
            wait = min(self._last_arrival + ARRIVAL_GAP, oldest + self.max_queue_delay) - now
            if wait <= 0:
                return True
            time.sleep(wait)
        return True

    def _admit(self) -> bool:
        if not self._admission_due():
            return False
        new: list[_Row] = []
        running = len(self._live())
        while running + len(new) < self.max_batch_size:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                break
            if request.cancelled.is_set():
                _tell(request, Event(finish_reason="cancelled", prompt_tokens=len(request.prompt_ids)))
                continue
            if self._slots is not None:
                need = len(request.prompt_ids) + self.bank.offset(request.adapter) + request.params.max_new_tokens
                if need >= self._slots.width:
                    _tell(request, Event(finish_reason="error", prompt_tokens=len(request.prompt_ids),
                                         error=f"prompt + prefix + max_tokens = {need} tokens do not fit this "
                                               f"server's {self._slots.width}-column slots"))
                    continue
            row = self._new_row(request)
            if row is not None:
                new.append(row)
        self.stats.waiting = self._waiting.qsize()
        if not new:
            return False
        started = time.perf_counter()
        parts = self._prefill_apart(new)
        try:
            for part in parts:
                self._join(*part)
        except Exception as exc:  # the batch's shared state failed: fail the new requests here, then the batch
            for row in new:
                if not row.done and not any(r is row for r in self._rows):
                    _tell_failed(row.request, exc)
            raise
        self.stats.observe("prefill_seconds", time.perf_counter() - started)
        return True

    def _new_row(self, request: Request) -> _Row | None:
        """The row of an admitted request, with its sampler; None (the request ended with an error event) when its
        own parameters fail (a seed torch.Generator cannot take): that request alone, before any forward."""
        try:
            return _Row(request, IncrementalText(self.tokenizer), generator=self._generator(request.params))
        except Exception as exc:
            _tell_failed(request, exc)
            return None

    def _prefill_apart(self, rows: list[_Row]) -> list[tuple]:
        """The new rows prefilled together; when that fails, each alone, so a request whose own prefill fails (a
        token id outside the vocabulary, a prompt too long for memory) ends with an error event and the others
        join. The running batch is untouched: a prefill only reads the model, the batch changes at `_join`.
        Returns what `_join` takes, one tuple per prefill that worked."""
        try:
            return [self._prefill(rows)]
        except Exception as exc:
            if len(rows) == 1:
                self._fail_row(rows[0], exc)
                return []
        parts = []
        for row in rows:
            try:
                parts.append(self._prefill([row]))
            except Exception as exc:
                self._fail_row(row, exc)
        return parts

    @torch.inference_mode()
    def _forward(self, input_ids, mask, positions, prefix, cache):
        """One forward call; `prefix`: the rows' PrefixKV (None: no row has a prefix)."""
        extra = {} if prefix is None else {"tasktune_prefix": prefix.fresh()}
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1, **extra)
        return out.logits[:, -1, :].float(), out.past_key_values

    def _prefill(self, rows: list[_Row]):
        """The new rows' forward over their prompts (left-padded, each with its prefix): what `_join` takes,
        (rows, cache, mask, logits) or in slots mode (rows, blocks, seen, logits) (`_prefill_slots`). Reads the
        model only, so a failure here concerns these rows alone."""
        requests = [row.request for row in rows]
        names = [r.adapter for r in requests]
        ids, mask = self._padded(requests)
        positions = self._positions(mask, names)
        if self._slots is not None:
            return self._prefill_slots(rows, ids, mask, positions)
        from transformers import DynamicCache

        logits, cache = self._forward(ids, mask, positions, self.bank.batch(names),
                                      DynamicCache(config=self.model.config))
        return rows, cache, mask, logits

    def _padded(self, requests: list[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts left-padded to the longest, on the model's device: (ids, mask), mask 1 = a real token."""
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        device = self.bank.device
        return ids.to(device), mask.to(device)

    def _prefill_slots(self, rows: list[_Row], ids, mask, positions):
        """Slots mode: each row's block [padding | its prefix | its left-padded prompt], the prefixes right-aligned
        to the widest, prefilled in the slots' own layout (`Slots.prefill`)."""
        names = [row.request.adapter for row in rows]
        widest = max(self.bank.offset(n) for n in names)
        blocks = self._slots.new_blocks(len(rows), widest + ids.shape[1])
        seen = torch.zeros((len(rows), blocks.shape[4]), dtype=torch.bool, device=blocks.device)
        seen[:, widest:] = mask.bool()
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            if name is not None:
                groups.setdefault(name, []).append(i)
        for name, members in groups.items():  # one copy per run: all its rows, every layer
            length, index = self.bank.offset(name), torch.tensor(members, device=blocks.device)
            blocks[:, :, index, :, widest - length:widest] = self.bank.kv[name].unsqueeze(2).to(blocks.dtype)
            seen[index, widest - length:widest] = True
        logits = self._slots.prefill(ids, positions, blocks, seen)
        return rows, blocks, seen, logits

    def _join(self, rows: list[_Row], state, mask: torch.Tensor, logits: torch.Tensor) -> None:
        """Prefilled rows join the running batch (merged cache, or their blocks into slots) and sample their first
        token; `state`, `mask`: the prefill's cache and 2D mask, or its blocks and `seen` (slots)."""
        if self._slots is None:
            self._merge(rows, state, mask)
        else:
            self._place(rows, state, mask)
        self._advance(rows, logits)

    def _place(self, rows: list[_Row], blocks: torch.Tensor, seen: torch.Tensor) -> None:
        """Slots mode: copy the new rows' blocks into free slots, all rows at once (`Slots.place_blocks`) when the
        block and each row's answer fit a slot, else each row's own columns packed alone (`Slots.place`)."""
        free = self._slots.free_slots()
        for i, row in enumerate(rows):
            row.slot = free[i]
        if seen.shape[1] + max(r.request.params.max_new_tokens for r in rows) < self._slots.width:
            self._slots.place_blocks([row.slot for row in rows], blocks, seen)
        else:
            for i, row in enumerate(rows):
                self._slots.place(row.slot, [(keys[i][:, seen[i]], values[i][:, seen[i]]) for keys, values in blocks])
        self._rows = self._rows + rows

    def _positions(self, mask: torch.Tensor, names: list[str | None]) -> torch.Tensor:
        """Text positions from the mask (left padding), shifted by each row's prefix length."""
        offsets = torch.tensor([self.bank.offset(n) for n in names], device=mask.device)[:, None]
        return (mask.long().cumsum(-1) - 1).clamp(min=0) + offsets

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Put newly prefilled rows into the running batch: left-pad the shorter cache to the longer one. Finished
        rows still in the batch are dropped in the same copy (one rebuild for both: `_settle`)."""
        if self._cache is None:
            self._rows, self._cache, self._mask = rows, cache, mask
            self._prefix = self.bank.batch([row.request.adapter for row in self._rows])
            return
        old_layers, old_mask, old_rows = self._kept()
        width = max(old_mask.shape[1], mask.shape[1])
        layers = []
        for old, new in zip(old_layers, _layers(cache)):
            layers.append(tuple(torch.cat([_left_pad(a, width), _left_pad(b, width)], dim=0)
                                for a, b in zip(old, new)))
        self._cache = _rebuild(layers, self.model.config)
        self._mask = torch.cat([_left_pad_mask(old_mask, width), _left_pad_mask(mask, width)], dim=0)
        self._rows = old_rows + rows
        self._prefix = self.bank.batch([row.request.adapter for row in self._rows])

    def _live(self) -> list[_Row]:
        """The rows still decoding (finished ones may stay in the dynamic batch until its next rebuild)."""
        return [row for row in self._rows if not row.done]

    def _settle(self) -> None:
        """Retire finished rows now, or leave them in the dynamic batch until the next arrival's merge.

        When many short requests cycle, a row finishes every few steps and its client's next request arrives a
        step or two later; rebuilding the cache for each finish and again for each arrival took 11 % of the engine
        thread at 16 streams on the CPU (benchmarks/RESULTS.md). A finished row decoded along costs little (a
        step is mostly per-call overhead), so it waits for `_merge`, which drops it in the same copy. The batch is
        rebuilt here only once finished rows are half of it; slots (cheap to free) are freed at once."""
        finished = len(self._rows) - len(self._live())
        if finished and (self._slots is not None or 2 * finished >= len(self._rows)):
            self._retire()
        self.stats.running = len(self._live())

    def _retire(self) -> None:
        """Drop the finished rows (slots: free theirs) and the cache columns no remaining row uses."""
        if self._slots is not None:
            for row in self._rows:
                if row.done:
                    self._slots.release(row.slot)
            self._rows = self._live()
            return
        if not self._live():
            self._rows, self._cache, self._mask, self._prefix = [], None, None, None
            return
        layers, self._mask, self._rows = self._kept()
        self._cache = _rebuild(layers, self.model.config)
        self._prefix = self.bank.batch([row.request.adapter for row in self._rows])

    def _kept(self):
        """The live rows' (cache layers, mask, rows) without the columns none of them uses; as they are when no
        row finished."""
        keep = [i for i, row in enumerate(self._rows) if not row.done]
        if len(keep) == len(self._rows):
            return _layers(self._cache), self._mask, self._rows
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        layers = [tuple(t.index_select(0, index)[:, :, start:] for t in layer) for layer in _layers(self._cache)]
        return layers, mask[:, start:], [self._rows[i] for i in keep]

    def _decode(self) -> None:
        started = time.perf_counter()
        if self._slots is not None:
            tokens, positions = [0] * self._slots.rows, [0] * self._slots.rows
            for row in self._rows:
                tokens[row.slot] = row.tokens[-1]
                positions[row.slot] = (self.bank.offset(row.request.adapter) + len(row.request.prompt_ids)
                                       + len(row.tokens) - 1)
            logits = self._slots.step(tokens, positions)  # the leading slots, which hold every row
            index = torch.tensor([row.slot for row in self._rows], device=logits.device)
            self._advance(self._rows, logits.index_select(0, index))
            self.stats.steps += 1
            self.stats.observe("step_seconds", time.perf_counter() - started)
            return
        # a finished row still in the batch decodes along (its output is ignored); it may have no token yet
        last = torch.tensor([[(row.tokens or row.request.prompt_ids)[-1]] for row in self._rows],
                            device=self._mask.device)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        names = [row.request.adapter for row in self._rows]
        positions = self._positions(self._mask, names)[:, -1:]
        logits, self._cache = self._forward(last, self._mask, positions, self._prefix, self._cache)
        self._advance(self._rows, logits)
        self.stats.steps += 1
        self.stats.observe("step_seconds", time.perf_counter() - started)

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample each live row's next token, send its new text, mark the rows that finished and settle them. A row
        whose own step fails ends alone (`_fail_row`)."""
        chosen = self._sample(rows, logits)
        now = time.perf_counter()
        for row, token in zip(rows, chosen):
            if row.done:
                continue
            try:
                self._step_row(row, token, now)
            except Exception as exc:
                self._fail_row(row, exc)
        self._settle()

    def _step_row(self, row: _Row, token: int, now: float) -> None:
        """One live row's new token: its text so far, a stop string, its length; the delta is sent."""
        request, params = row.request, row.request.params
        if row.first_token_at is None:
            row.first_token_at = now
            self.stats.observe("ttft_seconds", now - request.arrived)
        reason = None
        if request.cancelled.is_set():
            reason = "cancelled"
        elif token == self.eos and not params.ignore_eos:
            reason = "stop"
        else:
            row.tokens.append(token)
            self.stats.tokens += 1
        text = row.text.feed(row.tokens).lstrip()  # a few tokens decoded, not the whole answer again
        if reason is None and stop_at(text, params.stop, row.sent) >= 0:
            reason = "stop"
        if reason is None and len(row.tokens) >= params.max_new_tokens:
            reason = "length"
        if reason is not None:  # the answer as eval reads it: its tokens decoded whole, once, cut at a stop
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True).lstrip()
            text, stopped = cut_at_stop(text, params.stop) if reason != "cancelled" else (text, False)
            reason = "stop" if stopped else reason
        elif text.endswith("\ufffd"):
            text = row.sent  # half of a multi-byte character: wait for the rest
        else:  # the start of a stop string that the next tokens may complete waits (stops.py)
            text = sendable(text, params.stop)
        delta = text[len(row.sent):] if text.startswith(row.sent) else ""
        row.sent = text if reason is None or text.startswith(row.sent) else row.sent
        event = Event(text=delta, finish_reason=reason, prompt_tokens=len(request.prompt_ids),
                      completion_tokens=len(row.tokens), full_text=text if reason else None)
        if reason is not None:
            row.done = True
            self.stats.observe("latency_seconds", now - request.arrived)
        if delta or reason:
            request.emit(event)

    def _generator(self, params: SamplingParams) -> torch.Generator | None:
        """The row's own sampler (None: greedy). Raises for a seed torch cannot take; `_new_row` fails that request
        alone."""
        if params.temperature < GREEDY_BELOW:
            return None
        generator = torch.Generator(device=self.bank.device)
        generator.manual_seed(params.seed if params.seed is not None else torch.seed() % (2**63))
        return generator

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Each row's next token: the argmax for greedy rows, `_sample_row` for the others; a row whose sampling
        fails ends alone (`_fail_row`; its token is ignored)."""
        greedy = logits.argmax(dim=-1).tolist()
        out = []
        for i, row in enumerate(rows):
            if row.generator is None or row.done:
                out.append(greedy[i])
                continue
            try:
                out.append(self._sample_row(row, logits[i]))
            except Exception as exc:
                self._fail_row(row, exc)
                out.append(greedy[i])
        return out

    def _sample_row(self, row: _Row, logits: torch.Tensor) -> int:
        """Temperature, then top-p, then a draw with the row's generator. Softmax subtracts the maximum, so with
        temperature >= GREEDY_BELOW nothing overflows in float32; logits that are not finite (a broken model)
        would still make NaN probabilities, which multinomial refuses: such a row takes the argmax, as greedy
        rows do."""
        params = row.request.params
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if not bool(torch.isfinite(probs).all()):
            return int(logits.argmax())
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=row.generator))


def _tell(request: Request, event: Event) -> None:
    """Send an event the engine cannot do without sending (a failure, a cancellation): an `emit` that raises (its
    client's problem) must not take the engine thread or the batch with it; nobody is left to tell."""
    try:
        request.emit(event)
    except Exception:
        pass


def _tell_failed(request: Request, exc: Exception, completion_tokens: int = 0) -> None:
    """The error event that ends `request` because of `exc`."""
    _tell(request, Event(finish_reason="error", error=f"{type(exc).__name__}: {exc}",
                         prompt_tokens=len(request.prompt_ids), completion_tokens=completion_tokens))


# -- cache plumbing: transformers' DynamicCache as per-layer (keys, values) tensors ------------------------

def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _rebuild(layers, config):
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for idx, (keys, values) in enumerate(layers):
        cache.update(keys, values, idx)
    return cache


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, width, D), zeros in front."""
    missing = width - t.shape[2]
    if missing <= 0:
        return t
    return torch.cat([t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3])), t], dim=2)


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return mask if missing <= 0 else torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)
