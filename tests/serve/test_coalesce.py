"""A stream that falls behind the engine sends the waiting tokens as one chunk, never losing text or a reason."""

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
