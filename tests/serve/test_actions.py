"""Server-side actions (`--actions`) against hostile action libraries (serve/actions/): whatever an action raises
or returns fails its own request only, as a 502 `action_failed` naming the action (and the field at fault); a slow
one is a 504 `action_timeout` after --action-timeout; actions run on --action-workers threads of their own; the
shutdown timeout cuts a hung action (503, the process still exits); `--actions` that fails to import or misses
every tool stops the start with exit 2 and one line (one that covers some tools warns of the others).

Longer than 300 lines because each hostile action (what it raises, returns, or how long it takes) is checked plain
and streamed on one server of its own, and the startup checks need one case per way a library can be wrong."""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time

import httpx
import openai
import pytest

from tasktune.tuning.inference.engine import Event
from tests.serve.conftest import LiveServer, two_runs_argv
from tests.serve.test_api import ARGS_ANSWER, SUMMARY_ANSWER

ASK = [{"role": "user", "content": "查查济南的人数"}]
GOOD = {"expected": 47, "present": 34, "ok": 34}


@pytest.fixture(scope="module")
def action_server(serve_runs):
    """A server of its own (an action that brought the server down must not take the session's with it), with the
    grid actions run under --action-timeout 1 on --action-workers 2."""
    server = LiveServer(two_runs_argv(serve_runs, "--spec", "grid=grid", "--actions", "grid", "--action-timeout", "1",
                                      "--action-workers", "2"))
    yield server
    server.stop()


@pytest.fixture
def acting(action_server, monkeypatch):
    """`action_server` whose engine answers the arguments step with ARGS_ANSWER (a call of site_check at 济南)
    and the summary step with SUMMARY_ANSWER; a test puts its own site_check in the REGISTRY."""
    service = action_server.service

    def submit(request):
        prompt = service.tokenizer.decode(request.prompt_ids, skip_special_tokens=True)
        text = SUMMARY_ANSWER if "总结" in prompt else ARGS_ANSWER
        threading.Timer(0.01, request.emit, [Event(text=text, finish_reason="stop", full_text=text,
                                                   prompt_tokens=len(request.prompt_ids),
                                                   completion_tokens=3)]).start()
        return request

    monkeypatch.setattr(service.engine, "submit", submit)
    return action_server


def _act(server: LiveServer, monkeypatch, site_check) -> None:
    monkeypatch.setitem(server.service.actions.registry, "site_check", site_check)


def _streamed_error(server: LiveServer) -> dict:
    """The error event of a streamed request (which must end with [DONE])."""
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=30,
                      json={"model": "grid", "stream": True, "messages": ASK}) as r:
        lines = list(r.iter_lines())
    assert r.status_code == 200 and "data: [DONE]" in lines, lines
    (error,) = [json.loads(line[6:])["error"] for line in lines if line.startswith('data: {"error"')]
    return error


def _action_gauges(server: LiveServer) -> dict[str, float]:
    lines = httpx.get(f"{server.url}/metrics").text.splitlines()
    return {name: float(line.split()[1]) for line in lines for name in ("tasktune_actions_running",
                                                                         "tasktune_actions_overdue")
            if line.split(" ")[0] == name}


def _still_serves(server: LiveServer, monkeypatch) -> None:
    _act(server, monkeypatch, lambda place, check: GOOD)
    reply = server.client().chat.completions.create(model="grid", messages=ASK)
    assert reply.choices[0].message.content == SUMMARY_ANSWER


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), BaseException("odd")],
                         ids=lambda e: type(e).__name__)
def test_an_action_raising_systemexit_or_keyboardinterrupt_fails_its_request_only(acting, monkeypatch, raised):
    """Raised in a thread of asyncio's default executor, SystemExit and KeyboardInterrupt reached the event loop:
    the server stopped (KeyboardInterrupt: the process exited 130), the client got a plain-text 500 or a cut
    stream. Now they are that request's 502 `action_failed`, like any exception, and the server serves on."""
    def site_check(place, check):
        raise raised

    _act(acting, monkeypatch, site_check)
    with pytest.raises(openai.APIStatusError) as err:
        acting.client().chat.completions.create(model="grid", messages=ASK)
    assert err.value.status_code == 502 and err.value.body["code"] == "action_failed", err.value.body
    assert f"action site_check failed: {type(raised).__name__}" in err.value.body["message"]
    assert err.value.response.headers["x-should-retry"] == "false"
    error = _streamed_error(acting)
    assert error["code"] == "action_failed" and type(raised).__name__ in error["message"], error
    _still_serves(acting, monkeypatch)


def _generator():
    yield GOOD


@pytest.mark.parametrize("result, said", [
    ({"expected": "lots", "present": [1], "ok": None}, "result field 'expected': 'lots' is not of type 'integer'"),
    ({"expected": math.nan, "present": 1, "ok": 1}, "result.expected: nan is not a JSON number"),
    ({"present": 1, "ok": 1}, "the result lacks field 'expected'"),
    ({**GOOD, "extra": object()}, "result.extra: 'object' is not a JSON type"),
    (None, "not NoneType"),
    ("47 people", "not str"),
    (object(), "result: 'object' is not a JSON type"),
    (_generator(), "result: 'generator' is not a JSON type"),
    ({"expected": 10 ** 2000, "present": 1, "ok": 1}, "too long to answer: the prompt of step 'summary'"),
], ids=["wrong-types", "nan", "missing", "object-inside", "none", "string", "object", "generator", "long"])
def test_a_bad_action_result_is_the_servers_502_naming_action_and_field(acting, monkeypatch, result, said):
    """A server-side action's bad result was answered 400 invalid_request_error, param messages: the client was
    blamed for the server's own library. It is a 502 `action_failed` naming the action and what is wrong."""
    _act(acting, monkeypatch, lambda place, check: result)
    with pytest.raises(openai.APIStatusError) as err:
        acting.client().chat.completions.create(model="grid", messages=ASK)
    body = err.value.body
    assert err.value.status_code == 502 and body["code"] == "action_failed" and body["type"] == "server_error", body
    assert body["message"].startswith("action site_check returned") and said in body["message"], body
    assert body["param"] is None
    error = _streamed_error(acting)
    assert error["code"] == "action_failed" and said in error["message"], error


def test_a_bad_tool_result_from_the_client_stays_a_400(acting):
    """The distinction kept: the same wrong result sent by the client (a `tool` message) is the client's 400."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "site_check", "arguments": json.dumps({"place": "济南", "check": "人数检测"})}}
    with pytest.raises(openai.BadRequestError) as err:
        acting.client().chat.completions.create(model="grid", messages=[
            *ASK, {"role": "assistant", "content": ARGS_ANSWER, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"expected": "lots", "present": 1,
                                                                               "ok": 1})}])
    assert err.value.body["param"] == "messages[2].content" and "'lots'" in err.value.body["message"]


def test_a_slow_action_is_a_504_after_the_action_timeout(acting, monkeypatch):
    """Actions had no deadline: a hung one held its request (and its client) for ever. And the thread it hangs on,
    which Python cannot stop, was seen nowhere: /metrics now counts it as running and overdue until it returns."""
    release = threading.Event()
    _act(acting, monkeypatch, lambda place, check: release.wait(30) and GOOD)
    try:
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            acting.client().chat.completions.create(model="grid", messages=ASK)
        took = time.monotonic() - start
        # the call runs on (a thread cannot be stopped): /metrics shows it, as running and overdue
        assert _action_gauges(acting) == {"tasktune_actions_running": 1.0, "tasktune_actions_overdue": 1.0}
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while _action_gauges(acting)["tasktune_actions_running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _action_gauges(acting) == {"tasktune_actions_running": 0.0, "tasktune_actions_overdue": 0.0}
    assert err.value.status_code == 504 and err.value.body["code"] == "action_timeout", err.value.body
    assert "did not return within 1 s (--action-timeout)" in err.value.body["message"]
    assert err.value.response.headers["x-should-retry"] == "false"  # a retry would run the action again
    assert took < 10, took


def test_actions_run_on_a_bounded_pool_of_their_own(acting, monkeypatch):
    """Actions shared asyncio's default executor (min(32, cores + 4) threads, also asyncio.to_thread's): on 2 cores
    the 7th and 8th of 8 slow actions waited for a free thread. Now --action-workers threads of their own run them;
    with every worker taken a call waits for one, within --action-timeout, and says so."""
    release, names, lock = threading.Event(), [], threading.Lock()

    def site_check(place, check):
        with lock:
            names.append(threading.current_thread().name)
        release.wait(30)
        return GOOD

    _act(acting, monkeypatch, site_check)
    outcomes: list = []

    def ask() -> None:
        try:
            outcomes.append(acting.client().chat.completions.create(model="grid", messages=ASK))
        except openai.APIStatusError as exc:
            outcomes.append(exc)

    try:
        holders = [threading.Thread(target=ask, daemon=True) for _ in range(2)]
        for t in holders:
            t.start()
        deadline = time.monotonic() + 10
        while len(names) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(names) == 2 and all(n.startswith("tasktune-action-") for n in names), names
        with pytest.raises(openai.APIStatusError) as err:  # both workers busy (their calls hang on)
            acting.client().chat.completions.create(model="grid", messages=ASK)
        assert err.value.status_code == 504, err.value.body
        assert "did not start within 1 s" in err.value.body["message"]
        assert "all 2 action workers are busy (--action-workers)" in err.value.body["message"]
        assert len(names) == 2  # the queued call never ran
    finally:
        release.set()
    for t in holders:
        t.join(10)
    assert [getattr(o, "status_code", None) for o in outcomes] == [504, 504]
    _still_serves(acting, monkeypatch)  # the workers are free again


# -- the shutdown: a hung action is cut at --shutdown-timeout, and the process still exits -----------------------

HUNG_ACTIONS = '''
"""A site_check that never returns (it writes a line to STARTED first). The tiny test model's answers do not parse
as calls: Service.tool_calls is scripted to call site_check at 北京 for every answer of the arguments step."""
import json, threading
from tasktune.serve import service

STARTED = {started!r}
CALL = {{"id": "call_hung", "type": "function",
        "function": {{"name": "site_check", "arguments": json.dumps({{"place": "北京", "check": "人数检测"}})}}}}
service.Service.tool_calls = lambda self, turn, *rest: [dict(CALL)] if turn.step == "arguments" else []

def site_check(place, check):
    with open(STARTED, "a") as out:
        out.write(place + "\\n")
    threading.Event().wait()

REGISTRY = {{"site_check": site_check}}
'''


@pytest.mark.timeout(240)
def test_a_hung_action_is_cut_at_the_shutdown_timeout_and_the_process_exits(serve_runs, tmp_path):
    """An action that never returned held the shutdown for ever (asyncio's executor threads are joined at exit):
    SIGTERM with --shutdown-timeout 5 took 38 s with a 40 s action, the client got a plain-text 500, and the
    summary said `cancelled 0`. Now the shutdown timeout ends the wait: a plain request gets 503 `shutting_down`
    in OpenAI's shape, a stream its error event and [DONE], the summary counts both, the process exits 0."""
    from tests.serve.test_shutdown import PROMPT, ServeProcess, _exit

    started = tmp_path / "started.txt"
    actions = tmp_path / "hung.py"
    actions.write_text(HUNG_ACTIONS.format(started=str(started)), encoding="utf-8")
    server = ServeProcess(serve_runs["grid"], tmp_path / "serve.log", "--spec", "grid=grid", "--actions",
                          str(actions), "--shutdown-timeout", "2", "--action-timeout", "600")
    body = {"model": "grid", "max_tokens": 4, "messages": [{"role": "user", "content": PROMPT}]}
    plain, streamed = {}, {}

    def ask() -> None:
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        plain.update(status=r.status_code, body=r.json())

    def stream() -> None:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True},
                          timeout=60) as r:
            streamed.update(status=r.status_code, lines=list(r.iter_lines()))

    try:
        askers = [threading.Thread(target=f, daemon=True) for f in (ask, stream)]
        for t in askers:
            t.start()
        deadline = time.monotonic() + 60
        while (not started.exists() or len(started.read_text().split()) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists() and len(started.read_text().split()) == 2, server.stderr()
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code, _ = _exit(server, 60)
        took = time.monotonic() - sent
        for t in askers:
            t.join(10)
    finally:
        server.kill()
    err = server.stderr()
    assert code == 0 and "Traceback" not in err, err
    assert took < 2 + 10, f"took {took:.1f} s to exit with --shutdown-timeout 2"
    assert plain["status"] == 503 and plain["body"]["error"]["code"] == "shutting_down", plain
    assert "action site_check was still running" in plain["body"]["error"]["message"], plain
    events = [json.loads(line[6:]) for line in streamed["lines"] if line.startswith("data: {")]
    assert streamed["status"] == 200 and events[-1]["error"]["code"] == "shutting_down", streamed
    assert "data: [DONE]" in streamed["lines"], streamed
    assert re.search(r"SIGTERM: drained \d+ request\(s\), cancelled 2 \(2 in flight; shutdown timeout 2 s\)", err), err


# -- --actions at startup: checked against the specs, import failures said in one line ---------------------------

def _serve(serve_runs, capsys, actions: str) -> tuple[int, str]:
    from tasktune.cli import main

    code = main(["serve", f"grid={serve_runs['grid']}", "--spec", "grid=grid", "--port", "0", "--actions", actions])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text, said", [
    ('import os\nx = 1\nraise RuntimeError("boom")\n',
     r"importing it failed: RuntimeError: boom \(.*acts\.py, line 3\)"),
    ("def site_check(:\n    pass\n", r"importing it failed: SyntaxError: invalid syntax \(.*acts\.py, line 1\)"),
    ("import sys\nsys.exit(4)\n", r"importing it failed: SystemExit: 4 \(.*acts\.py, line 2\)"),
    ("import no_such_module_here\n",
     r"ModuleNotFoundError: No module named 'no_such_module_here' \(.*acts\.py, line 1\)"),
    ("X = 1\n", r"the module defines no REGISTRY"),
    ("REGISTRY = [print]\n", r"REGISTRY is not a dict \(list\)"),
    ("REGISTRY = {'site_check': 3}\n", r"REGISTRY\['site_check'\] is not a function \(int\)"),
    ("async def site_check(place, check): pass\nREGISTRY = {'site_check': site_check}\n", r"is an async function"),
    ("def site_check(where): pass\nREGISTRY = {'site_check': site_check}\n",
     r"REGISTRY\['site_check'\]\(where\) cannot take the tool's arguments \(place, check"),
    ("def other(place, check): pass\nREGISTRY = {'other': other}\n",
     r"REGISTRY has no function for tool site_check \(run grid\); it has other"),
], ids=["raises", "syntax", "sys.exit", "import", "no-registry", "list", "not-callable", "async", "signature",
        "missing-tool"])
def test_an_actions_file_that_cannot_serve_is_exit_2_with_one_line(serve_runs, tmp_path, capsys, text, said):
    """An --actions file that failed to import printed a raw traceback (exit 1); one whose REGISTRY missed the
    spec's tool started, and every request then got tool_calls back with nothing run."""
    actions = tmp_path / "acts.py"
    actions.write_text(text, encoding="utf-8")
    code, err = _serve(serve_runs, capsys, str(actions))
    assert code == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith(f"tasktune serve: error: --actions {actions}: ") and re.search(said, line), err


def test_a_builtin_library_for_another_spec_is_refused(serve_runs, capsys):
    """`--actions smarthome` for a grid run: its REGISTRY has set_device, not site_check."""
    code, err = _serve(serve_runs, capsys, "smarthome")
    assert code == 2, err
    assert "--actions smarthome: REGISTRY has no function for tool site_check (run grid); it has set_device" in err


def test_an_actions_file_may_define_dataclasses(tmp_path):
    """The file runs as an imported module does, in sys.modules: a @dataclass (with string annotations) looks its
    module up there, and failed with AttributeError: 'NoneType' object has no attribute '__dict__'."""
    from tasktune.serve.service import load_actions

    actions = tmp_path / "withdc.py"
    actions.write_text("from __future__ import annotations\nfrom dataclasses import dataclass\n\n@dataclass\n"
                       "class Site:\n    people: int\n\nREGISTRY = {'site_check': lambda place, check: Site(1)}\n",
                       encoding="utf-8")
    assert list(load_actions(str(actions))) == ["site_check"]


def test_a_library_for_some_of_the_served_specs_serves_and_warns_of_the_others():
    """`tasktune serve grid=... home=... --actions grid` was refused (exit 2: no function for set_device), though
    a run whose tools have no function works as without --actions: its calls go to the client. Now it serves and
    the startup warns, naming the tool and its run; a library that covers no tool at all is still refused."""
    from tasktune.datagen.spec import builtin_specs, load_spec
    from tasktune.errors import ConfigError
    from tasktune.serve.actions.loading import check_actions, load_actions
    from tasktune.serve.tools import TaskTools

    tools = {name: TaskTools(load_spec(builtin_specs()[spec])) for name, spec in (("grid", "grid"),
                                                                                    ("home", "smarthome"))}
    warned: list[str] = []
    check_actions("grid", load_actions("grid"), tools, warned.append)
    assert warned == ["--actions grid: REGISTRY has no function for tool set_device (run home): the server runs "
                      "the others (site_check); these calls go back to the client as tool_calls"]
    with pytest.raises(ConfigError, match=r"no function for tool site_check \(run grid\), set_device \(run home\)"):
        check_actions("x", {"other": print}, tools, warned.append)
