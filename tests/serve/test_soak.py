"""A soak of the real server: valid chats, streams, malformed and oversized bodies, unknown models and clients
that hang up mid-stream, all at once. The server stays up, no traceback reaches a client, greedy answers equal
eval's, no slot leaks, memory stays flat. The default suite runs 60 requests; `-m slow` runs 1,000."""

from __future__ import annotations

import asyncio
import json
import random
import resource
import time

import httpx
import pytest

from tests.serve.test_engine import eval_answers


def _kinds(rng: random.Random, n: int) -> list[str]:
    weights = {"chat": 4, "stream": 3, "hangup": 2, "bad_json": 1, "too_big": 1, "unknown_model": 1,
               "bad_field": 1}
    return rng.choices(list(weights), weights=list(weights.values()), k=n)


async def _one(client: httpx.AsyncClient, kind: str, prompt: str, i: int) -> tuple[str, int, str, str]:
    body = {"model": "grid", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
    url = "/v1/chat/completions"
    if kind == "bad_json":
        r = await client.post(url, content=b'{"model": "grid", "messages": [', headers={"content-type":
                                                                                         "application/json"})
        return kind, r.status_code, r.text, prompt
    if kind == "too_big":
        r = await client.post(url, content=b"{" + b" " * 70000 + b"}", headers={"content-type": "application/json"})
        return kind, r.status_code, r.text, prompt
    if kind == "unknown_model":
        r = await client.post(url, json=dict(body, model=f"missing-{i}"))
        return kind, r.status_code, r.text, prompt
    if kind == "bad_field":
        r = await client.post(url, json=dict(body, max_tokens=-3))
        return kind, r.status_code, r.text, prompt
    if kind == "chat":
        r = await client.post(url, json=body)
        return kind, r.status_code, r.text, prompt
    async with client.stream("POST", url, json=dict(body, stream=True, max_tokens=40 if kind == "hangup" else 16)) \
            as r:
        text, status = [], r.status_code
        async for line in r.aiter_lines():
            if kind == "hangup" and line.startswith("data: {"):
                break  # the client goes away after the first chunk
            text.append(line)
        return kind, status, "\n".join(text), prompt


def _streamed(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            data = json.loads(line[6:])
            out += [c["delta"].get("content") or "" for c in data.get("choices", [])]
    return "".join(out).strip()


def _soak(live_server, serve_runs, n: int, concurrency: int):
    from tasktune.tuning.data import encode_prompts, format_prompt
    from tests.tuning.runs import PLACES

    prompts = [f"步骤#理解并基于输入拆分函数参数*语音#查查{p}的{k}" for p in PLACES for k in ("人数", "安全")]
    tok = live_server.service.tokenizer
    ids = encode_prompts(tok, [format_prompt(tok, q, [], template="auto") for q in prompts], "auto")
    expected = dict(zip(prompts, eval_answers(serve_runs["grid"], ids, 16)[0]))
    rng = random.Random(0)
    kinds = _kinds(rng, n)

    rss = []
    results = []
    for half in (kinds[: n // 2], kinds[n // 2:]):
        results += _in_own_thread(_send_all(live_server, half, prompts, rng, concurrency))
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return results, expected, rss


def _in_own_thread(coro):
    """asyncio.run in a thread of its own: another test's library (Playwright's sync API) may leave an event loop
    running in this one."""
    import threading

    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", asyncio.run(coro)))
    thread.start()
    thread.join()
    return out["value"]


async def _send_all(live_server, kinds, prompts, rng, concurrency):
    async with httpx.AsyncClient(base_url=live_server.url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        gate = asyncio.Semaphore(concurrency)
        picks = [rng.choice(prompts) for _ in kinds]

        async def go(i, kind):
            async with gate:
                return await _one(client, kind, picks[i], i)

        return await asyncio.gather(*(go(i, k) for i, k in enumerate(kinds)))


def _check(live_server, results, expected, rss):
    statuses = {"chat": 200, "stream": 200, "hangup": 200, "bad_json": 400, "too_big": 413, "unknown_model": 404,
                "bad_field": 400}
    for kind, status, text, prompt in results:
        assert status == statuses[kind], (kind, status, text[:200])
        assert "Traceback" not in text and 'File "' not in text
        if kind in ("bad_json", "too_big", "unknown_model", "bad_field"):
            assert set(json.loads(text)["error"]) >= {"message", "type", "code"}
        elif kind == "chat":
            assert json.loads(text)["choices"][0]["message"]["content"] == expected[prompt]
        elif kind == "stream":
            assert _streamed(text) == expected[prompt] and text.rstrip().endswith("data: [DONE]")
    deadline = time.time() + 10
    stats = live_server.service.engine.stats
    while (stats.running or stats.waiting) and time.time() < deadline:
        time.sleep(0.05)
    assert stats.running == 0 and stats.waiting == 0  # hung-up clients freed their slots
    assert httpx.get(f"{live_server.url}/health").json()["status"] == "ok"
    return rss


def test_soak_short(live_server, serve_runs):
    results, expected, rss = _soak(live_server, serve_runs, 60, 12)
    _check(live_server, results, expected, rss)


@pytest.mark.slow
def test_soak_1000_requests_memory_flat(live_server, serve_runs):
    results, expected, rss = _soak(live_server, serve_runs, 1000, 32)
    _check(live_server, results, expected, rss)
    assert rss[1] - rss[0] < 200 * 1024, f"peak RSS grew by {(rss[1] - rss[0]) / 1024:.0f} MiB in the second half"
