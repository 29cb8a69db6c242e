"""What the server refuses with a 400 before any generation (OpenAI's rules and shape), and values it must take."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.test_api import FRAMED

URL = "/v1/chat/completions"
FRAMED_MESSAGES = [{"role": "user", "content": FRAMED}]


def post(live_server, **fields) -> httpx.Response:
    body = {"model": "grid", "messages": FRAMED_MESSAGES, "max_tokens": 8, **fields}
    return httpx.post(f"{live_server.url}{URL}", json=body, timeout=60)


def refused(live_server, param: str, **fields) -> dict:
    """The error of a request that must be refused with a 400 naming `param`."""
    reply = post(live_server, **fields)
    assert reply.status_code == 400, (fields, reply.text)
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", (fields, error)
    return error


@pytest.mark.parametrize("seed", [10**23, 2**63, -(2**63) - 1])
def test_a_seed_outside_int64_is_refused(live_server, seed):
    """OpenAI's seed is an int64. 10**23 reached torch's manual_seed in the engine thread, whose OverflowError
    failed every request decoding beside it."""
    refused(live_server, "seed", seed=seed, temperature=1)


def test_int64_seeds_and_tiny_temperatures_answer(live_server):
    """The ends of int64 seed; a temperature too small to divide by (1e-300, 5e-324: softmax gave NaN, which
    failed the batch) decodes greedily, so it answers as temperature 0."""
    greedy = post(live_server, temperature=0).json()["choices"][0]["message"]["content"]
    for seed in (2**63 - 1, -(2**63)):
        assert post(live_server, seed=seed, temperature=1).status_code == 200
    for temperature in (1e-300, 5e-324, 1e-6):
        reply = post(live_server, temperature=temperature, seed=3)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == greedy


def test_at_most_four_stop_sequences_of_bounded_length(live_server):
    """OpenAI allows up to 4 stop sequences; each is at most protocol.MAX_STOP_CHARS (256) characters. 95,000 stops
    in one body were looked for at every token of every row and stalled the whole batch."""
    from tasktune.serve.protocol import MAX_STOP_CHARS

    assert "4" in refused(live_server, "stop", stop=["a", "b", "c", "d", "e"])["message"]
    refused(live_server, "stop", stop=[f"s{i}" for i in range(5000)])  # 95,000 would pass 1 MiB bodies
    refused(live_server, "stop", stop="x" * (MAX_STOP_CHARS + 1))
    refused(live_server, "stop", stop=["x", "y" * (MAX_STOP_CHARS + 1)])
    refused(live_server, "stop", stop=5)
    refused(live_server, "stop", stop=["x", 5])
    for stop in (["never", "seen", "in", "x" * MAX_STOP_CHARS], "never", [], None):
        assert post(live_server, stop=stop).status_code == 200, stop
