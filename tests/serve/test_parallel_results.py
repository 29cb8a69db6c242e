"""Parallel tool calls (docs/reliability.md, "A seventh probe"): an assistant message with several calls, answered by
several `tool` messages, gets each result's answer, in the order of the calls, a line each, plain and streamed; the
server-side loop (--actions) runs several calls of one answer the same way, and runs none when one has no function.
Before, only the last tool message was answered (the others dropped without a word; swapping them changed the
answer), and the server ran an action, then sent its call to the client to run again."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from tasktune.tuning.inference.engine import Event
from tests.serve.conftest import LiveServer, two_runs_argv
from tests.serve.test_api import ARGS_ANSWER

ASK = {"role": "user", "content": "查查济南的人数"}
ROOT = Path(__file__).resolve().parents[2]


def _scripted(server: LiveServer, monkeypatch, prompts: list[str]) -> None:
    """The engine answers a summary prompt with `应到N人` (N: the result's `expected`), anything else with
    ARGS_ANSWER (a call at 济南); each prompt is recorded."""
    service = server.service

    def submit(request):
        prompt = service.tokenizer.decode(request.prompt_ids, skip_special_tokens=True)
        prompts.append(prompt)
        found = re.search(r"应到(\d+)人", prompt)
        text = f"应到{found.group(1)}人" if found else ARGS_ANSWER
        threading.Timer(0.01, request.emit, [Event(text=text, finish_reason="stop", full_text=text,
                                                   prompt_tokens=10, completion_tokens=2)]).start()
        return request

    monkeypatch.setattr(service.engine, "submit", submit)


def _call(i: int, place: str, name: str = "site_check") -> dict:
    return {"id": f"call_{i}", "type": "function",
            "function": {"name": name, "arguments": json.dumps({"place": place, "check": "人数检测"})}}


def _result(i: int, expected: int) -> dict:
    return {"role": "tool", "tool_call_id": f"call_{i}",
            "content": json.dumps({"expected": expected, "present": 1, "ok": 1})}


def _post(server: LiveServer, messages: list[dict], stream: bool = False) -> tuple[str, dict]:
    """The answer's content and usage (streamed: the joined deltas and the usage chunk)."""
    body = {"model": "grid", "messages": messages}
    if not stream:
        reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"], reply.json()["usage"]
    body.update(stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as reply:
        lines = [line[6:] for line in reply.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(line) for line in lines]
    assert not any("error" in c for c in chunks), chunks
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, chunks[-1]["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_each_result_of_parallel_calls_is_answered_in_the_order_of_the_calls(live_server, monkeypatch, stream):
    prompts: list[str] = []
    _scripted(live_server, monkeypatch, prompts)
    calls = {"role": "assistant", "content": None, "tool_calls": [_call(1, "济南"), _call(2, "青岛"), _call(3, "烟台")]}
    for order in ([1, 2, 3], [3, 1, 2]):
        prompts.clear()
        results = [_result(i, {1: 5, 2: 9, 3: 12}[i]) for i in order]
        text, usage = _post(live_server, [ASK, calls, *results], stream)
        assert text == "应到5人\n应到9人\n应到12人", (order, text)
        assert len(prompts) == 3 and all("总结" in p for p in prompts), prompts
        assert usage["prompt_tokens"] == 30 and usage["completion_tokens"] == 6, usage


@pytest.fixture(scope="module")
def two_action_server(serve_runs, tmp_path_factory):
    """The grid spec with a second action on the arguments step (`site_log`: the same arguments), served with an
    --actions file that has both functions; a test removes one."""
    root = tmp_path_factory.mktemp("two-actions")
    spec = yaml.safe_load((ROOT / "templates/grid/spec.yaml").read_text(encoding="utf-8"))
    spec["actions"].append({**spec["actions"][0], "name": "site_log"})
    shutil.copy(ROOT / "templates/grid/places.txt", root / "places.txt")
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    (root / "parallel_acts.py").write_text(
        "RAN = []\n"
        "def site_check(place, check):\n    RAN.append('site_check')\n"
        "    return {'expected': 5, 'present': 1, 'ok': 1}\n"
        "def site_log(place, check):\n    RAN.append('site_log')\n    return {'expected': 9, 'present': 1, 'ok': 1}\n"
        "REGISTRY = {'site_check': site_check, 'site_log': site_log}\n", encoding="utf-8")
    server = LiveServer(two_runs_argv(serve_runs, "--spec", f"grid={root / 'spec.yaml'}",
                                      "--actions", str(root / "parallel_acts.py")))
    yield server
    server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_the_server_runs_every_call_of_an_answer_or_none(two_action_server, monkeypatch, stream):
    import sys

    ran = sys.modules["tasktune_actions_parallel_acts"].RAN
    prompts: list[str] = []
    _scripted(two_action_server, monkeypatch, prompts)
    ran.clear()
    text, _ = _post(two_action_server, [ASK], stream)
    assert ran == ["site_check", "site_log"] and text == "应到5人\n应到9人", (ran, text)
    ran.clear()
    registry = two_action_server.service.actions.registry
    monkeypatch.delitem(registry, "site_log")  # site_log's calls go to the client: so does site_check's, not run
    body = {"model": "grid", "messages": [ASK]}
    reply = httpx.post(f"{two_action_server.url}/v1/chat/completions", json=body, timeout=30).json()
    message = reply["choices"][0]["message"]
    assert ran == [] and reply["choices"][0]["finish_reason"] == "tool_calls", reply
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["site_check", "site_log"], message
    assert "executed_tool_calls" not in message, message
