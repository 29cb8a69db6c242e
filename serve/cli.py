"""`tasktune serve RUN [RUN ...]`: load the base once, put every run's prefix on it, serve the OpenAI API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasktune.flags import Range, nonempty
from tasktune.tuning.run import Trust, split_run_name

DESCRIPTION = """\
Serve trained runs behind an OpenAI-compatible HTTP API (POST /v1/chat/completions, GET /v1/models; streaming
as server-sent events), with a chat page at / , /health and Prometheus /metrics.

The base model is loaded once (as the runs were trained: 4-bit NF4 on a GPU when they were) and every run's
prefix is put on it; each run is a model name (its folder's name, or NAME=RUN_DIR), the base model is served
under its own name, and `auto` picks the run whose spec frames the request (else the base). Concurrent requests
for any mix of runs decode together (continuous batching). The spec's steps become tools: an argument step
answers with tool_calls, a tool message with the function's result gets the summary step's answer; with
--actions the server runs the functions itself.

Shutdown: on SIGTERM or SIGINT the server stops accepting connections (a request that still arrives gets 503),
lets in-flight requests and streams finish for up to --shutdown-timeout seconds, then cancels the rest (a stream
ends with an error event `shutting_down` and [DONE]; a second signal cancels at once), stops, prints one line
with how many requests were drained and cancelled, and exits 0.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve trained runs as an OpenAI-compatible API (batched, with tools)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: tasktune serve runs/grid-tiny --port 8000\n"
                              "         curl localhost:8000/v1/chat/completions -H 'content-type: application/json' "
                              "-d '{\"model\": \"grid-tiny\", "
                              "\"messages\": [{\"role\": \"user\", \"content\": \"你好\"}]}'")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (served as its folder name) or NAME=RUN_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=Range(int, 0, 65535), default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1/ (default: $TASKTUNE_API_KEY, else none)")
    p.add_argument("--max-batch-size", type=Range(int, 1, 4096), default=32,
                   help="rows decoded together (default: 32)")
    p.add_argument("--max-prompt-tokens", type=Range(int, 1, 1 << 20), default=4096,
                   help="longer prompts are refused with 400 (default: 4096)")
    p.add_argument("--max-tokens", type=Range(int, 1, 1 << 20), default=None,
                   help="the largest max_tokens a request may ask (default: 1024, or what the base model's context "
                        "window holds if less; a value given over the window is lowered to it, with a warning)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", type=nonempty,
                   help="let web pages from ORIGIN (e.g. http://localhost:3000, or * for any) call the API from "
                        "a browser (CORS; repeatable; default: none, only this server's own page; requests that "
                        "carry another Origin get 403)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME", type=nonempty,
                   help="a Host name requests may use (repeatable; * for any): bound to a loopback address the "
                        "server answers only localhost, 127.0.0.1, [::1] and IP addresses, against DNS rebinding; "
                        "name others here (a reverse proxy's name; bound elsewhere, default: any)")
    p.add_argument("--max-queue-delay", type=Range(float, 0, 10_000), default=0.0, metavar="MS",
                   help="hold waiting requests back up to MS milliseconds while other rows decode (or, on an idle "
                        "server, while arrivals come less than 5 ms apart), so that a burst shares one prefill "
                        "instead of one each (default: 0, admit at once; on an H100 it did not raise tokens/s)")
    p.add_argument("--max-queue", type=Range(int, 0, 1 << 20), default=256,
                   help="requests that may wait for a batch slot; beyond them a request gets 429 with "
                        "Retry-After: 1 (default: 256; 0: only what fits the batch)")
    p.add_argument("--max-body-bytes", type=Range(int, 1, 1 << 30), default=1 << 20,
                   help="larger request bodies are refused with 413 (default: 1 MiB)")
    p.add_argument("--max-header-bytes", type=Range(int, 1024, 1 << 24), default=32 * 1024, metavar="BYTES",
                   help="a request line and headers over this many bytes get 431 and the connection is closed "
                        "(default: 32768, between Node's 16 KiB and nginx's 32 KiB)")
    p.add_argument("--read-timeout", type=Range(float, 0.1, 3600), default=30.0, metavar="SECONDS",
                   help="a client has this long to send a request's head (line and headers; else the connection "
                        "is closed) and again its body (else 408) (default: 30)")
    p.add_argument("--spec", action="append", default=[], metavar="NAME=SPEC",
                   help="the task spec of run NAME (path or built-in name; default: the built-in spec its data "
                        "came from), for frames, routing and tools")
    p.add_argument("--router", metavar="RUN", help="a classification run (trained on the spec's intents) that "
                                                   "routes plain user text to a step")
    p.add_argument("--actions", metavar="MODULE.py", help="a Python file (or module) whose REGISTRY maps tool "
                                                         "names to callables: the server then runs the tools itself; "
                                                         "`grid` or `smarthome`: the simulated libraries that ship; "
                                                         "every tool of the served specs needs a function in it")
    p.add_argument("--action-timeout", type=Range(float, 0.001, 86400), default=30.0, metavar="SECONDS",
                   help="a server-side action (--actions) not answered within this long fails its request with 504 "
                        "`action_timeout` (default: 30; Python cannot stop its thread: it runs on, holding a worker)")
    p.add_argument("--action-workers", type=Range(int, 1, 4096), default=None, metavar="N",
                   help="threads that run server-side actions (--actions), apart from everything else; a call finds "
                        "one free or waits, within --action-timeout (default: --max-batch-size)")
    p.add_argument("--decode", choices=("auto", "dynamic", "slots"), default="auto",
                   help="slots: fixed key/value slots, one CUDA graph a step (GPU); dynamic: a padded batch that "
                        "grows and shrinks (CPU); auto: slots on CUDA, dynamic elsewhere")
    p.add_argument("--decode-weights", choices=("nf4", "bf16"), default="nf4",
                   help="a 4-bit base's linears while serving: nf4 keeps them packed (as trained; bitsandbytes "
                        "dequantises each weight on every call); bf16 dequantises them once at start, the same "
                        "values in about 3.8x the memory (a 6B GLM: ~11 GiB instead of ~3), for faster decode steps "
                        "(tuning/model/dequantize.py)")
    p.add_argument("--decode-compile", choices=("auto", "on", "off"), default="auto",
                   help="on: the slots' decode steps run torch.compile'd decoder layers (inductor fuses the norms, "
                        "rotary, activation and softmax into a few kernels; compiled at start, cached on disk by "
                        "inductor under $TASKTUNE_CACHE/compile/inductor); auto: on with CUDA slots; off: eager "
                        "layers (default: auto; a 6B GLM's step at 32 rows: 10.0 -> 6.6 ms on an H100, "
                        "benchmarks/RESULTS.md)")
    p.add_argument("--engine-process", choices=("auto", "on", "off"), default="auto",
                   help="on: the model and its scheduler run in a process of their own, so the HTTP side does not "
                        "slow them down (one GIL each); off: a thread of the server's process; auto: on with a "
                        "CUDA GPU, off on the CPU (default: auto; benchmarks/RESULTS.md)")
    p.add_argument("--shutdown-timeout", type=Range(float, 0, 86400), default=30.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long in-flight requests may go on before they are cancelled "
                        "(default: 30; uvicorn's graceful-shutdown timeout is this + 5 s for the last events)")
    p.add_argument("--base-name", type=nonempty,
                   help="the base model's model name (default: its folder name or hub id)")
    p.add_argument("--threads", type=Range(int, 0, 4096), default=0, metavar="N",
                   help="CPU threads for torch's operators (default 0: torch's default, one per core); on a small "
                        "CPU shared with the clients or uvicorn, 1 can decode faster (benchmarks/RESULTS.md)")
    Trust.add_flags(p)
    p.set_defaults(func=run)


def engine_in_process(choice: str) -> bool:
    """--engine-process: auto is on where a CUDA GPU is (the GIL, not the GPU, limits a batch there)."""
    if choice != "auto":
        return choice == "on"
    import torch

    return torch.cuda.is_available()


def build(args: argparse.Namespace):
    """Bank -> engine -> service -> app, from parsed flags (tests build servers through this too)."""

    from tasktune.envvars import env_number

    from .app import create_app
    from tasktune.tuning.inference.bank import load_view
    from tasktune.tuning.inference.engine_child import ChildConfig, build_engine
    from tasktune.tuning.inference.engine_process import EngineProcess
    from tasktune.errors import ConfigError

    from .names import names_apart
    from .router import load_router
    from .actions.loading import server_actions
    from .service import Limits, Service, load_tools
    from .site import allowed_hosts
    from .startup import api_key as startup_api_key, inductor_cache, pairs
    from .window import fit_window

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # The engine thread and the event loop share the GIL. TASKTUNE_SWITCH_INTERVAL (seconds) sets Python's switch
    # interval, for benchmarks/serve_bench.py's comparisons: on an H100 shorter ones than the default 5 ms made
    # 32 streams slower (0.5 ms: 79x -> 68x the serial baseline; 0.1 ms: 61x; benchmarks/RESULTS.md, gil20).
    switch = env_number("TASKTUNE_SWITCH_INTERVAL", None, Range(float, 1e-6, 1.0))
    if switch is not None:
        sys.setswitchinterval(switch)
    api_key = startup_api_key(args.api_key)
    runs = [split_run_name(item) for item in args.runs]  # (a folder whose own name holds "=" is a RUN_DIR)
    trust = Trust.from_args(args)  # the user's grants; a run folder's record gives none (tuning/run.py)
    view = load_view(runs, trust)  # the runs and the tokenizer, checked before any model loads
    first = next(iter(view.runs.values()))
    base_name = args.base_name or Path(first.base_model).name or first.base_model
    names_apart(list(view.runs), base_name, bool(args.base_name))
    tools = load_tools(view.runs, pairs(args.spec, "--spec", list(view.runs)))
    actions = server_actions(args, tools) if args.actions else None
    router = load_router(args.router, view.runs, trust, tools) if args.router else None
    # prompts are cut to the runs' max_source_length (as training and eval cut them): a slot holds that plus
    # the prefix and the largest answer a request may ask for, never more than the base's context window
    args.max_tokens, width = fit_window(view.context, view.runs.values(), args.max_tokens,
                                        lambda line: print(line, file=sys.stderr, flush=True))
    if args.decode_compile != "off":  # inductor's content-keyed caches beside training's (a restart compiles fast)
        inductor_cache(args.decode_compile)
    config = ChildConfig(runs, args.max_batch_size, args.decode, width, args.decode_weights, args.threads,
                         args.decode_compile, args.max_queue_delay / 1000, trust)
    args.in_process = engine_in_process(args.engine_process)  # for the startup line, as args.dequantised
    if args.in_process:
        engine = EngineProcess(view, config)
        args.dequantised = engine.dequantised
    else:
        engine, args.dequantised = build_engine(config, view.tokenizer)
    if args.decode_weights == "bf16" and not args.dequantised:
        print("tasktune serve: --decode-weights bf16: the base has no 4-bit linears (it was not trained "
              "quantised); nothing to dequantise", file=sys.stderr, flush=True)
    service = Service(engine, base_name=base_name, tools=tools, router=router, actions=actions,
                      limits=Limits(args.max_prompt_tokens, args.max_tokens, args.max_body_bytes, args.max_queue,
                                  args.read_timeout, args.max_header_bytes))
    hosts = allowed_hosts(args.host, args.allowed_host)
    return create_app(service, api_key=api_key, cors_origins=tuple(args.cors_origin), hosts=hosts), service, api_key


def run(args: argparse.Namespace) -> int:
    from tasktune.errors import ConfigError

    from .shutdown import GracefulServer

    try:  # a folder deleted under the shell: torch's import died in oneMKL (`FATAL ERROR: Cannot load libtorch_cpu`)
        os.getcwd()
    except FileNotFoundError:
        raise ConfigError("the current folder no longer exists (deleted after the shell entered it): cd to another "
                          "folder and run it again") from None
    sock = bind(args.host, args.port)  # before the model loads: a port in use is said at once
    try:
        app, service, api_key = build(args)
    except BaseException:
        sock.close()
        raise
    names = ", ".join(service.model_names())
    # printed once the port is open (with the port bound, for --port 0): a supervisor can wait for this line
    def banner(port: int) -> str:
        return (f"tasktune serve: {names} on http://{args.host}:{port} (batch {args.max_batch_size}, "
                f"device {service.bank.device}, API key {'required' if api_key else 'off'}, "
                f"shutdown timeout {args.shutdown_timeout:g} s, "
                f"engine {'in its own process' if args.in_process else 'thread'}"
                f"{', 4-bit linears dequantised to bf16' if getattr(args, 'dequantised', 0) else ''}"
                f"{', decode layers compiled' if getattr(service.engine, 'fused', 0) else ''})")

    server = GracefulServer(app, service, host=args.host, port=args.port, shutdown_timeout=args.shutdown_timeout,
                            banner=banner, read_timeout=args.read_timeout)
    try:
        server.run(sockets=[sock])  # SIGTERM/SIGINT: drain, then cancel (serve/shutdown.py)
    finally:
        service.engine.shutdown()
    line = server.summary()
    if line:
        print(line, file=sys.stderr, flush=True)
    return 0


def bind(host: str, port: int):
    """A TCP socket bound to --host and --port (uvicorn listens on it): an address in use, a --host that is no
    address of this machine or resolves to none is a ConfigError naming the flag (uvicorn said `[Errno 98] address
    already in use` and exited 3, after the model had loaded)."""
    import errno
    import socket

    from tasktune.errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host}: not an address or name of this machine ({exc})") from None
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (tests/serve/conftest.py)
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait TIME_WAIT
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: address already in use (on {host})") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"--port {port}: permission denied (ports below 1024 need privileges)") from None
        raise ConfigError(f"--host {host}: cannot listen there: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
