"""Streamed tokens reach the client intact: a stream that falls behind the engine sends the waiting tokens as one
chunk (never losing text or a reason), and the engine thread wakes the event loop once per batch of events."""

from __future__ import annotations

import collections

from tasktune.serve.service import _coalesce
from tasktune.tuning.inference.engine import Event


def test_waiting_text_events_merge_into_one_and_the_finish_reason_wins():
    pending = collections.deque([Event(text="应到"), Event(text="47"), Event(text="人", finish_reason="length",
                                                                           completion_tokens=3, full_text="应到47人"),
                                 Event(text="late")])
    merged = _coalesce(pending)
    assert (merged.text, merged.finish_reason, merged.completion_tokens, merged.full_text) == (
        "应到47人", "length", 3, "应到47人")
    assert [e.text for e in pending] == ["late"]  # nothing after a finish is taken


def test_an_error_or_a_cancellation_is_never_merged():
    for reason in ("error", "cancelled"):
        pending = collections.deque([Event(text="a"), Event(text="b"), Event(finish_reason=reason, error="x")])
        first = _coalesce(pending)
        assert first.text == "ab" and first.finish_reason is None
        assert _coalesce(pending).finish_reason == reason and not pending


def test_one_event_comes_back_as_it_is():
    event = Event(text="x")
    assert _coalesce(collections.deque([event])) is event


def test_the_engine_thread_wakes_the_loop_once_per_batch_of_events_and_nothing_is_lost():
    import asyncio
    import threading

    from tasktune.serve.service import _Mailbox

    async def main():
        loop = asyncio.get_running_loop()
        wakeups = []
        real = loop.call_soon_threadsafe

        def counting(callback, *args):
            wakeups.append(callback)
            return real(callback, *args)

        loop.call_soon_threadsafe = counting
        got = {0: [], 1: []}
        mailbox = _Mailbox(loop)
        senders = [mailbox.sender(got[k].append) for k in (0, 1)]
        steps, rows = 50, 2

        def engine():  # each step emits one event per row, as the engine does
            for step in range(steps):
                for k in range(rows):
                    senders[k](Event(text=str(step)))

        thread = threading.Thread(target=engine)
        thread.start()
        while thread.is_alive() or sum(map(len, got.values())) < steps * rows:
            await asyncio.sleep(0.001)
        thread.join()
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert [e.text for e in got[0]] == [str(i) for i in range(50)] == [e.text for e in got[1]]
    assert len(wakeups) < 50 * 2  # one wake-up per event would be 100
