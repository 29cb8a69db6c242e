"""Load test of `tasktune serve`: tokens/s, time to first token and latency at N concurrent streams, against the
serial baseline (one request at a time through `generate`, as ChatGLM's api.py serves), and a mix of prefixes.

    python benchmarks/serve_bench.py                      # builds tiny runs (2 layers) like the tests, CPU
    python benchmarks/serve_bench.py runs/grid-tiny ...   # real run folders (the first is the single prefix)

Every request asks for exactly --max-tokens tokens (end-of-sequence ignored: `ignore_eos`), so tokens/s do not
depend on what the weights say. Prints one table row per setting.

The load generator (httpx, asyncio) runs in a process of its own (multiprocessing, spawned once and reused for
every setting), so parsing the streams does not take the server's GIL or event loop; the server (uvicorn in a
thread, the engine in another) stays in this process, where the decode step times are read.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_tiny_runs(root: Path, count: int) -> list[Path]:
    from tasktune.tuning.training.train import fit
    from tests.tuning.conftest import build_tiny_model_dir
    from tests.tuning.runs import fast_config, write_data

    model = build_tiny_model_dir(root / "model", "glm")
    data = write_data(root / "data")
    runs = []
    for k in range(count):
        runs.append(root / f"task{k}")
        fit(fast_config(model, data, runs[-1], pre_seq_len=4 + 2 * k, max_steps=4, seed=k), log=lambda *_: None)
    return runs


def prompts() -> list[str]:
    from tests.tuning.runs import CHECKS, PLACES

    return [f"步骤#理解并基于输入拆分函数参数*语音#查查{p}的{k}" for p in PLACES for k in CHECKS]


def serial_baseline(run: Path, texts: list[str], max_tokens: int) -> float:
    """Tokens/s answering one prompt at a time with `generate` (batch 1), as a serial api.py does."""
    import torch

    from tasktune.tuning.data import encode_prompts, format_prompt
    from tasktune.tuning.model.methods import load_run_adapter
    from tasktune.tuning.model.load import load_tokenizer
    from tasktune.tuning.run import RunFolder

    record = RunFolder(run).record()
    tok = load_tokenizer(record.config.model)
    model = load_run_adapter(run, record).model
    device = next(model.parameters()).device
    ids = encode_prompts(tok, [format_prompt(tok, t, []) for t in texts], "auto")
    with torch.inference_mode():  # one untimed request first: on an H100 (2026-12-07) the first, cold, serial
        # baseline ran at 20-22 tokens/s and the same requests after the streams at 30-32, which inflated "x serial"
        model.generate(input_ids=torch.tensor([ids[0]], device=device), max_new_tokens=max_tokens,
                       min_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    start, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for row in ids:
            out = model.generate(input_ids=torch.tensor([row], device=device), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            tokens += out.shape[1] - len(row)
    return tokens / (time.perf_counter() - start)


async def load(url: str, models: list[str], texts: list[str], streams: int, requests: int, max_tokens: int):
    import httpx

    ttft, latency, tokens = [], [], 0
    gate = asyncio.Semaphore(streams)

    async def one(client, i):
        nonlocal tokens
        body = {"model": models[i % len(models)], "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": texts[i % len(texts)]}]}
        async with gate:
            start = time.perf_counter()
            first = None
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    data = json.loads(line[6:])
                    if first is None and any(c["delta"].get("content") for c in data.get("choices", [])):
                        first = time.perf_counter() - start
                    if data.get("usage"):
                        tokens += data["usage"]["completion_tokens"]
            ttft.append(first if first is not None else time.perf_counter() - start)
            latency.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=streams)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        wall = time.perf_counter() - start
    return tokens / wall, ttft, latency


def load_in_own_process(url: str, models: list[str], texts: list[str], streams: int, requests: int,
                        max_tokens: int):
    """`load` in the load generator's process (the pool's worker): (tokens/s, TTFTs, latencies)."""
    return asyncio.run(load(url, models, texts, streams, requests, max_tokens))


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run folders (default: tiny runs built here)")
    parser.add_argument("--streams", default="1,8,16,32,64", help="concurrent streams to measure")
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--serial-requests", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--decode", default="auto", choices=("auto", "dynamic", "slots"))
    parser.add_argument("--decode-weights", default="nf4", choices=("nf4", "bf16"),
                        help="the server's --decode-weights (the serial baseline keeps the runs' own 4-bit base)")
    parser.add_argument("--decode-compile", default="auto", choices=("auto", "on", "off"),
                        help="the server's --decode-compile (compiled decoder layers in the slots' decode step)")
    parser.add_argument("--max-queue-delay", type=float, default=0.0, metavar="MS",
                        help="the server's --max-queue-delay (a burst of arrivals shares one prefill)")
    parser.add_argument("--engine-process", default="auto", choices=("auto", "on", "off"),
                        help="the server's --engine-process (auto: the engine in its own process on CUDA)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for the serial baseline and the server alike (they share this "
                             "process; the load generator has its own); 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from tests.serve.conftest import LiveServer

    tmp = tempfile.TemporaryDirectory()
    runs = [Path(r) for r in args.runs] or build_tiny_runs(Path(tmp.name), 4)
    texts = prompts()
    serial = serial_baseline(runs[0], texts[:args.serial_requests], args.max_tokens)
    names = [f"task{k}={run}" for k, run in enumerate(runs[:4])]
    server = LiveServer([*names, "--max-batch-size", str(args.max_batch_size), "--max-tokens",
                         str(max(args.max_tokens, 16)), "--decode", args.decode, "--threads", str(args.threads),
                         "--decode-weights", args.decode_weights, "--engine-process", args.engine_process,
                         "--decode-compile", args.decode_compile, "--max-queue-delay", str(args.max_queue_delay)])
    import torch

    from tasktune.tuning.inference.engine_process import EngineProcess

    where = "its own process" if isinstance(server.service.engine, EngineProcess) else "a thread"
    # uvicorn's `auto`: httptools and uvloop where they are installed, else h11 and asyncio's loop (pure Python)
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(f"decode: {server.service.engine.decode}; weights: {args.decode_weights}; engine in {where}; "
          f"torch threads: {torch.get_num_threads()}; http: {http}; loop: {loop}", flush=True)
    steps: list[tuple[int, float]] = []  # (rows in the batch, seconds) of every decode step
    stats = server.service.engine.stats
    stats.observers.append(lambda name, value: steps.append((stats.running, value)) if name == "step_seconds"
                           else None)
    prefills: list[float] = []  # seconds of every admission (prefill, placement, first token)
    stats.observers.append(lambda name, value: prefills.append(value) if name == "prefill_seconds" else None)
    print("| setting | tokens/s | x serial | TTFT p50 | TTFT p99 | latency p50 | latency p99 | step ms p50 (rows) "
          "| admissions: ms in all (count) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| serial generate, batch 1 | {serial:.1f} | 1.0 | | | | | | |")
    from concurrent.futures import ProcessPoolExecutor

    client = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        for streams in [int(s) for s in args.streams.split(",")]:
            for label, models in (("1 prefix", ["task0"]), (f"{min(4, len(runs))} prefixes mixed",
                                                            [f"task{k}" for k in range(min(4, len(runs)))])):
                if label != "1 prefix" and len(runs) == 1:
                    continue
                steps.clear()
                prefills.clear()
                rate, ttft, latency = client.submit(load_in_own_process, server.url, models, texts, streams,
                                                    streams * args.requests_per_stream, args.max_tokens).result()
                rows = max((n for n, _ in steps), default=0)
                full = [t for n, t in steps if n == rows] or [0.0]
                print(f"| {streams} streams, {label} | {rate:.1f} | {rate / serial:.1f} | {pct(ttft, 50):.3f} | "
                      f"{pct(ttft, 99):.3f} | {pct(latency, 50):.3f} | {pct(latency, 99):.3f} | "
                      f"{1000 * statistics.median(full):.1f} ({rows}) | {1000 * sum(prefills):.0f} "
                      f"({len(prefills)}) |", flush=True)
        # the baseline once more: on shared cores a neighbour's load moves it (seen: 56 to 850 tokens/s on 2 cores)
        again = serial_baseline(runs[0], texts[:args.serial_requests], args.max_tokens)
        print(f"| serial generate, batch 1, again after the streams | {again:.1f} | {again / serial:.1f} | | | | | | |",
              flush=True)
    finally:
        client.shutdown()
        server.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
