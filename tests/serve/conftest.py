"""Serve fixtures: two P-tuning v2 runs (P = 4 and 6) trained briefly on one tiny GLM base, built once a session;
one run on a base of a small context window (the window's limits)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory) -> dict[str, Path]:
    """{"grid": run folder (P=4), "grid2": run folder (P=6)}: same base, same data, different prefixes. The base
    has 1,024 positions: the tests of long streams (shutdown, cancellation, the queue) decode 900 tokens."""
    from tasktune.tuning.training.train import fit
    from tests.tuning.conftest import build_tiny_model_dir
    from tests.tuning.runs import fast_config, write_data

    root = tmp_path_factory.mktemp("serve")
    model = build_tiny_model_dir(root / "model", "glm", max_position_embeddings=1024)
    data = write_data(root / "data")
    runs = {}
    for name, p, seed in (("grid", 4, 7), ("grid2", 6, 11)):
        runs[name] = root / name
        fit(fast_config(model, data, runs[name], pre_seq_len=p, max_steps=10, learning_rate=3e-1, seed=seed,
                        save_steps=10), log=lambda *_: None)
    return runs


SMALL_WINDOW = 256
"""The context window (positions) of `small_window_run`'s base."""


@pytest.fixture(scope="session")
def small_window_run(tmp_path_factory) -> Path:
    """A run (P=4, max_source_length 160, max_target_length 64: 228 positions, as training checks) on a tiny GLM
    base of SMALL_WINDOW positions, where the base model's default answer (128 tokens) after a prompt cut to 160
    tokens does not fit."""
    from tasktune.tuning.training.train import fit
    from tests.tuning.conftest import build_tiny_model_dir
    from tests.tuning.runs import fast_config, write_data

    root = tmp_path_factory.mktemp("serve-window")
    model = build_tiny_model_dir(root / "model", "glm", max_position_embeddings=SMALL_WINDOW)
    fit(fast_config(model, write_data(root / "data"), root / "small", max_target_length=64, max_steps=2,
                    save_steps=2), log=lambda *_: None)
    return root / "small"


@pytest.fixture(scope="session")
def serve_prompts() -> list[str]:
    """Prompts in the runs' data format (the dev records) plus a few others."""
    from tests.tuning.runs import PLACES

    return ([f"步骤#理解并基于输入拆分函数参数*语音#查查{p}的人数" for p in PLACES[:5]]
            + ["步骤#问候*语音#你好", "hello world"])


class LiveServer:
    """A real `tasktune serve` (uvicorn on 127.0.0.1, a free port) in a thread of the test process."""

    def __init__(self, argv: list[str]):
        import argparse
        import socket
        import threading

        import uvicorn

        from tasktune.serve.cli import build, register

        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        args = parser.parse_args(["serve", *argv])
        self.app, self.service, self.api_key = build(args)
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (a bare socket() has 0),
        # and without it Nagle + delayed ACK hold each SSE chunk ~40 ms on a kept-alive connection
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        import time

        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)

    def client(self, **kwargs):
        from openai import OpenAI

        kwargs.setdefault("api_key", self.api_key or "none")
        return OpenAI(base_url=f"{self.url}/v1", max_retries=0, timeout=60, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.service.engine.shutdown()


def two_runs_argv(serve_runs, *flags: str) -> list[str]:
    """`tasktune serve grid=RUN grid2=RUN` with the limits the API tests expect (64 tokens, 256-token prompts,
    64 KiB bodies, the base as tiny-base), then `flags`."""
    return [f"grid={serve_runs['grid']}", f"grid2={serve_runs['grid2']}", "--max-tokens", "64",
            "--max-prompt-tokens", "256", "--max-body-bytes", "65536", "--base-name", "tiny-base", *flags]


@pytest.fixture(scope="session")
def live_server(serve_runs):
    """`tasktune serve grid=RUN grid2=RUN` with the grid spec's tools and the simulated grid actions off."""
    server = LiveServer(two_runs_argv(serve_runs, "--spec", "grid=grid", "--max-batch-size", "8"))
    yield server
    server.stop()
