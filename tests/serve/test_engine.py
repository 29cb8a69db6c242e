"""tuning/inference/engine.py: greedy answers equal eval's whatever shares the batch; continuous batching; freed slots."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tasktune.tuning.inference.engine import Engine, Request, SamplingParams


@pytest.fixture(scope="module")
def bank(serve_runs):
    from tasktune.tuning.inference.bank import load_bank

    return load_bank([("grid", serve_runs["grid"]), ("grid2", serve_runs["grid2"])])


@pytest.fixture(scope="module")
def prompt_ids(bank, serve_prompts):
    from tasktune.tuning.data import encode_prompts, format_prompt

    tok = bank.tokenizer
    return encode_prompts(tok, [format_prompt(tok, q, [], template="auto") for q in serve_prompts], "auto")


class Collector:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if event.finish_reason:
            self.done.set()

    def text(self) -> str:
        assert self.done.wait(60), "the engine never finished the request"
        assert self.events[-1].full_text is not None, self.events[-1]  # an error or a cancellation has no text
        return self.events[-1].full_text.strip()


def answer(engine, ids, params, run="grid") -> str:
    """The whole answer of one request to `engine` (waited for)."""
    done = Collector()
    engine.submit(Request(ids, run, params, done))
    return done.text()


def eval_answers(run_dir, prompt_ids, max_new_tokens):
    """What `tasktune eval` answers: the run loaded its way, generate_batched, tuned and base."""
    from tasktune.tuning.model.methods import load_run_adapter
    from tasktune.tuning.model.generate import generate_batched
    from tasktune.tuning.model.load import load_tokenizer
    from tasktune.tuning.run import RunFolder

    record = RunFolder(run_dir).record()
    tok = load_tokenizer(record.config.model)
    adapter = load_run_adapter(run_dir, record)
    tuned, _ = generate_batched(adapter.model, tok, prompt_ids, batch_size=4, max_new_tokens=max_new_tokens,
                                reserved_positions=adapter.reserved_positions, progress=False)
    with adapter.disabled() as base_model:
        base, _ = generate_batched(base_model, tok, prompt_ids, batch_size=4, max_new_tokens=max_new_tokens,
                                   progress=False)
    return tuned, base


def mixed_batch(engine, prompt_ids, max_new_tokens: int) -> dict:
    """Every prompt to two prefixes of different lengths and to the base, all submitted at once: the answers by
    (run, prompt index)."""
    jobs = {}
    for name in ("grid", "grid2", None):
        for i, ids in enumerate(prompt_ids):
            jobs[name, i] = Collector()
            engine.submit(Request(ids, name, SamplingParams(max_new_tokens=max_new_tokens), jobs[name, i]))
    return {key: c.text() for key, c in jobs.items()}


def assert_answers_as_eval(got: dict, serve_runs, prompt_ids, max_new_tokens: int) -> None:
    """`mixed_batch`'s answers are what `tasktune eval` answers, tuned for each run and base for the base."""
    for name in ("grid", "grid2"):
        tuned, base = eval_answers(serve_runs[name], prompt_ids, max_new_tokens)
        assert [got[name, i] for i in range(len(prompt_ids))] == tuned
        assert [got[None, i] for i in range(len(prompt_ids))] == base


def test_mixed_batch_answers_equal_eval(bank, serve_runs, prompt_ids):
    engine = Engine(bank, max_batch_size=32).start()
    try:
        got = mixed_batch(engine, prompt_ids, 24)
    finally:
        engine.shutdown()
    assert_answers_as_eval(got, serve_runs, prompt_ids, 24)
    assert got["grid", 0] != got["grid2", 0] != got[None, 0]  # the rows really had different prefixes


def test_short_request_joins_a_long_one_and_finishes_first(bank, prompt_ids):
    engine = Engine(bank, max_batch_size=4).start()
    sizes = []
    engine.stats.observers.append(lambda name, _: sizes.append(engine.stats.running) if name == "step_seconds"
                                  else None)
    try:
        long, short = Collector(), Collector()
        engine.submit(Request(prompt_ids[0], "grid", SamplingParams(max_new_tokens=60, ignore_eos=True), long))
        while not long.events:
            time.sleep(0.001)
        engine.submit(Request(prompt_ids[1], "grid2", SamplingParams(max_new_tokens=3, ignore_eos=True), short))
        assert short.done.wait(60)
        assert not long.done.is_set()  # the short one finished while the long one was still decoding
        assert long.done.wait(60)
        assert long.events[-1].completion_tokens == 60 and short.events[-1].completion_tokens == 3
        # rows left after each step: 2 while they decoded together, then 1 (the long one alone), 0 at its end
        assert max(sizes) == 2 and 1 in sizes[sizes.index(2):]
    finally:
        engine.shutdown()


def test_rows_finishing_and_joining_at_staggered_steps_answer_as_alone(bank, prompt_ids):
    """Dynamic batch: rows join (merged caches, left-padded) and leave (cache columns dropped) at odd steps; whatever
    the schedule, every answer equals the same request decoded alone and the batch ends empty."""
    lengths = [3, 17, 5, 29, 9, 2, 13]
    jobs = [(prompt_ids[i % len(prompt_ids)], ("grid", "grid2", None)[i % 3], n) for i, n in enumerate(lengths)]

    def answers(max_batch_size: int, staggered: bool) -> list[str]:
        # max_queue_delay=0: each request joins at once (no holding back to share a prefill), at odd steps
        engine = Engine(bank, max_batch_size=max_batch_size, decode="dynamic", max_queue_delay=0).start()
        rows_seen = []
        engine.stats.observers.append(lambda name, _: rows_seen.append(len(engine._rows))
                                      if name == "step_seconds" else None)
        try:
            out = []
            for ids, name, n in jobs:
                out.append(Collector())
                engine.submit(Request(ids, name, SamplingParams(max_new_tokens=n, ignore_eos=True), out[-1]))
                if staggered:  # the next one joins after this one's first token: rows join and leave at odd steps
                    while not out[-1].events:
                        time.sleep(0.001)
            texts = [c.text() for c in out]
            assert [c.events[-1].completion_tokens for c in out] == lengths
            deadline = time.time() + 10
            # the engine thread empties _rows, then sets stats.running: wait for both (a loaded machine lands between)
            while (engine._rows or engine.stats.running) and time.time() < deadline:
                time.sleep(0.01)
            assert engine._rows == [] and engine.stats.running == 0  # nothing left in the batch at the end
            return texts, rows_seen
        finally:
            engine.shutdown()

    alone, _ = answers(1, staggered=False)
    together, rows_seen = answers(8, staggered=True)
    assert together == alone
    assert max(rows_seen) >= 3  # they really shared the batch


def test_a_finished_row_frees_its_place_at_once_and_leaves_the_batch_at_the_next_merge(bank, prompt_ids):
    """Dynamic batch: a row that finishes while most rows decode on stays in the batch (no rebuild for it alone),
    but its place is free: the next request joins a full batch, the merge drops the finished row, and the batch
    never holds more than max_batch_size rows."""
    engine = Engine(bank, max_batch_size=4, decode="dynamic").start()
    seen = []  # (rows in the batch, rows still decoding) after each step
    engine.stats.observers.append(lambda name, _: seen.append((len(engine._rows), engine.stats.running))
                                  if name == "step_seconds" else None)
    try:
        longs = [Collector() for _ in range(3)]
        short, late = Collector(), Collector()
        for i, c in enumerate(longs):
            engine.submit(Request(prompt_ids[i % len(prompt_ids)], "grid",
                                  SamplingParams(max_new_tokens=60, ignore_eos=True), c))
        engine.submit(Request(prompt_ids[0], "grid2", SamplingParams(max_new_tokens=3, ignore_eos=True), short))
        assert short.done.wait(60)
        deadline = time.time() + 30
        while (4, 3) not in seen and time.time() < deadline:
            time.sleep(0.001)
        assert (4, 3) in seen  # a step ran with the finished short row still in the batch
        engine.submit(Request(prompt_ids[1], None, SamplingParams(max_new_tokens=3, ignore_eos=True), late))
        assert late.done.wait(60)
        assert not any(c.done.is_set() for c in longs)  # it joined the full batch while the long rows decoded
        assert all(c.done.wait(60) for c in longs)
        assert max(rows for rows, _ in seen) == 4
        assert late.events[-1].completion_tokens == 3
    finally:
        engine.shutdown()


def test_cancelled_request_frees_its_slot(bank, prompt_ids):
    engine = Engine(bank, max_batch_size=1).start()
    try:
        first, second = Collector(), Collector()
        request = engine.submit(Request(prompt_ids[0], "grid", SamplingParams(max_new_tokens=500, ignore_eos=True),
                                        first))
        engine.submit(Request(prompt_ids[1], None, SamplingParams(max_new_tokens=2, ignore_eos=True), second))
        while not first.events:
            time.sleep(0.001)
        request.cancel()
        assert second.done.wait(60) and first.done.wait(60)
        assert first.events[-1].finish_reason == "cancelled" and first.events[-1].completion_tokens < 500
        assert second.events[-1].finish_reason == "length"
        deadline = time.time() + 5
        while engine.stats.running and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats.running == 0 and engine.stats.waiting == 0
    finally:
        engine.shutdown()


def test_close_cancels_running_and_queued_requests_and_refuses_later_ones(bank, prompt_ids):
    """engine.close() (the server's shutdown timeout): every row and queued request ends "cancelled" with the
    message, at the next step; a request submitted afterwards is cancelled at once; the thread keeps running."""
    engine = Engine(bank, max_batch_size=1).start()
    try:
        running, queued, late = Collector(), Collector(), Collector()
        params = SamplingParams(max_new_tokens=500, ignore_eos=True)
        engine.submit(Request(prompt_ids[0], "grid", params, running))
        engine.submit(Request(prompt_ids[1], None, params, queued))  # waits: the batch holds one row
        while not running.events:
            time.sleep(0.001)
        engine.close("going away")
        assert running.done.wait(60) and queued.done.wait(60)
        for c in (running, queued):
            assert c.events[-1].finish_reason == "cancelled" and c.events[-1].error == "going away"
        assert running.events[-1].completion_tokens < 500
        engine.submit(Request(prompt_ids[2], "grid", params, late))
        assert late.done.is_set() and late.events[-1].finish_reason == "cancelled"
        assert engine.alive and engine.stats.running == 0 and engine.stats.waiting == 0
    finally:
        engine.shutdown()


def test_a_request_wakes_an_idle_engine(bank, prompt_ids):
    """An idle engine waits for work on an event that submit() sets, not in fixed sleeps: with idle_wait = 30 s,
    requests to the idle engine still answer at once (a functional check: nothing here times the speed)."""
    engine = Engine(bank, max_batch_size=2, idle_wait=30.0).start()
    try:
        time.sleep(0.2)  # the loop is idle now
        for ids in prompt_ids[:3]:
            done = Collector()
            engine.submit(Request(ids, "grid", SamplingParams(max_new_tokens=2, ignore_eos=True), done))
            assert done.done.wait(20), "the request waited for the idle loop's sleep"
            time.sleep(0.1)
    finally:
        start = time.monotonic()
        engine.shutdown()
        assert time.monotonic() - start < 20 and not engine.alive


def test_a_burst_of_arrivals_shares_one_prefill_and_the_wait_is_bounded(bank, prompt_ids, monkeypatch):
    """Requests arriving less than ARRIVAL_GAP apart are admitted together (one prefill), answering as ever; a
    stream of arrivals is never held beyond max_queue_delay; max_queue_delay = 0 admits at once. ARRIVAL_GAP is
    widened here so a loaded test machine's thread timing cannot split the burst or end the wait early."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.inference import engine as engine_module

    with pytest.raises(ConfigError, match="max_queue_delay"):
        Engine(bank, max_queue_delay=-1)
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    alone = Engine(bank, max_batch_size=4, max_queue_delay=0).start()
    try:
        expected = [answer(alone, ids, params) for ids in prompt_ids[:3]]
    finally:
        alone.shutdown()
    monkeypatch.setattr(engine_module, "ARRIVAL_GAP", 0.5)
    for delay, admissions in ((5.0, 1), (0.0, 3)):
        engine = Engine(bank, max_batch_size=4, max_queue_delay=delay).start()
        prefills = []
        engine.stats.observers.append(lambda n, v: prefills.append(v) if n == "prefill_seconds" else None)
        try:
            jobs = []
            for ids in prompt_ids[:3]:  # 0.25 s apart: one burst (gap 0.5 s); without a delay, admitted as they come
                jobs.append(Collector())
                engine.submit(Request(ids, "grid", params, jobs[-1]))
                time.sleep(0.25)
            assert [job.text() for job in jobs] == expected
            assert len(prefills) == admissions
        finally:
            engine.shutdown()
    monkeypatch.setattr(engine_module, "ARRIVAL_GAP", 60.0)  # arrivals "keep coming": only the delay ends the wait
    engine = Engine(bank, max_batch_size=4, max_queue_delay=0.3).start()
    try:
        started = time.monotonic()
        assert answer(engine, prompt_ids[0], params) == expected[0]
        assert time.monotonic() - started < 30  # held 0.3 s, not the 60 s gap
    finally:
        engine.shutdown()
    monkeypatch.setattr(engine_module, "ARRIVAL_GAP", 0.005)
    engine = Engine(bank, max_batch_size=4, max_queue_delay=10.0).start()
    try:  # while a row decodes, a lone arrival waits (here: until that row ends, well within 10 s), not joining it
        long, late = Collector(), Collector()
        engine.submit(Request(prompt_ids[0], "grid", SamplingParams(max_new_tokens=200, ignore_eos=True), long))
        while not long.events:
            time.sleep(0.001)
        engine.submit(Request(prompt_ids[1], "grid", params, late))
        assert late.done.wait(60)
        assert long.done.is_set()  # joined at once, the 4-token answer would have ended first
        assert late.text() == expected[1]
    finally:
        engine.shutdown()


def test_sampling_is_reproducible_with_a_seed(bank, prompt_ids):
    engine = Engine(bank).start()
    try:
        runs = []
        for seed in (3, 3, 4):
            runs.append(answer(engine, prompt_ids[0], SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9,
                                                                     seed=seed)))
    finally:
        engine.shutdown()
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_slots_decoding_answers_equal_eval(bank, serve_runs, prompt_ids, monkeypatch):
    """The fixed-slot decoder (CUDA graphs on a GPU) on the CPU: rows prefilled in the slots' layout (a block
    [padding | prefix | prompt] per row under a 4D mask, `Slots.prefill`), a mixed batch, rows joining while others
    decode, slots reused and shifted, still eval's greedy answers; rows admitted together placed in one batch copy
    (`Slots.place_blocks`, their prefill's padding kept, hidden)."""
    from tasktune.tuning.inference.slots import Slots

    calls = []
    batch_place = Slots.place_blocks
    monkeypatch.setattr(Slots, "place_blocks", lambda self, slots, *a: calls.append(len(slots)) or
                        batch_place(self, slots, *a))
    engine = Engine(bank, max_batch_size=4, decode="slots", slot_width=96).start()
    try:
        got = mixed_batch(engine, prompt_ids, 16)
    finally:
        engine.shutdown()
    assert_answers_as_eval(got, serve_runs, prompt_ids, 16)
    assert calls and max(calls) > 1  # rows were admitted together


def test_rows_whose_shared_block_does_not_fit_a_slot_are_placed_each_packed(bank, serve_runs, prompt_ids,
                                                                             monkeypatch):
    """A base row with a long prompt and a row of a run (P = 6) with a short one, prefilled together: each fits a
    slot with its answer, but the shared block (the widest prefix + the longest prompt) does not. So each row's
    own columns are packed into its slot (`Slots.place`), and both answer as eval."""
    from tasktune.tuning.inference.slots import Slots

    packed = []
    place = Slots.place
    monkeypatch.setattr(Slots, "place", lambda self, slot, blocks: packed.append(blocks[0][0].shape[1]) or
                        place(self, slot, blocks))
    long_prompt, short_prompt = (prompt_ids[0] + prompt_ids[1])[:80], prompt_ids[-1]
    engine = Engine(bank, max_batch_size=4, decode="slots", slot_width=96)  # 96 + P 6 = 102 columns a slot
    assert len(long_prompt) + 16 < engine._slots.width <= 6 + len(long_prompt) + 16
    done = [Collector(), Collector()]
    for ids, run, collector in ((long_prompt, None, done[0]), (short_prompt, "grid2", done[1])):
        engine.submit(Request(ids, run, SamplingParams(max_new_tokens=16), collector))  # one admission for both
    engine.start()
    try:
        got = [c.text() for c in done]
    finally:
        engine.shutdown()
    assert sorted(packed) == sorted([len(long_prompt), 6 + len(short_prompt)])  # each row alone, no padding
    _, base = eval_answers(serve_runs["grid2"], [long_prompt], 16)
    tuned, _ = eval_answers(serve_runs["grid2"], [short_prompt], 16)
    assert got == [base[0], tuned[0]]


def test_slots_prefill_leaves_no_query_without_a_key(bank, prompt_ids, monkeypatch):
    """Two base rows (no prefix) of different lengths prefilled together: the shorter one's padding queries have
    no real key before them. An attention row with no key at all gives NaN (softmax over nothing; sdpa's kernels
    differ there), which reaches the real rows through their masked columns (0 x NaN) as the NaN keys of an earlier
    bug did: so every query of a prefill sees at least its own column."""
    from tasktune.tuning.inference import slots as slots_module

    rows_with_keys, real = [], slots_module.prefill_attention

    def spy(module, query, key, value, attention_mask, **kwargs):
        rows_with_keys.append(bool(attention_mask.any(dim=-1).all()))
        return real(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(slots_module, "prefill_attention", spy)
    short, long = sorted(prompt_ids, key=len)[0], sorted(prompt_ids, key=len)[-1]
    assert len(short) < len(long)
    engine = Engine(bank, max_batch_size=4, decode="slots", slot_width=96)
    done = [Collector(), Collector()]
    for ids, collector in zip((long, short), done):  # queued before the loop starts: one prefill for both
        engine.submit(Request(ids, None, SamplingParams(max_new_tokens=4, ignore_eos=True), collector))
    engine.start()
    try:
        assert all(c.text() is not None for c in done)
    finally:
        engine.shutdown()
    assert rows_with_keys and all(rows_with_keys)
    assert len(rows_with_keys) == bank.model.config.num_hidden_layers  # one prefill (every layer) for both rows


@pytest.mark.parametrize("decode", ["dynamic", "slots"])
def test_one_rows_failure_ends_that_request_alone(bank, prompt_ids, monkeypatch, decode):
    """A row whose own step fails (its sampling raised here; before, also a seed torch cannot take, or a
    temperature of 1e-300 whose softmax was NaN) ended every request in the batch: the error reached the loop's
    _fail_all. Now it ends that request alone with an error event; the rows beside it keep decoding, their greedy
    answers as alone, and the engine takes the next request."""
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)

    def alone() -> list[str]:
        engine = Engine(bank, max_batch_size=4, decode=decode, slot_width=96).start()
        try:
            out = []
            for ids in prompt_ids[:2]:
                out.append(Collector())
                engine.submit(Request(ids, "grid", params, out[-1]))
            return [c.text() for c in out]
        finally:
            engine.shutdown()

    expected = alone()
    draw, draws = torch.multinomial, []

    def failing(probs, n, generator=None):  # the sampled row (seed 7) fails at its third token
        if generator is not None and generator.initial_seed() == 7:
            draws.append(n)
            if len(draws) == 3:
                raise RuntimeError("sampling broke")
        return draw(probs, n, generator=generator)

    monkeypatch.setattr(torch, "multinomial", failing)
    engine = Engine(bank, max_batch_size=4, decode=decode, slot_width=96).start()
    try:
        good, bad = [Collector(), Collector()], Collector()
        engine.submit(Request(prompt_ids[0], "grid", params, good[0]))
        engine.submit(Request(prompt_ids[2], "grid2", SamplingParams(max_new_tokens=20, temperature=1.0, seed=7,
                                                                      ignore_eos=True), bad))
        engine.submit(Request(prompt_ids[1], "grid", params, good[1]))
        assert [c.text() for c in good] == expected
        assert bad.done.wait(60)
        assert bad.events[-1].finish_reason == "error" and "sampling broke" in bad.events[-1].error
        assert bad.events[-1].completion_tokens == 2
        assert all(c.events[-1].finish_reason == "length" for c in good)
        assert answer(engine, prompt_ids[0], params) == expected[0]
        deadline = time.time() + 5
        while engine.stats.running and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats.running == 0 and engine.alive
    finally:
        engine.shutdown()


def test_bad_parameters_or_prompt_of_one_request_do_not_touch_the_others(bank, prompt_ids):
    """What a request itself brings: a seed torch.Generator cannot take (10**23), a token id outside the vocabulary
    (its prefill fails) end that request alone, even when it was prefilled together with good ones; a temperature
    too small to divide by (1e-300, 5e-324: softmax gave NaN) decodes greedily."""
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    engine = Engine(bank, max_batch_size=8, decode="dynamic").start()
    try:
        expected = answer(engine, prompt_ids[0], params)
        running = Collector()
        engine.submit(Request(prompt_ids[0], "grid", SamplingParams(max_new_tokens=60, ignore_eos=True), running))
        while not running.events:
            time.sleep(0.001)
        seed, vocab, tiny, tinier, good = (Collector() for _ in range(5))
        engine.submit(Request(prompt_ids[1], "grid", SamplingParams(max_new_tokens=16, temperature=1.0,
                                                                     seed=10**23), seed))
        engine.submit(Request([*prompt_ids[1], 10**7], "grid", params, vocab))
        engine.submit(Request(prompt_ids[0], "grid", SamplingParams(max_new_tokens=16, temperature=1e-300,
                                                                     ignore_eos=True), tiny))
        engine.submit(Request(prompt_ids[0], "grid", SamplingParams(max_new_tokens=16, temperature=5e-324,
                                                                     ignore_eos=True), tinier))
        engine.submit(Request(prompt_ids[0], "grid", params, good))
        assert good.text() == tiny.text() == tinier.text() == expected
        for c in (seed, vocab):
            assert c.done.wait(60) and c.events[-1].finish_reason == "error", c.events
        assert "seed" in seed.events[-1].error.lower() or "overflow" in seed.events[-1].error.lower()
        assert running.done.wait(60) and running.events[-1].finish_reason == "length"
    finally:
        engine.shutdown()


def test_stop_strings_are_searched_in_the_new_text_only():
    """A stop can only end in the text a token added: the text sent before was searched at its step. Searching
    the whole answer for every stop at every token made 95,000 stops stall the batch."""
    from tasktune.tuning.inference.stops import stop_at as _stop_at

    assert _stop_at("hello world", ("lo w", "x"), "hello") == 3  # straddles the sent text and the new one
    assert _stop_at("hello world", ("he",), "hello") == -1  # wholly in the sent text: not searched again
    assert _stop_at("hello world", ("orl", "wo"), "hello") == 6  # the earliest of two in the new text
    assert _stop_at("hello world", ("", "zz"), "") == -1
    assert _stop_at("HELLO world", ("HE",), "hello") == 0  # the text changed under the sent part: all searched


def test_a_stop_string_across_tokens_ends_the_answer_before_it(bank, prompt_ids):
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    engine = Engine(bank, max_batch_size=2, decode="dynamic").start()
    try:
        whole = answer(engine, prompt_ids[0], params)
        stop = whole[6:10]
        cut = Collector()
        engine.submit(Request(prompt_ids[0], "grid", SamplingParams(max_new_tokens=24, ignore_eos=True,
                                                                     stop=("never there", stop)), cut))
        assert cut.text() == whole[:whole.index(stop)].strip() and cut.events[-1].finish_reason == "stop"
    finally:
        engine.shutdown()


def test_fusing_is_checked_reversible_and_leaves_other_forwards_eager(bank, prompt_ids):
    """`fuse` takes auto/on/off only; fuse_decode_layers routes only slot-cache calls to compiled code, so eval's
    forwards (a dynamic cache) on a fused model give the same logits, unchanged by a second fuse, and unfusing
    gives every layer its own forward back. No compile happens here (nothing calls a slot step)."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.inference.fused_decode import MARK, decoder_layers, fuse_decode_layers, unfuse_decode_layers

    with pytest.raises(ConfigError, match="fuse must be auto, on or off, got 'yes'"):
        Engine(bank, fuse="yes")
    ids = torch.tensor([prompt_ids[0]])
    with torch.no_grad():
        before = bank.model(input_ids=ids).logits
    layers = decoder_layers(bank.model)
    try:
        assert fuse_decode_layers(bank.model) == len(layers) > 0
        assert fuse_decode_layers(bank.model) == len(layers)  # idempotent: one wrapper per layer
        assert all(vars(layer).get(MARK) and "forward" in vars(layer) for layer in layers)
        with torch.no_grad():
            assert torch.equal(bank.model(input_ids=ids).logits, before)
    finally:
        assert unfuse_decode_layers(bank.model) == len(layers)
    assert not any("forward" in vars(layer) or vars(layer).get(MARK) for layer in layers)
    assert unfuse_decode_layers(bank.model) == 0
    fuse_decode_layers(bank.model)
    assert Engine(bank, decode="slots", slot_width=96, fuse="off").fused == 0  # an earlier engine's fuse undone
    assert not any(vars(layer).get(MARK) for layer in layers)


def count_compiled_calls(monkeypatch, backend: str | None = None, check=None) -> list[int]:
    """Wrap torch.compile so that the fused layers' compiled function counts its calls: [all, prefills (more than
    one token)]; a check that the slot steps really took the compiled path (a renamed cache argument would route
    nothing and still answer right). `backend`: dynamo's instead of the caller's (e.g. "eager": no code
    generation); `check(hidden_states)` runs before each call and may raise (a call that raised is not counted).
    Any other torch.compile goes through untouched: on CUDA, eval's generation compiles the model's forward (a
    static cache), called with keywords only."""
    from tasktune.tuning.model.layers import run_layer

    real, calls = torch.compile, [0, 0]

    def counting(fn, **kwargs):
        if fn is not run_layer:
            return real(fn, **kwargs)
        compiled = real(fn, **({**kwargs, "backend": backend} if backend else kwargs))

        def call(layer, hidden_states, *args, **kw):
            if check is not None:
                check(hidden_states)
            calls[0] += 1
            calls[1] += hidden_states.shape[1] > 1
            return compiled(layer, hidden_states, *args, **kw)

        return call

    monkeypatch.setattr(torch, "compile", counting)
    return calls


def test_counting_compiled_calls_leaves_other_compiles_alone(monkeypatch):
    """The GPU tests count the fused layers' calls while eval's answers are made; on CUDA eval's generation
    compiles the model's forward and calls it with keywords only, which the counting wrapper broke (both GPU
    tests failed on an H100, 2026-12-07)."""
    calls = count_compiled_calls(monkeypatch)
    forward = torch.compile(lambda *, x: x + 1, backend="eager")
    assert torch.equal(forward(x=torch.ones(2)), torch.full((2,), 2.0))
    assert calls == [0, 0]


class _ReplayedForward:
    """A stand-in for a captured CUDA graph on the CPU: replay() runs the same forward into the same logits."""

    def __init__(self, slots, rows: int, logits: torch.Tensor):
        self.slots, self.rows, self.logits = slots, rows, logits

    def replay(self) -> None:
        with torch.inference_mode():
            self.logits.copy_(self.slots._forward(self.rows))


def test_warmed_up_slots_answer_as_eval_when_rows_join_past_column_0(bank, serve_runs, prompt_ids, monkeypatch):
    """`Slots.warm_up` runs the step's forwards on empty slots at start (on CUDA, to capture its graphs; here the
    capture is stood in for by plain forwards): it must leave no trace. A row admitted while another decodes is
    placed past column 0, whose keys/values the warm-up wrote; before the fix they were NaN (a row that saw no
    key at all) and the joining row answered garbage, though masked (0 x NaN)."""
    from tasktune.tuning.inference.slots import Slots

    def capture(self, rows):
        logits = self._forward(rows)
        return _ReplayedForward(self, rows, logits), logits

    monkeypatch.setattr(Slots, "_capture", capture)
    engine = Engine(bank, max_batch_size=4, decode="slots", slot_width=96, fuse="off")
    engine._slots.graphs = True  # as on CUDA
    engine.start()
    try:
        slots = engine._slots
        assert sorted(slots._graphs) == [1, 2, 4]
        cleared = all(not b.any() for b in (*slots.keys, *slots.values)) and not slots.visible.any() and slots.c == 0
        # the longer prompt first: the shorter one then fits left of the write column, placed past column 0
        pair = sorted(prompt_ids, key=len)[::-1][:1] + sorted(prompt_ids, key=len)[:1]
        assert len(pair[0]) > len(pair[1])
        first, second = Collector(), Collector()
        engine.submit(Request(pair[0], "grid", SamplingParams(max_new_tokens=16), first))
        while not first.events:
            time.sleep(0.001)
        engine.submit(Request(pair[1], "grid", SamplingParams(max_new_tokens=16), second))
        got = [first.text(), second.text()]
    finally:
        engine.shutdown()
    tuned, _ = eval_answers(serve_runs["grid"], pair, 16)
    assert got == tuned
    assert cleared  # the warm-up's keys/values/mask were cleared (NaN != 0 too)


def test_fused_prefills_and_steps_compile_only_at_start(bank, serve_runs, prompt_ids, monkeypatch):
    """With fused layers the prefill runs the compiled layer code too, at shapes that vary with every admission
    (rows, prompt width, prefix width). `Slots.warm_up` compiles at start what they need, so serving compiles
    nothing more (a compile of a 6B GLM's layer takes seconds: a request would wait for it); a one-token prompt
    (sizes of 1 would need graphs of their own) prefills with eager layers. Dynamo's eager backend stands in for
    inductor (the same graphs and guards, no code generation) and plain forwards for the CUDA graphs; the answers
    are still eval's."""
    from torch._dynamo.utils import counters

    from tasktune.tuning.inference.fused_decode import unfuse_decode_layers
    from tasktune.tuning.inference.slots import Slots

    def capture(self, rows):
        logits = self._forward(rows)
        return _ReplayedForward(self, rows, logits), logits

    calls = count_compiled_calls(monkeypatch, backend="eager")
    monkeypatch.setattr(Slots, "_capture", capture)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]  # counters outlive dynamo's reset
    engine = Engine(bank, max_batch_size=4, decode="slots", slot_width=96, fuse="on")
    engine._slots.graphs = True  # as on CUDA
    try:
        engine.start()
        at_start, warm_up_prefills = counters["stats"]["unique_graphs"], calls[1]
        got = mixed_batch(engine, prompt_ids, 16)  # 1-4 rows a prefill, prompts of several widths, 0/4/6 prefixes
        one_token = [answer(engine, [prompt_ids[0][-1]], SamplingParams(max_new_tokens=4, ignore_eos=True), run)
                     for run in (None, "grid")]
        assert engine._slots.compile_prefill  # no compiled prefill failed (no eager fallback)
    finally:
        engine.shutdown()
        unfuse_decode_layers(bank.model)
        torch._dynamo.reset()
    assert at_start > before and warm_up_prefills > 0  # the start compiled, prefills included
    assert calls[1] > warm_up_prefills  # the requests' prefills ran compiled
    assert counters["stats"]["unique_graphs"] == at_start  # ... and nothing compiled after the start
    assert all(isinstance(text, str) for text in one_token)
    assert_answers_as_eval(got, serve_runs, prompt_ids, 16)


def test_a_failing_compiled_prefill_falls_back_to_eager_layers(bank, serve_runs, prompt_ids, monkeypatch):
    """The prefill's compiled layers (varying shapes) are the newer path: if they fail (an inductor error on some
    GPU, say), the prefill is redone with eager layers, the engine keeps to that with a warning, and the decode
    steps stay compiled; the answers are eval's. Here the compiled function refuses every call of more than one
    token (dynamo's eager backend for the others)."""
    from tasktune.tuning.inference.fused_decode import unfuse_decode_layers

    def refuse_prefills(hidden_states):
        if hidden_states.shape[1] > 1:
            raise RuntimeError("inductor broke")

    decode_calls = count_compiled_calls(monkeypatch, backend="eager", check=refuse_prefills)
    torch._dynamo.reset()
    engine = Engine(bank, max_batch_size=4, decode="slots", slot_width=96, fuse="on").start()
    try:
        assert engine._slots.compile_prefill
        with pytest.warns(RuntimeWarning, match="compiled prefill failed.*inductor broke"):
            got = mixed_batch(engine, prompt_ids, 16)
        assert not engine._slots.compile_prefill
    finally:
        engine.shutdown()
        unfuse_decode_layers(bank.model)
        torch._dynamo.reset()
    assert decode_calls[0] >= 16 * bank.model.config.num_hidden_layers  # the steps stayed compiled
    assert_answers_as_eval(got, serve_runs, prompt_ids, 16)


@pytest.mark.slow
def test_fused_decode_steps_answer_as_eval(bank, serve_runs, prompt_ids, monkeypatch):
    """Slots whose decode steps run torch.compile'd decoder layers (inductor, here its CPU code): a mixed batch of
    two runs and the base, rows joining while others decode, still eval's greedy answers. Slow-marked: inductor
    compiles for ~1 minute on 2 cores; test_graphed_slots_answer_as_eval_on_cuda runs it on CUDA under graphs."""
    from tasktune.tuning.inference.fused_decode import MARK, decoder_layers, unfuse_decode_layers

    calls = count_compiled_calls(monkeypatch)
    engine = Engine(bank, max_batch_size=4, decode="slots", slot_width=96, fuse="on").start()
    try:
        assert engine.fused == len(decoder_layers(bank.model)) > 0
        got = mixed_batch(engine, prompt_ids, 16)
        assert engine._slots.compile_prefill  # the prefills ran compiled too (no eager fallback)
    finally:
        engine.shutdown()
        unfuse_decode_layers(bank.model)
    assert calls[0] >= 16 * len(decoder_layers(bank.model))  # every layer of every decode step, compiled
    assert not any(vars(layer).get(MARK) for layer in decoder_layers(bank.model))
    assert_answers_as_eval(got, serve_runs, prompt_ids, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fuse", ["off", "on"])
def test_graphed_slots_answer_as_eval_on_cuda(bank, serve_runs, prompt_ids, fuse, monkeypatch):
    """On CUDA the slots replay one CUDA graph a step, captured for every batch bucket at start (`warm_up`), with
    eager or compiled decoder layers (fp32 tiny runs): a mixed batch still gives eval's greedy answers."""
    from tasktune.tuning.inference.fused_decode import unfuse_decode_layers

    from tasktune.tuning.inference.fused_decode import decoder_layers

    calls = count_compiled_calls(monkeypatch)
    engine = Engine(bank, max_batch_size=4, decode="slots", slot_width=96, fuse=fuse).start()
    try:
        assert engine.fused == (len(decoder_layers(bank.model)) if fuse == "on" else 0)
        assert (calls[0] > 0) == (fuse == "on")  # the captures ran the compiled layers, or none
        assert sorted(engine._slots._graphs) == [1, 2, 4]  # captured before the first request
        got = mixed_batch(engine, prompt_ids, 16)
        assert engine._slots.compile_prefill == (fuse == "on")  # compiled prefills ran without an eager fallback
    finally:
        engine.shutdown()
        unfuse_decode_layers(bank.model)
    assert_answers_as_eval(got, serve_runs, prompt_ids, 16)
