"""Training benchmark (issue #6): tasktune's P-tuning v2 vs the reference recipe (PEFT PrefixTuningConfig) on a
frozen 4-bit GLM: peak GPU memory, step time, tokens/s, FLOP utilisation, largest batch under memory caps.

    python benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --out $OUT/train.json   # GPU machine
    python benchmarks/train_bench.py --tiny                                                   # CPU smoke test
    python benchmarks/train_bench.py --size 6b --model-dir /tmp/glm6b --cases 4x64x64 --compile off,on,cudagraphs
    python benchmarks/train_bench.py --size narrow28 --cases 4x64x64 --count-ops --caps ""     # ops/step, CPU

The tasktune side runs the project's own path: `tuning.model.load.load_model` + `tuning.model.prefix.attach_prefix` and the
micro-step of `tuning/training/train.py` (bf16 autocast on GPU, loss.backward, clip, AdamW on the prefix), with the
non-reentrant gradient checkpointing train.py enables by default ("full"); "none" and "every2" (every other
layer checkpointed) are variants, each also under `--compile on|cudagraphs` (tuning/training/compiling.py). The
reference wraps the same loaded model in PEFT's prefix tuning without gradient checkpointing (PEFT refuses it
with prefix tuning). Synthetic batches: src/tgt tokens, loss on tgt.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmodel  # noqa: E402

CUDA = torch.cuda.is_available()
GIB = 2 ** 30


# ------------------------------------------------------------------------------------------ setup

def measure_bf16_peak() -> float | None:
    """Measured bf16 matmul rate (TFLOP/s) of this GPU: 8192^3 products on random data, median of 10."""
    if not CUDA:
        return None
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 8192 ** 3 / sorted(times)[len(times) // 2] / 1e12


def make_batch(batch: int, src: int, tgt: int, vocab: int, rng: random.Random) -> dict:
    """Full-length synthetic rows (no padding): loss on the tgt part only, as tuning/data.py labels it."""
    ids = torch.tensor([[rng.randrange(len(benchmodel.SPECIALS), vocab) for _ in range(src + tgt)]
                        for _ in range(batch)])
    labels = ids.clone()
    labels[:, :src] = -100
    device = "cuda" if CUDA else "cpu"
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device)}


def set_checkpointing(model, mode: str) -> str:
    """"full" as tuning/training/train.py does it; "none"; "everyN" / "every-N": only every N-th decoder layer recomputes
    (tuning/training/memory.py's `apply`, what `tasktune train --gradient-checkpointing` does)."""
    from tasktune.tuning.config import parse_checkpointing
    from tasktune.tuning.training import memory

    if mode.startswith("auto"):  # (the caps search after an auto variant: the leanest)
        mode = "full"
    if mode == "none":
        if hasattr(model, "activation_checkpointing_disable"):  # transformers >= 5.2x
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()
        return mode
    memory.apply(model, parse_checkpointing(mode))
    return mode


def resolve_auto(variant: str, method, batch_size: int, src: int, tgt: int, weights_bytes: int,
                 compiled: bool) -> tuple[str, dict]:
    """"auto" / "auto:GIB" (as --gradient-checkpointing auto [--max-memory GIB]) -> the mode tuning/training/memory.py picks
    for this case (the model's free-memory budget on CUDA; full on a CPU), and the estimate's figures."""
    from tasktune.tuning.training import memory

    max_gib = float(variant.split(":")[1]) if ":" in variant else 0.0
    if not CUDA:
        return "full", {}
    config = method.model.config
    sizes = memory.Sizes(layers=config.num_hidden_layers, hidden=config.hidden_size,
                         intermediate=config.intermediate_size, vocab=config.vocab_size, weights_bytes=weights_bytes,
                         trainable=sum(p.numel() for p in method.params), tokens=batch_size * (src + tgt))
    budget, source = memory.device_budget(torch.device("cuda", 0), max_gib)
    choice = memory.choose(sizes, budget, compiled=compiled, source=source)
    return choice.mode, {"auto_estimate_gib": round(choice.estimate_bytes / GIB, 3),
                         "auto_budget_gib": round(budget / GIB, 2), "auto_line": choice.describe()}


class Method:
    """One way of training a prefix on the loaded model: `params`, `model` to call, `close()`.

    `forward` is what a step calls: `model`, or its torch.compile'd version (`compile`: tuning/training/compiling.py).
    """

    def __init__(self, name, model, params, close):
        self.name, self.model, self.params, self.close = name, model, params, close
        self.forward, self.compile = model, "off"

    def set_compile(self, mode: str) -> None:
        from tasktune.tuning.training import compiling

        torch._dynamo.reset()  # drop earlier variants' graphs (and CUDA-graph pools)
        self.forward, self.compile = compiling.compile_model(self.model, mode), mode


def attach_tasktune(model, pre_seq_len: int) -> Method:
    from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix

    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=pre_seq_len))
    model.config.use_cache = False
    model.train()

    def close():
        set_checkpointing(model, "none")
        tuner.detach()

    return Method("tasktune", model, [p for p in tuner.encoder.parameters() if p.requires_grad], close)


def attach_reference(model, pre_seq_len: int) -> Method:
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    set_checkpointing(model, "none")
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=pre_seq_len))
    peft_model.train()
    return Method("reference", peft_model, [p for p in peft_model.parameters() if p.requires_grad], lambda: None)


# ------------------------------------------------------------------------------------------ measure

def train_step(method: Method, optimizer, batch: dict) -> float:
    """One micro-step as tuning/training/train.py runs it (accumulation 1): autocast, backward, clip, AdamW."""
    from tasktune.tuning.training import compiling

    graphs = method.compile in compiling.GRAPH_MODES
    compiling.step_begin(method.compile)
    if graphs:
        compiling.materialize_grads(method.params)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=CUDA):
        loss = method.forward(**batch).loss
    value = loss.detach().clone() if graphs else loss.detach()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(method.params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=not graphs)
    return float(value)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def measure(method: Method, batch_size: int, src: int, tgt: int, *, steps: int, warmup: int, vocab: int,
            n_params: int, peak_tflops: float | None, seed: int = 0) -> dict:
    """Warm up, then time `steps` steps; peak memory over warm-up and timed steps."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(method.params, lr=2e-2)
    batches = [make_batch(batch_size, src, tgt, vocab, rng) for _ in range(2)]
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    first_s = None
    for i in range(warmup):
        t0 = time.perf_counter()
        train_step(method, optimizer, batches[i % 2])
        sync()
        first_s = first_s if first_s is not None else time.perf_counter() - t0
    sync()
    started = time.perf_counter()
    losses, times = [], []
    for i in range(steps):  # each step ends with float(loss): a host sync, as in tuning/training/train.py's log
        t0 = time.perf_counter()
        losses.append(train_step(method, optimizer, batches[i % 2]))
        times.append(time.perf_counter() - t0)
    sync()
    step_s = (time.perf_counter() - started) / steps
    tokens = batch_size * (src + tgt)
    ordered = sorted(times)
    row = {"method": method.name, "compile": method.compile, "batch": batch_size, "src": src, "tgt": tgt,
           "step_s": round(step_s, 4), "median_step_s": round(ordered[len(ordered) // 2], 4),
           "min_step_s": round(ordered[0], 4), "tokens_per_s": round(tokens / step_s, 1),
           "loss": round(losses[-1], 4), "first_step_s": first_s and round(first_s, 2)}
    if CUDA:
        row["max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        row["max_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    if peak_tflops:
        row["mfu_pct"] = round(100 * 4 * n_params * tokens / step_s / 1e12 / peak_tflops, 2)
    del optimizer, batches
    return row


def count_ops(method: Method, batch: dict) -> dict:
    """ATen ops one training step dispatches (views and detach left out): on a GPU each is about one kernel
    launch (bitsandbytes' ops count once here but launch 2-3 kernels), so this is the launch count a CPU can
    measure. Eager steps only: compiled code launches its kernels without dispatching ATen ops (use
    --profile-dir on a GPU for those)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view and func.overloadpacket is not torch.ops.aten.detach:
                self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    optimizer = torch.optim.AdamW(method.params, lr=2e-2)
    train_step(method, optimizer, batch)
    with Count() as counter:
        train_step(method, optimizer, batch)
    del optimizer
    return {"ops_per_step": sum(counter.ops.values()), "top_ops": dict(counter.ops.most_common(8))}


def fits(method: Method, batch_size: int, src: int, tgt: int, vocab: int) -> bool:
    """True if one full step at this batch runs without running out of GPU memory."""
    ok = True
    try:
        optimizer = torch.optim.AdamW(method.params, lr=2e-2)
        train_step(method, optimizer, make_batch(batch_size, src, tgt, vocab, random.Random(1)))
        sync()
    except torch.OutOfMemoryError:
        ok = False
    for p in method.params:
        p.grad = None
    gc.collect()
    torch.cuda.empty_cache()
    return ok


def largest_batch(method: Method, cap_gib: float, src: int, tgt: int, vocab: int, limit: int = 512) -> int:
    """Largest batch that fits under `cap_gib` (doubling, then bisection); 0 if batch 1 does not fit."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
    try:
        good, bad = 0, None
        size = 1
        while size <= limit and fits(method, size, src, tgt, vocab):
            good, size = size, size * 2
        bad = size if size <= limit else None
        while bad is not None and bad - good > max(1, good // 8):
            mid = (good + bad) // 2
            good, bad = (mid, bad) if fits(method, mid, src, tgt, vocab) else (good, mid)
        return good
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def profile(method: Method, batch_size: int, src: int, tgt: int, vocab: int, out: Path | None, top: int = 25) -> dict:
    """torch.profiler over 2 steps: GPU busy time vs wall time, time per kernel family, the top kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    optimizer = torch.optim.AdamW(method.params, lr=2e-2)
    batch = make_batch(batch_size, src, tgt, vocab, random.Random(2))
    train_step(method, optimizer, batch)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with torch_profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(2):
            train_step(method, optimizer, batch)
        sync()
        wall = (time.perf_counter() - started) / 2
    events = prof.key_averages()
    device_time = lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))  # noqa: E731
    families = {"dequantize (bnb)": ("dequant",), "matmul": ("gemm", "gemv", "nvjet", "cutlass", "xmma", "matmul"),
                "attention": ("flash", "fmha", "attention", "efficient"), "other": ()}
    family_us = dict.fromkeys(families, 0.0)
    kernels = [e for e in events if device_time(e) > 0 and e.device_type == torch.autograd.DeviceType.CUDA] \
        if CUDA else []
    for e in kernels:
        name = e.key.lower()
        family = next((f for f, keys in families.items() if any(k in name for k in keys)), "other")
        family_us[family] += device_time(e)
    launches = sum(e.count for e in kernels)
    busy = sum(family_us.values()) / 2 / 1e6
    result = {"method": method.name, "compile": method.compile, "batch": batch_size, "src": src, "tgt": tgt,
              "wall_step_s": round(wall, 4),
              "gpu_busy_step_s": round(busy, 4), "kernel_launches_per_step": launches // 2,
              "family_ms_per_step": {k: round(v / 2 / 1e3, 2) for k, v in family_us.items()}}
    sort = "self_device_time_total" if CUDA else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=top, max_name_column_width=60)
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n\n" + table)
    del optimizer
    return result


# ------------------------------------------------------------------------------------------ run

def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """"1x64x64,4x256x256" -> [(batch, src, tgt), ...]."""
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def print_table(rows: list[dict], keys: list[str]) -> None:
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row.get(k, "")) for k in keys))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmodel.add_model_arguments(parser)
    parser.add_argument("--cases", default="1x64x64,4x64x64,4x256x256", help="BATCHxSRCxTGT, comma-separated")
    parser.add_argument("--checkpointing", default="full,none,every2",
                        help="tasktune variants: full, none, everyN, auto (what `tasktune train` picks: "
                             "tuning/training/memory.py), auto:GIB (auto under --max-memory GIB)")
    parser.add_argument("--methods", default="tasktune,reference")
    parser.add_argument("--compile", default="off",
                        help="tasktune variants: off, on, cudagraphs, eager-graphs (tuning/training/compiling.py)")
    parser.add_argument("--caps", default="8,24", help="GiB caps for the largest-batch search (GPU only)")
    parser.add_argument("--cap-case", default="64x64", help="SRCxTGT for the cap search")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--count-ops", action="store_true", help="ATen ops per step (≈ kernel launches)")
    parser.add_argument("--profile-dir", help="write torch.profiler tables here (batch 4, 64/64)")
    parser.add_argument("--out", help="JSON file for all figures")
    parser.add_argument("--dequantize", action="store_true",
                        help="issue 23: before the first tasktune method, replace the 4-bit linears by bf16 copies of "
                             "their values (tuning/model/dequantize.py); methods listed before it (e.g. "
                             "--methods reference,tasktune) still run on the packed 4-bit weights")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size = "tiny"
        args.pre_seq_len = min(args.pre_seq_len, 8)
        args.cases = "1x8x8,2x8x8" if args.cases == parser.get_default("cases") else args.cases
        args.checkpointing = "full,none" if args.checkpointing == parser.get_default("checkpointing") \
            else args.checkpointing

    from tasktune.tuning.model.load import load_model

    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix=f"glm-{args.size}-"))
    benchmodel.build_model_dir(args.size, model_dir)
    n_params = json.loads((model_dir / benchmodel.RECORD).read_text())["parameters"]
    vocab = benchmodel.SIZES[args.size]["vocab_size"]
    quant = None if args.quantization_bit == "none" else int(args.quantization_bit)
    results: dict = {"size": args.size, "parameters": n_params, "quantization_bit": quant,
                     "pre_seq_len": args.pre_seq_len, "date": time.strftime("%Y-%m-%d %H:%M"),
                     "torch": torch.__version__, "runs": [], "caps": [], "profiles": []}
    try:
        import peft
        import transformers

        results.update(transformers=transformers.__version__, peft=peft.__version__)
    except ImportError:
        pass
    if CUDA:
        results["gpu"] = torch.cuda.get_device_name(0)
    results["bf16_peak_tflops"] = peak = measure_bf16_peak()
    out = Path(args.out) if args.out else None

    def save():
        if out is not None:
            out.write_text(json.dumps(results, indent=2) + "\n")

    started = time.perf_counter()
    model = load_model(model_dir, quantization_bit=quant)
    if quant is None and CUDA:  # quantized models are placed by load_model; full precision is moved here
        model.to("cuda")
    results["load_seconds"] = round(time.perf_counter() - started, 1)
    weights_bytes = 0
    if CUDA:
        weights_bytes = torch.cuda.memory_allocated()
        results["weights_gib"] = round(weights_bytes / GIB, 3)
    print(f"loaded {args.size} ({n_params / 1e9:.3f}B params, {quant}-bit) in {results['load_seconds']}s; "
          f"weights {results.get('weights_gib')} GiB; bf16 peak {peak and round(peak)} TFLOP/s", flush=True)
    cases = parse_cases(args.cases)
    cap_src, cap_tgt = (int(v) for v in args.cap_case.split("x"))
    caps = [float(c) for c in args.caps.split(",") if c] if CUDA else []
    weights = f"{quant}-bit" if quant else "unquantised"
    for name in args.methods.split(","):
        if name == "tasktune" and args.dequantize and quant:
            from tasktune.tuning.model.dequantize import dequantize_4bit_linears

            replaced = dequantize_4bit_linears(model)
            weights = f"{quant}-bit dequantised to bf16"
            if CUDA:
                results["dequantised_weights_gib"] = round(torch.cuda.memory_allocated() / GIB, 3)
            print(f"dequantised {replaced} linears; weights now {results.get('dequantised_weights_gib')} GiB",
                  flush=True)
        try:
            method = attach_tasktune(model, args.pre_seq_len) if name == "tasktune" \
                else attach_reference(model, args.pre_seq_len)
        except Exception as exc:  # noqa: BLE001
            results["runs"].append({"method": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(json.dumps(results["runs"][-1]), flush=True)
            continue
        checkpointing = args.checkpointing.split(",") if name == "tasktune" else ["none"]
        compiles = args.compile.split(",") if name == "tasktune" else ["off"]
        for comp in compiles:
            for mode in checkpointing:
                auto = mode.startswith("auto")
                if not auto:
                    set_checkpointing(model, mode)
                if not auto and (comp != "off" or method.compile != "off"):  # a new trace for every compiled variant
                    method.set_compile(comp)
                variant_rows = []
                for batch_size, src, tgt in cases:
                    chosen = {}
                    try:
                        if auto:  # issue 23: the mode `--gradient-checkpointing auto` picks for this case
                            picked, chosen = resolve_auto(mode, method, batch_size, src, tgt, weights_bytes,
                                                          compiled=comp != "off")
                            set_checkpointing(model, "none")
                            set_checkpointing(model, picked)
                            chosen["auto_mode"] = picked
                            if comp != "off" or method.compile != "off":
                                method.set_compile(comp)
                        row = measure(method, batch_size, src, tgt, steps=args.steps, warmup=args.warmup,
                                      vocab=vocab, n_params=n_params, peak_tflops=peak)
                        row.update(chosen)
                    except Exception as exc:  # noqa: BLE001  (an OOM or a library error: record it, go on)
                        error = "OOM" if isinstance(exc, torch.OutOfMemoryError) else f"{type(exc).__name__}: {exc}"
                        row = {"method": name, "compile": comp, "batch": batch_size, "src": src, "tgt": tgt,
                               "error": error[:300]}
                        for p in method.params:
                            p.grad = None
                        gc.collect()
                        if CUDA:
                            torch.cuda.empty_cache()
                    row["checkpointing"] = mode
                    row["weights"] = weights
                    if args.count_ops and "error" not in row and comp == "off":
                        row.update(count_ops(method, make_batch(batch_size, src, tgt, vocab, random.Random(3))))
                    variant_rows.append(row)
                    results["runs"].append(row)
                    print(json.dumps(row), flush=True)
                    save()
                if args.profile_dir and not any(r.get("error") for r in variant_rows):
                    folder = Path(args.profile_dir)
                    folder.mkdir(parents=True, exist_ok=True)
                    suffix = "" if (mode, comp) == (checkpointing[0], "off") else f"_{mode}_{comp}"
                    prof = profile(method, 4 if not args.tiny else 2, cap_src if not args.tiny else 8,
                                   cap_tgt if not args.tiny else 8, vocab, folder / f"profile_{name}{suffix}.txt")
                    prof["checkpointing"] = mode
                    results["profiles"].append(prof)
                    print(json.dumps(prof), flush=True)
                    save()
        if method.compile != "off":
            method.set_compile("off")
        set_checkpointing(model, checkpointing[0])
        variants = checkpointing
        for cap in caps:
            try:
                best = largest_batch(method, cap, cap_src, cap_tgt, vocab)
            except Exception as exc:  # noqa: BLE001
                results["caps"].append({"method": name, "cap_gib": cap, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            row = {"method": name, "cap_gib": cap, "checkpointing": variants[0], "largest_batch": best}
            size = best
            while size:  # timing keeps two batches alive: step down (by 1/8) if that no longer fits
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap * GIB / torch.cuda.get_device_properties(0)
                                                               .total_memory))
                try:
                    row.update({k: v for k, v in measure(method, size, cap_src, cap_tgt, steps=3, warmup=1,
                                                         vocab=vocab, n_params=n_params, peak_tflops=peak).items()
                                if k in ("step_s", "tokens_per_s", "max_allocated_gib", "max_reserved_gib",
                                         "mfu_pct")})
                    row["measured_batch"] = size
                    break
                except torch.OutOfMemoryError:
                    size = size - max(1, size // 8)
                    for p in method.params:
                        p.grad = None
                    gc.collect()
                    torch.cuda.empty_cache()
                finally:
                    torch.cuda.set_per_process_memory_fraction(1.0)
            results["caps"].append(row)
            print(json.dumps(row), flush=True)
            save()
        method.close()
    save()
    print(f"\n== train bench: {args.size} GLM, {n_params / 1e9:.2f}B params, {quant}-bit, P={args.pre_seq_len}, "
          f"{results.get('gpu', 'CPU')}, bf16 peak {peak and round(peak)} TFLOP/s")
    print_table(results["runs"], ["method", "weights", "checkpointing", "auto_mode", "compile", "batch", "src", "tgt", "step_s",
                                  "median_step_s", "tokens_per_s", "first_step_s", "max_allocated_gib",
                                  "max_reserved_gib", "auto_estimate_gib", "mfu_pct", "ops_per_step", "error"])
    ref = {(r["batch"], r["src"], r["tgt"]): r for r in results["runs"]
           if r["method"] == "reference" and "tokens_per_s" in r}
    for r in results["runs"]:
        other = ref.get((r["batch"], r["src"], r["tgt"]))
        if r["method"] == "tasktune" and other and "tokens_per_s" in r:
            ratio = {"case": f"{r['batch']}x{r['src']}/{r['tgt']}", "checkpointing": r["checkpointing"],
                     "auto_mode": r.get("auto_mode"),
                     "compile": r.get("compile", "off"),
                     "speed_ratio": round(r["tokens_per_s"] / other["tokens_per_s"], 2)}
            if CUDA:
                ratio["memory_ratio"] = round(r["max_allocated_gib"] / other["max_allocated_gib"], 3)
            print(json.dumps(ratio))
    if results["caps"]:
        print_table(results["caps"], ["method", "cap_gib", "largest_batch", "measured_batch", "tokens_per_s",
                                      "max_reserved_gib", "error"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
