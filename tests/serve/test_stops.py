"""Stop strings (tuning/inference/stops.py): a stream holds back what may still become a stop, so its deltas always
join to the whole answer, which ends exactly before the stop (nothing stripped), streamed or not."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from tasktune.tuning.inference.engine import Engine, Request, SamplingParams
from tasktune.tuning.inference.stops import cut_at_stop, held_back, sendable, stop_at
from tests.serve.test_engine import Collector

ALPHABET = "ab 济南,#"  # few characters: stops and their starts come up often


def brute_held_back(text: str, stops: tuple[str, ...]) -> int:
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def streamed(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], str]:
    """The deltas and the whole answer of an answer whose tokens spell `pieces`, as the engine's row step makes
    them (engine._step_row: a stop found ends it, cut; else the sendable text goes out)."""
    text, sent, deltas = "", "", []
    for piece in pieces:
        text += piece
        if stop_at(text, stops, sent) >= 0:
            break
        now = sendable(text, stops)
        deltas.append(now[len(sent):])
        sent = now
    whole, _ = cut_at_stop(text, stops)
    assert whole.startswith(sent)
    deltas.append(whole[len(sent):])
    return deltas, whole


@settings(max_examples=400, deadline=None)
@given(st.text(ALPHABET, max_size=12), st.lists(st.text(ALPHABET, max_size=5), max_size=4))
def test_held_back_is_the_longest_end_that_starts_a_stop(text, stops):
    assert held_back(text, tuple(stops)) == brute_held_back(text, tuple(stops))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=10),
       st.lists(st.text(ALPHABET, min_size=1, max_size=6), max_size=4))
def test_joined_deltas_are_the_whole_answer_however_the_tokens_split(pieces, stops):
    stops = tuple(stops)
    deltas, whole = streamed(pieces, stops)
    assert "".join(deltas) == whole
    text = ""  # what was generated: up to the token that completed a stop (generation ends there)
    for piece in pieces:
        text += piece
        if any(s in text for s in stops):
            break
    at = min((text.find(s) for s in stops if s in text), default=-1)
    assert whole == (text[:at] if at >= 0 else text)  # exactly up to the earliest stop: nothing stripped
    for k in range(1, len(deltas)):  # what went out never holds a stop's start while more may come
        assert not any(s in "".join(deltas[:k]) for s in stops)


def test_a_longer_stop_that_could_have_started_earlier_does_not_undo_one_already_completed():
    """Stops '#' and ' ##', tokens ' ', '#', '#': generation ends at ' #' ('#' completed) and answers ' ', as vLLM
    does; the property test's oracle had read the whole token list (' ##', so '') past the end of generation."""
    deltas, whole = streamed([" ", "#", "#"], ("#", " ##"))
    assert whole == " " and "".join(deltas) == " " and deltas[0] == ""  # (the space held back: it may start " ##")


def test_a_stop_started_but_not_finished_is_flushed_when_it_cannot_match():
    assert sendable("因为出现地名为#, 所以函数", ("所以函数一参数为济南",)) == "因为出现地名为#, "
    assert sendable("因为出现地名为#, 所以函数二", ("所以函数一参数为济南",)) == "因为出现地名为#, 所以函数二"
    assert sendable("a,", ("b", ", 所")) == "a"  # the longest start of any stop
    assert sendable("abc", ("x",)) == "abc" and sendable("", ("ab",)) == ""


@pytest.fixture(scope="module")
def bank(serve_runs):
    from tasktune.tuning.inference.bank import load_bank

    return load_bank([("grid", serve_runs["grid"])])


def test_engine_streams_join_to_the_whole_answer_for_stops_across_tokens(bank, serve_prompts):
    """The real engine, stops drawn from its own greedy answer: a stop spanning tokens (whole), the start of one
    that never comes (flushed at the end), a stop's start then another text. Before, the stream sent the stop's
    first tokens ("所以函数一参数为") and the whole answer did not hold them."""
    from tasktune.tuning.data import encode_prompts, format_prompt

    tok = bank.tokenizer
    (ids,) = encode_prompts(tok, [format_prompt(tok, serve_prompts[0], [], template="auto")], "auto")
    engine = Engine(bank, max_batch_size=8, decode="dynamic").start()
    try:
        plain = Collector()
        engine.submit(Request(ids, "grid", SamplingParams(max_new_tokens=24, ignore_eos=True), plain))
        whole = plain.events[-1].full_text if plain.done.wait(60) else ""
        assert len(whole) > 12, whole
        rng = random.Random(5)
        stops = [(whole[a:a + n],) for a, n in ((rng.randrange(1, len(whole) - 6), rng.randrange(2, 6))
                                                for _ in range(10))]
        stops += [(whole[a:a + n] + "\x00",) for a, n in ((rng.randrange(1, len(whole) - 6), rng.randrange(2, 6))
                                                          for _ in range(6))]
        stops += [(whole[-3:] + "never", whole[5:9])]
        jobs = []
        for stop in stops:
            jobs.append(Collector())
            engine.submit(Request(ids, "grid", SamplingParams(max_new_tokens=24, ignore_eos=True, stop=stop),
                                  jobs[-1]))
        for stop, job in zip(stops, jobs):
            assert job.done.wait(60)
            full = job.events[-1].full_text
            assert "".join(e.text for e in job.events) == full, (stop, [e.text for e in job.events])
            assert full == cut_at_stop(whole, stop)[0], stop
    finally:
        engine.shutdown()


def test_stream_and_plain_answers_agree_on_a_stop_across_tokens(live_server):
    """Over HTTP with the openai client: joined stream deltas == the plain answer's content, which ends exactly
    before the stop (a space before it kept, as OpenAI and vLLM return it)."""
    client = live_server.client()
    messages = [{"role": "user", "content": "查查济南的人数"}]
    whole = client.chat.completions.create(model="grid", messages=messages, max_tokens=24).choices[0].message.content
    assert len(whole) > 8, whole
    for stop in (whole[4:9], whole[2:4], whole[-4:] + "never", [whole[6:8] + "\x00", whole[3:7]]):
        plain = client.chat.completions.create(model="grid", messages=messages, max_tokens=24, stop=stop)
        chunks = client.chat.completions.create(model="grid", messages=messages, max_tokens=24, stop=stop,
                                                stream=True)
        joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        cut, _ = cut_at_stop(whole, (stop,) if isinstance(stop, str) else tuple(stop))
        assert joined == plain.choices[0].message.content == cut, (stop, joined, plain.choices[0].message.content)
