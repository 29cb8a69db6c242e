"""Real third-party clients against a live `tasktune serve` (opt-in: `make test-clients`, marker `clients`).

The scripts in tests/serve/clients/ use each client as its docs show an OpenAI-compatible server (the openai
Python client, LangChain's ChatOpenAI, LiteLLM, openai-node, the Vercel AI SDK, LangChain.js) and print one JSON
line: check -> {"ok": what it got} or {"error": the exception, described}. Python scripts run under
.venv-clients' python, JavaScript ones with node from build/clients (its node_modules); `make test-clients`
installs both at the versions tests/serve/clients/requirements.txt and package.json pin. Without them these tests
skip, saying which is missing. The default suite keeps its own regression tests of what these clients found
(tests/serve/test_clients.py: httpx and the openai client only).

The grid steps' answers are scripted (the tiny model cannot say them), streamed in pieces as the engine would;
everything else is the tiny model's real greedy or seeded answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.serve.conftest import LiveServer, two_runs_argv
from tests.serve.test_api import ARGS_ANSWER, SUMMARY_ANSWER

pytestmark = pytest.mark.clients

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "clients"
VENV = Path(os.environ.get("TASKTUNE_CLIENTS_VENV", ROOT / ".venv-clients"))
NODE_DIR = Path(os.environ.get("TASKTUNE_CLIENTS_NODE", ROOT / "build" / "clients"))
KEY = "sk-clients"
CALL = {"place": "济南", "check": "人数检测"}

CLIENTS = ["openai_py", "langchain_py", "litellm_py", "openai_node", "ai_sdk", "langchain_js"]


def _scripted(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine answers the arguments step with ARGS_ANSWER and the summary step with SUMMARY_ANSWER, in pieces
    of 8 characters (as streamed tokens come); other prompts go to the real engine."""
    from tasktune.tuning.inference.engine import Event

    engine, tokenizer = server.service.engine, server.service.tokenizer
    real = engine.submit

    def submit(request):
        prompt = tokenizer.decode(request.prompt_ids, skip_special_tokens=True)
        text = SUMMARY_ANSWER if "总结" in prompt else ARGS_ANSWER if "拆分函数参数" in prompt else None
        if text is None:
            return real(request)

        def answer() -> None:
            for i in range(0, len(text), 8):
                request.emit(Event(text=text[i:i + 8], finish_reason=None))
            request.emit(Event(text="", finish_reason="stop", full_text=text, prompt_tokens=len(request.prompt_ids),
                               completion_tokens=len(text)))

        threading.Thread(target=answer, daemon=True).start()
        return request

    monkeypatch.setattr(engine, "submit", submit)


@pytest.fixture(scope="module")
def servers(serve_runs, live_server):
    """TT_URL: the grid runs with the spec's tools (live_server); TT_KEY_URL: the same behind --api-key;
    TT_ACT_URL: with the simulated grid actions run by the server (--actions grid)."""
    keyed = LiveServer(two_runs_argv(serve_runs, "--spec", "grid=grid", "--api-key", KEY))
    acting = LiveServer(two_runs_argv(serve_runs, "--spec", "grid=grid", "--actions", "grid"))
    with pytest.MonkeyPatch.context() as patch:
        for server in (live_server, keyed, acting):
            _scripted(server, patch)
        yield {"TT_URL": live_server.url, "TT_KEY_URL": keyed.url, "TT_ACT_URL": acting.url, "TT_KEY": KEY}
    keyed.stop()
    acting.stop()


def _command(client: str) -> list[str]:
    """The command that runs a client's script, or a skip saying what `make test-clients` has not installed."""
    if client.endswith("_py"):
        python = VENV / "bin" / "python"
        if not python.is_file():
            pytest.skip(f"no client environment {VENV} (its python): run `make test-clients`")
        return [str(python), str(SCRIPTS / f"{client}.py")]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: `make test-clients` needs node and npm")
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.skip(f"no {NODE_DIR}/node_modules: run `make test-clients`")
    for name in ("common.mjs", f"{client}.mjs"):  # node resolves packages from the script's folder up
        shutil.copyfile(SCRIPTS / name, NODE_DIR / name)
    return [node, str(NODE_DIR / f"{client}.mjs")]


def _run(command: list[str], client: str, env: dict[str, str]) -> dict:
    done = subprocess.run(command, cwd=SCRIPTS, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"{client} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return json.loads(lines[-1])


def _error(results: dict, check: str) -> dict:
    assert "error" in results[check], f"{check}: expected an error, got {results[check]}"
    return results[check]["error"]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_real_client_gets_answers_tool_calls_and_openai_errors(request, client):
    command = _command(client)  # (skips before any server starts)
    results = _run(command, client, request.getfixturevalue("servers"))
    failed = {name: r["error"] for name, r in results.items() if "error" in r
              and name not in ("unknown_model", "bad_key", "max_tokens_too_large", "overflow", "responses_api")}
    assert not failed, f"{client} failed: {json.dumps(failed, ensure_ascii=False, indent=1)}"
    ok = {name: r["ok"] for name, r in results.items() if "ok" in r}
    print(client, ok["versions"])
    # chat and stream: the same greedy answer, finish reason and usage
    assert ok["chat"]["finish_reason"] in ("length", "stop") and 0 < ok["chat"]["usage"][1] <= 6, ok["chat"]
    assert ok["stream"] == ok["chat"], (ok["stream"], ok["chat"])
    first, second = ok["sampled"]  # max_tokens, temperature, seed, stop: the seed repeats the answer
    assert first == second and "\n" not in first, ok["sampled"]
    for check in ("tools", "tools_framed", "stream_tools"):  # the call, and the summary of its result
        got = ok[check]
        assert got["finish_reason"] == "tool_calls", (check, got)
        assert (got["name"], got["arguments"], got["summary"]) == ("site_check", CALL, SUMMARY_ANSWER), (check, got)
    if "actions" in ok:  # the server ran the call (--actions grid) and answered with the summary
        assert ok["actions"]["text"] == ok["actions"]["streamed"] == SUMMARY_ANSWER, ok["actions"]
        assert ok["actions"]["executed"] == [CALL], ok["actions"]
    if "models" in ok:
        assert ok["models"] == ["grid", "grid2", "tiny-base", "auto"] and ok["good_key"] == ok["models"]
    else:
        assert ok["good_key"] == "length", ok["good_key"]
    if "agent" in ok:  # LangChain's create_agent: call, tool result, summary
        assert ok["agent"] == ["human", "ai", "tool", "ai", SUMMARY_ANSWER], ok["agent"]
    # errors: the status, and OpenAI's code where the client keeps it
    for check, status, code in (("unknown_model", 404, "model_not_found"), ("bad_key", 401, "invalid_api_key"),
                                ("max_tokens_too_large", 400, "integer_above_max_value")):
        error = _error(results, check)
        assert error["status"] == status and error["code"] in (code, None), (check, error)
    overflow = _error(results, "overflow")  # the clients' own class for a prompt over the context
    wanted = {"langchain_py": "ContextOverflowError", "litellm_py": "ContextWindowExceededError",
              "langchain_js": "ContextOverflowError"}.get(client)
    assert wanted in overflow["classes"] if wanted else overflow["status"] == 400, overflow
    assert "maximum context length" in overflow["message"], overflow
    if "responses_api" in results:  # the Responses API is not served: OpenAI's 404, not a parse failure
        error = _error(results, "responses_api")
        assert error["status"] == 404 and "Invalid URL (POST /v1/responses)" in error["message"], error
