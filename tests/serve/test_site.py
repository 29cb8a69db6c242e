"""Pages on other sites cannot use a local server (serve/site.py: Origin, Host; serve/guard.py: JSON bodies only),
and `tasktune serve` refuses flags and run names it cannot serve (exit 2, before the model loads)."""

from __future__ import annotations

import socket

import httpx
import pytest

from tasktune.cli import main
from tasktune.serve.site import SiteGuard, allowed_hosts

HELLO = [{"role": "user", "content": "你好"}]
BODY = {"model": "grid", "messages": HELLO, "max_tokens": 2}


def test_a_request_from_another_origin_is_a_403_and_the_pages_own_origin_is_served(live_server):
    """A cross-site POST ran and generated (the page could not read the answer, but the work was done); a browser
    sends Origin on it. The chat page's own fetches carry this server's origin (Chromium sends it on a same-origin
    POST) and still answer; clients that are not browsers send no Origin."""
    url = f"{live_server.url}/v1/chat/completions"
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{live_server.port + 1}",
                   f"https://127.0.0.1:{live_server.port}", f"http://localhost:{live_server.port}"):
        reply = httpx.post(url, json=BODY, headers={"Origin": origin})
        assert reply.status_code == 403, (origin, reply.text)
        assert reply.json()["error"]["code"] == "origin_not_allowed"
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{live_server.url}/v1/models", headers={"Origin": "http://evil.example"}).status_code == 403
    reply = httpx.post(url, json=BODY, headers={"Origin": live_server.url})
    assert reply.status_code == 200, reply.text
    assert httpx.get(f"{live_server.url}/v1/models", headers={"Origin": f"{live_server.url}/"}).status_code == 200
    assert httpx.get(f"{live_server.url}/").status_code == 200


def test_a_host_other_than_this_machines_is_a_403_on_a_loopback_server(live_server):
    """DNS rebinding: a page at http://evil.example:PORT whose name then resolves to 127.0.0.1 is same-origin to
    the browser, and its requests say `Host: evil.example:PORT`; they were answered."""
    url = f"{live_server.url}/v1/chat/completions"
    for host in ("evil.example", f"evil.example:{live_server.port}", "localhost.evil.example"):
        reply = httpx.post(url, json=BODY, headers={"Host": host, "Origin": f"http://{host}"})
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "host_not_allowed", (host, reply.text)
        assert httpx.get(f"{live_server.url}/", headers={"Host": host}).status_code == 403
    for host in ("localhost", f"LOCALHOST:{live_server.port}", "127.0.0.1:1", "[::1]:8000", "[::1]"):
        reply = httpx.post(url, json=BODY, headers={"Host": host})
        assert reply.status_code == 200, (host, reply.text)


def test_allowed_hosts_and_cors_origins():
    """--allowed-host names more Host names (`*`: any); bound elsewhere than loopback, any Host unless names are
    given; an origin --cors-origin allows passes (`*`: any)."""
    assert allowed_hosts("127.0.0.1", []) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("::1", ["API.example"]) == {"localhost", "127.0.0.1", "::1", "api.example"}
    assert allowed_hosts("0.0.0.0", []) is None and allowed_hosts("127.0.0.1", ["*"]) is None
    assert allowed_hosts("0.0.0.0", ["box"]) == {"localhost", "127.0.0.1", "::1", "box"}
    guard = SiteGuard(None, hosts=allowed_hosts("127.0.0.1", ["api.example"]), cors_origins=("http://app.example",))
    assert guard.refusal("http", {"host": "api.example:8000"}) is None
    assert guard.refusal("http", {"host": "10.1.2.3:8000"}) is None  # an IP address: no DNS to rebind
    assert guard.refusal("http", {"host": "other.example"}).status_code == 403
    assert guard.refusal("http", {"host": "localhost", "origin": "http://app.example"}) is None
    assert guard.refusal("http", {"host": "localhost", "origin": "http://localhost:80"}) is None
    assert guard.refusal("https", {"host": "localhost", "origin": "http://localhost"}).status_code == 403
    assert guard.refusal("http", {"host": "localhost", "origin": "http://app2.example"}).status_code == 403
    anyone = SiteGuard(None, hosts=None, cors_origins=("*",))
    assert anyone.refusal("http", {"host": "x.example", "origin": "http://y.example"}) is None



@pytest.mark.parametrize("bind", ["127.1", "0x7f000001", "2130706433", "127.000.000.001", "::ffff:127.0.0.1",
                                  "myhost"])
def test_a_loopback_host_spelt_otherwise_keeps_the_dns_rebinding_check(bind, monkeypatch):
    """--host was judged loopback by its text: `127.1`, `0x7f000001` or a name of this machine that /etc/hosts
    points at 127.0.1.1 (Debian's `--host $(hostname)`) bind loopback only, yet every Host was answered, as for a
    server bound elsewhere. Now judged by what it resolves to; the name it was bound by is taken as a Host too."""
    import socket

    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real("127.0.1.1" if host == "myhost" else host,
                                                                          *a, **k))
    hosts = allowed_hosts(bind, [])
    assert hosts is not None and {"localhost", "127.0.0.1", "::1"} <= hosts, hosts
    guard = SiteGuard(None, hosts=hosts)
    assert guard.refusal("http", {"host": "evil.example:8000"}).status_code == 403
    assert guard.refusal("http", {"host": f"{bind}:8000" if bind == "myhost" else "localhost"}) is None
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real("10.1.2.3" if host == "myhost" else host,
                                                                          *a, **k))
    assert allowed_hosts("myhost", []) is None  # a name of another address: bound elsewhere, any Host


@pytest.fixture
def serve(capsys, monkeypatch):
    """main(["serve", *argv]) -> (exit code, stderr); a server that would start fails the test instead."""
    from tasktune.serve.shutdown import GracefulServer

    def started(self, sockets=None):
        raise AssertionError("the server started")

    monkeypatch.setattr(GracefulServer, "run", started)

    def run(argv: list[str]) -> tuple[int, str]:
        try:
            rc = main(["serve", *argv])
        except AssertionError as exc:
            rc = str(exc)
        except SystemExit as exc:  # argparse's usage error (a flag's `type=` refused the value)
            rc = exc.code
        return rc, capsys.readouterr().err

    return run


@pytest.mark.parametrize("flag, env, says", [
    (["--api-key", ""], None, "--api-key: the key is empty"),
    (["--api-key", "   "], None, "--api-key: the key is empty"),
    (["--api-key", " k "], None, "--api-key: the key has spaces"),
    (["--api-key", "k\n"], None, "--api-key: the key has spaces"),
    ([], "", "$TASKTUNE_API_KEY: the key is empty"),
    ([], " \t", "$TASKTUNE_API_KEY: the key is empty"),
])
def test_an_empty_or_unsendable_api_key_is_refused(serve_runs, serve, monkeypatch, flag, env, says):
    """`--api-key "$KEY"` with KEY unset served with no key at all; a blank key 401'd every request."""
    if env is None:
        monkeypatch.delenv("TASKTUNE_API_KEY", raising=False)
    else:
        monkeypatch.setenv("TASKTUNE_API_KEY", env)
    rc, err = serve([str(serve_runs["grid"]), "--port", "0", *flag])
    assert rc == 2 and f"tasktune serve: error: {says}" in err, err



@pytest.mark.parametrize("key", ["pässwort", "ключ", "key\u00a0x", "ｋｅｙ"])
def test_an_api_key_outside_ascii_is_refused(serve_runs, serve, monkeypatch, key):
    """A key with a character outside ASCII started the server, yet no client could send it: the openai clients
    (httpx) raise UnicodeEncodeError before sending such a header, and a browser sends `ä` as one Latin-1 byte
    where the check compared the key's UTF-8 bytes (401 for ever, whatever was typed on the page)."""
    monkeypatch.delenv("TASKTUNE_API_KEY", raising=False)
    rc, err = serve([str(serve_runs["grid"]), "--port", "0", "--api-key", key])
    assert rc == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("tasktune serve: error: --api-key: the key has characters outside "
                                            "ASCII, which the openai clients cannot send in a header"), err
    monkeypatch.setenv("TASKTUNE_API_KEY", key)
    rc, err = serve([str(serve_runs["grid"]), "--port", "0"])
    assert rc == 2 and "error: $TASKTUNE_API_KEY: the key has characters outside ASCII" in err, err


def test_a_spec_given_twice_for_one_run_is_refused(serve_runs, serve):
    """`--spec grid=grid --spec grid=smarthome` served the last one without a word (a flag read as a dict)."""
    rc, err = serve([f"grid={serve_runs['grid']}", "--port", "0", "--spec", "grid=grid", "--spec", "grid=smarthome"])
    assert rc == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("tasktune serve: error: --spec grid=...: given twice (grid, smarthome); "
                                            "give one"), err


def test_a_run_whose_folder_name_holds_an_equals_sign_takes_its_spec(serve_runs, serve, tmp_path):
    """A run folder named `a=b` is served as `a=b`, but `--spec a=b=grid` was read as run `a`: refused, `no served
    run of that name`, so that run could have no spec. The longest served name before an "=" is the run's."""
    import shutil

    folder = tmp_path / "a=b"
    shutil.copytree(serve_runs["grid"], folder)
    rc, err = serve([str(folder), "--port", "0", "--spec", "a=b=grid"])
    assert rc == "the server started" and "error" not in err and "its spec is unknown" not in err, (rc, err)


def test_a_cache_folder_that_cannot_be_made_is_named(serve_runs, serve, tmp_path, monkeypatch):
    """$TASKTUNE_CACHE under a file: the server failed to start with `could not load model MODEL (local folder):
    [Errno 20] Not a directory`, blaming the model. Now the default (auto) starts, and --decode-compile on is
    refused naming $TASKTUNE_CACHE and the folder."""
    (tmp_path / "file").write_text("", encoding="utf-8")
    monkeypatch.setenv("TASKTUNE_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    rc, err = serve([str(serve_runs["grid"]), "--port", "0"])
    assert rc == "the server started" and "error" not in err, (rc, err)
    rc, err = serve([str(serve_runs["grid"]), "--port", "0", "--decode-compile", "on"])
    assert rc == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"tasktune serve: error: --decode-compile on: $TASKTUNE_CACHE: cannot "
                                            f"make {tmp_path}/file/cache/compile/inductor (Not a directory); set "
                                            "$TASKTUNE_CACHE to a writable folder, or give --decode-compile off"), err


def test_a_deleted_current_folder_is_one_line(serve_runs, serve, monkeypatch):
    """Started in a folder deleted under the shell, `tasktune serve` died importing torch with `Intel oneMKL FATAL
    ERROR: Cannot load .../libtorch_cpu.so`, which names no cause (os.getcwd fails there: faked here)."""
    import os

    def gone():
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "getcwd", gone)
    rc, err = serve([str(serve_runs["grid"]), "--port", "0"])
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "tasktune serve: error: the current folder no longer exists (deleted after the shell entered it): cd to "
        "another folder and run it again"), err

@pytest.mark.parametrize("runs, flags, says", [
    (["tiny-base={grid}"], ["--base-name", "tiny-base"], "run name 'tiny-base' is the base model's name"),
    (["auto={grid}"], [], "run name 'auto' is the model name that routes requests"),
    (["{grid}"], ["--base-name", "auto"], "--base-name auto"),
    (["={grid}"], [], "expected RUN_DIR or NAME=RUN_DIR"),
    (["x={grid}", " ={grid2}"], [], "expected RUN_DIR or NAME=RUN_DIR"),
])
def test_run_names_that_shadow_the_base_or_auto_are_refused(serve_runs, serve, runs, flags, says):
    """`tasktune serve tiny-glm=RUN auto=RUN` started: /v1/models listed the names twice and the base could not be
    reached; `=RUN` was served as the folder's name."""
    argv = [r.format(**serve_runs) for r in runs]
    rc, err = serve([*argv, "--port", "0", *flags])
    assert rc == 2 and "tasktune serve: error: " in err and says in err, err


@pytest.mark.parametrize("runs, flags, says", [
    (["a\nb={grid}"], [], "run name 'a\\nb' holds a control character: it is a model name clients send"),
    (["a\x1b[31mred={grid}"], [], "run name 'a\\x1b[31mred' holds a control character"),
    (["n" * 5000 + "={grid}"], [], "run name '" + "n" * 60 + "'... (5,000 characters) has 5,000 characters, "
                                   "over 256: it is a model name clients send and logs print; name the run with "
                                   "NAME=RUN_DIR"),
    (["{grid}"], ["--base-name", "b\tc"], "--base-name 'b\\tc' holds a control character"),
    (["{grid}"], ["--base-name", ""], "argument --base-name: empty; give a value or leave the flag out"),
    (["{grid}"], ["--cors-origin", ""], "argument --cors-origin: empty"),
    (["{grid}"], ["--allowed-host", " "], "argument --allowed-host: empty"),
])
def test_model_names_and_text_flags_that_cannot_serve_are_refused(serve_runs, serve, runs, flags, says):
    """A run named with a newline or an escape sequence was served, and the startup line printed it raw; a name
    of 5,000 characters was taken for a path (`File name too long`, the whole argument echoed); `--base-name ""`,
    `--cors-origin ""` and `--allowed-host ""` were accepted without a word."""
    argv = [r.format(**serve_runs) for r in runs]
    rc, err = serve([*argv, "--port", "0", *flags])
    assert rc == 2 and says in err and "Traceback" not in err, err
    assert "n" * 61 not in err, err  # the long name is not echoed whole


def test_the_base_models_own_name_is_refused_as_a_run_name(serve_runs, serve):
    """Without --base-name the base is served under its folder's name; a run may not take it either."""
    from tasktune.tuning.inference.bank import describe_run

    base = describe_run(serve_runs["grid"])[0].base_model
    from pathlib import Path

    rc, err = serve([f"{Path(base).name}={serve_runs['grid']}", "--port", "0"])
    assert rc == 2 and "is the base model's name; name the run apart" in err, err


def test_a_port_in_use_or_a_bad_host_is_refused_before_the_model_loads(serve_runs, serve, monkeypatch):
    """uvicorn said `ERROR: [Errno 98] address already in use` and exited 3, after the model had loaded."""
    import tasktune.serve.cli as cli

    monkeypatch.setattr(cli, "build", lambda args: pytest.fail("the model was loaded"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        rc, err = serve([str(serve_runs["grid"]), "--port", str(port)])
        assert rc == 2 and f"tasktune serve: error: --port {port}: address already in use" in err, err
    finally:
        taken.close()
    for host in ("999.1.1.1", "192.0.2.1"):  # no such address; an address of another machine (TEST-NET-1)
        rc, err = serve([str(serve_runs["grid"]), "--host", host, "--port", "0"])
        assert rc == 2 and f"tasktune serve: error: --host {host}: " in err, err


def test_a_damaged_base_config_is_named_by_serve_as_by_train(serve_runs, serve, tmp_path):
    """serve reads the base's config as training does (tuning/model/load.py load_config, for the tokenizer and for
    the context window): a damaged field is one line naming the file, before any model loads."""
    import json
    import shutil

    from tasktune.tuning.inference.bank import describe_run

    base = tmp_path / "base"
    shutil.copytree(describe_run(serve_runs["grid"])[0].base_model, base)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    (base / "config.json").write_text(json.dumps({**config, "hidden_size": "64"}), encoding="utf-8")
    run = tmp_path / "run"
    shutil.copytree(serve_runs["grid"], run)
    for name, where, key in (("tasktune_run.json", "config", "model"),
                             ("adapter_config.json", None, "base_model_name_or_path")):
        record = json.loads((run / name).read_text(encoding="utf-8"))
        (record[where] if where else record)[key] = str(base)  # the run's base is the damaged copy
        (run / name).write_text(json.dumps(record), encoding="utf-8")
    rc, err = serve([str(run), "--port", "0"])
    assert rc == 2 and "Traceback" not in err, err
    assert f"tasktune serve: error: {base}/config.json: " in err and "hidden_size" in err, err
