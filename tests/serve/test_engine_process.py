"""`--engine-process on`: the model and its scheduler in a spawned child; the HTTP side sees the same server."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.serve.conftest import LiveServer, two_runs_argv

FRAMED = "步骤#理解并基于输入拆分函数参数*语音#查查济南的人数"


@pytest.fixture(scope="module")
def process_server(serve_runs):
    server = LiveServer(two_runs_argv(serve_runs, "--engine-process", "on", "--max-batch-size", "4"))
    yield server
    server.stop()


def _child(server):
    return server.service.engine._process


def test_answers_equal_eval_from_the_child_process(process_server, serve_runs):
    from tasktune.tuning.data import encode_prompts, format_prompt
    from tasktune.tuning.inference.engine_process import EngineProcess
    from tests.serve.test_engine import eval_answers

    assert isinstance(process_server.service.engine, EngineProcess)
    assert _child(process_server).pid != os.getpid() and _child(process_server).is_alive()
    tok = process_server.service.tokenizer
    ids = encode_prompts(tok, [format_prompt(tok, FRAMED, [], template="auto")], "auto")
    tuned, base = eval_answers(serve_runs["grid"], ids, 20)
    client = process_server.client()
    answers: dict = {}

    def ask(key, model, stream=False):
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": FRAMED}],
                                               max_tokens=20, stream=stream)
        answers[key] = ("".join(c.choices[0].delta.content or "" for c in reply if c.choices).strip() if stream
                        else reply.choices[0].message.content)

    # six calls at once on 4 rows: two wait for a slot, two runs and the base share the batch
    threads = [threading.Thread(target=ask, args=(f"{model}{i}", model, i == 1))
               for model in ("grid", "tiny-base") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [answers[f"grid{i}"] for i in range(3)] == [tuned[0]] * 3
    assert [answers[f"tiny-base{i}"] for i in range(3)] == [base[0]] * 3
    metrics = httpx.get(f"{process_server.url}/metrics").text
    count = next(line for line in metrics.splitlines() if line.startswith("tasktune_ttft_seconds_count"))
    assert float(count.split()[-1]) >= 6  # the child's observations reach the parent's histograms
    health = httpx.get(f"{process_server.url}/health").json()
    assert health["status"] == "ok" and health["queue"] == 0 and health["running"] == 0


def test_a_client_that_hangs_up_frees_its_row_in_the_child(process_server):
    with httpx.stream("POST", f"{process_server.url}/v1/chat/completions", timeout=30,
                      json={"model": "grid", "messages": [{"role": "user", "content": FRAMED}], "max_tokens": 64,
                            "stream": True, "ignore_eos": True}) as response:
        for _ in response.iter_lines():
            break  # the first event, then the connection closes
    deadline = time.time() + 20
    while time.time() < deadline:
        health = httpx.get(f"{process_server.url}/health").json()
        if health["running"] == 0 and not process_server.service.engine._pending:
            break
        time.sleep(0.1)
    assert health["running"] == 0 and not process_server.service.engine._pending


def test_soak_short_with_the_engine_in_its_own_process(process_server, serve_runs):
    """The default suite's soak (chats, streams, hang-ups, malformed bodies at once) against the child: answers
    equal eval's, no slot leaks once the child's counters settle, the server stays up."""
    from tests.serve.test_soak import _check, _soak

    results, expected, rss = _soak(process_server, serve_runs, 60, 12)
    _check(process_server, results, expected, rss)


def test_a_child_that_dies_fails_its_requests_and_health(serve_runs):
    server = LiveServer([f"grid={serve_runs['grid']}", "--engine-process", "on", "--max-tokens", "64"])
    try:
        client = server.client()
        out: dict = {}

        def ask():
            try:
                client.chat.completions.create(model="grid", messages=[{"role": "user", "content": FRAMED}],
                                               max_tokens=64, extra_body={"ignore_eos": True}, stream=False)
            except openai.APIStatusError as exc:
                out["error"] = exc
        t = threading.Thread(target=ask)
        t.start()
        deadline = time.time() + 20
        while not server.service.engine._pending and time.time() < deadline:
            time.sleep(0.01)
        os.kill(_child(server).pid, signal.SIGKILL)
        t.join(30)
        assert out["error"].status_code == 500 and "engine process exited" in out["error"].message
        assert httpx.get(f"{server.url}/health").status_code == 503
        with pytest.raises(openai.InternalServerError, match="engine process exited"):
            client.chat.completions.create(model="grid", messages=[{"role": "user", "content": "hi"}])
    finally:
        server.stop()


def test_a_model_that_fails_to_load_in_the_child_is_raised_in_the_parent(tmp_path):
    from tasktune.errors import ConfigError
    from tasktune.tuning.inference.bank import BankView
    from tasktune.tuning.inference.engine_child import ChildConfig
    from tasktune.tuning.inference.engine_process import EngineProcess

    import torch

    missing = tmp_path / "no-run"
    with pytest.raises(ConfigError, match="no-run"):
        EngineProcess(BankView({}, None, torch.device("cpu")), ChildConfig([(None, str(missing))], 4, "dynamic", 64))


def _engine(run, **kwargs):
    from tasktune.tuning.inference.bank import load_view
    from tasktune.tuning.inference.engine_child import ChildConfig
    from tasktune.tuning.inference.engine_process import EngineProcess

    runs = [("grid", str(run))]
    return EngineProcess(load_view(runs), ChildConfig(runs, 2, "dynamic", 600), **kwargs)


def test_shutdown_cancels_what_is_in_flight_and_reaps_the_child(serve_runs):
    from tasktune.tuning.inference.engine import Request, SamplingParams

    engine = _engine(serve_runs["grid"])
    events, first = [], threading.Event()

    def emit(event):
        events.append(event)
        first.set()
    engine.submit(Request([5, 6, 7, 8], "grid", SamplingParams(max_new_tokens=500, ignore_eos=True), emit=emit))
    assert first.wait(30)
    engine.shutdown()
    assert events[-1].finish_reason == "cancelled", events[-1]  # as the thread's engine ends it, not "error"
    assert engine._process.exitcode is not None and not engine.alive
    late: list = []
    engine.submit(Request([5, 6], "grid", SamplingParams(max_new_tokens=4), emit=late.append))
    assert late and late[0].finish_reason == "error"  # refused at once: nothing is left waiting for an answer


def test_a_server_process_that_ends_without_shutdown_does_not_hang_on_its_child(serve_runs, tmp_path):
    """multiprocessing's exit hook would SIGTERM the child (which ignores it, for the drain) and join it forever;
    the engine's own hook, which runs first, closes the child's command pipe instead."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "leave.py"
    script.write_text(
        "import sys\n"
        "from tests.serve.test_engine_process import _engine\n"
        "if __name__ == '__main__':\n"
        "    engine = _engine(sys.argv[1])\n"
        "    print('ready', engine._process.pid, flush=True)\n"  # and leave without shutdown()
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script), str(serve_runs["grid"])], cwd=root, timeout=120,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0 and "ready" in done.stdout, done.stderr[-2000:]
    pid = int(done.stdout.split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone too
