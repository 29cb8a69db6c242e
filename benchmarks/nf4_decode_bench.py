"""The 4-bit linears at decode sizes (issue 20), per ChatGLM3-6B linear shape and row count: bitsandbytes' inference
call; cuBLAS on the weight dequantised once to bf16 (`tasktune serve --decode-weights bf16`); the split-K Triton
kernels of benchmarks/nf4_triton.py (v2 by default, v1 with --v1), which read the 4-bit weight once; and the floor.

    python benchmarks/nf4_decode_bench.py                         # GPU: the table (about a minute)
    python benchmarks/nf4_decode_bench.py --m 32 --shapes dense   # a quick look

Times: CUDA events around a CUDA graph's replay of each call (host launch costs excluded, as in serving), L2 flushed
before it, median of --iters. "step" = 28 layers x the 4 linears. The floor is the packed weight plus its absmax codes
over the GPU's memory bandwidth (--bandwidth, TB/s; an H100 SXM's 3.35 by default; bf16 weights' floor is 3.8x
that). Error: max |y - ref| / max |ref| against x @ dequantize_4bit(W)^T in fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {"qkv": (4608, 4096), "dense": (4096, 4096), "h_to_4h": (27392, 4096), "4h_to_h": (4096, 13696)}
LAYERS = 28


def timed(call, iters: int, flush: torch.Tensor) -> float:
    """Replays of `call` captured in a CUDA graph (as the serving engine's decode steps run: no host launch cost)."""
    try:
        call()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
    except Exception as exc:  # a config over the GPU's shared memory, say
        print(f"  skipped: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
        return float("inf")
    samples = []
    for _ in range(iters):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def check_cpu() -> int:
    """Both kernels, interpreted, on shapes with ragged N, 1-17 rows, nested and plain absmax: within bf16 rounding
    of x @ dequantize_4bit(W)^T: the output is rounded to bf16 (2^-9 relative), its fp32 sum taken in another
    order; a wrong nibble, scale or row is off by far more."""
    import bitsandbytes.functional as F

    import nf4_triton as nd

    torch.manual_seed(0)
    worst = 0.0
    for n, k in ((96, 256), (200, 512)):
        for nested in (True, False):
            packed, state = F.quantize_4bit(torch.randn(n, k, dtype=torch.bfloat16) * 0.02, blocksize=64,
                                            compress_statistics=nested, quant_type="nf4", quant_storage=torch.uint8)
            weight, dense = nd.NF4Weight.of(packed, state), F.dequantize_4bit(packed, state).float()
            for m in (1, 5, 17):
                x = torch.randn(m, k, dtype=torch.bfloat16)
                ref = x.float() @ dense.t()
                for y in (nd.matmul(x, weight, (64, 128, 0, 4, 2)), nd.matmul(x, weight, (32, 256, 1, 4, 2)),
                          nd.matmul_v2(x, weight, (64, 4, 2)), nd.matmul_v2(x, weight, (128, 4, 2))):
                    assert y.shape == (m, n) and y.dtype == torch.bfloat16
                    worst = max(worst, ((y.float() - ref).abs() / ref.abs().clamp_min(1e-2)).max().item())
    print(f"check-cpu: worst relative error {worst:.1e}")
    if worst > 2 ** -7:
        print("check-cpu: FAILED (more than bf16 rounding)")
        return 1
    print("check-cpu: passed")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8, 16, 32, 64])
    parser.add_argument("--shapes", type=lambda s: s.split(","), default=list(SHAPES))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--v1", action="store_true", help="also time the first kernel's configs (slow to compile)")
    parser.add_argument("--bandwidth", type=float, default=3.35, help="TB/s, for the floor column")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--check-cpu", action="store_true",
                        help="no GPU: both kernels under TRITON_INTERPRET=1 on small shapes against bitsandbytes' "
                             "dequantisation (tests/benchmarks/test_nf4_decode_bench.py)")
    args = parser.parse_args()
    if args.check_cpu:
        raise SystemExit(check_cpu())

    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    import nf4_triton as nd

    torch.manual_seed(0)
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    rows, steps = [], {}
    kinds = ["bnb", "bf16", "v2"] + (["v1"] if args.v1 else [])
    print("| shape | M | " + " | ".join(f"{k} ms" for k in kinds) + " | v2 config | floor ms | v2 rel err |")
    print("|---|---|" + "---|" * len(kinds) + "---|---|---|")
    for name in args.shapes:
        n, k = SHAPES[name]
        packed, state = F.quantize_4bit(torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02, blocksize=64,
                                        compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8)
        weight = nd.NF4Weight.of(packed, state)
        dense16 = F.dequantize_4bit(packed, state).to(torch.bfloat16)
        dense = dense16.float()
        floor = (packed.numel() + state.absmax.numel()) / (args.bandwidth * 1e12) * 1e3
        for m in args.m:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            with torch.inference_mode():
                t = {"bnb": timed(lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state), args.iters, flush),
                     "bf16": timed(lambda: torch.nn.functional.linear(x, dense16), args.iters, flush)}
                v2 = {c: timed(lambda c=c: nd.matmul_v2(x, weight, c), args.iters, flush) for c in nd.CONFIGS_V2}
                best = min(v2, key=v2.get)
                t["v2"] = v2[best]
                if args.v1:
                    t["v1"] = min(timed(lambda c=c: nd.matmul(x, weight, c), args.iters, flush)
                                  for c in nd.CONFIGS if weight.fits(c[1]))
                ref = x.float() @ dense.t()
                err = ((nd.matmul_v2(x, weight, best).float() - ref).abs().max() / ref.abs().max()).item()
            rows.append(dict(shape=name, m=m, **{f"{k}_ms": v for k, v in t.items()}, v2_config=list(best),
                             floor_ms=floor, err=err, v2_all={str(c): v for c, v in v2.items()}))
            for key, value in (*t.items(), ("floor", floor)):
                steps[(m, key)] = steps.get((m, key), 0.0) + LAYERS * value
            print(f"| {name} {n}x{k} | {m} | " + " | ".join(f"{t[k]:.3f}" for k in kinds)
                  + f" | {best} | {floor:.3f} | {err:.1e} |", flush=True)
    print(f"\n| M | step ({LAYERS} layers x 4 linears): " + " | ".join(f"{k} ms" for k in kinds) + " | floor ms |")
    print("|---|" + "---|" * (len(kinds) + 1))
    for m in args.m:
        print(f"| {m} | " + " | ".join(f"{steps[(m, k)]:.2f}" for k in kinds) + f" | {steps[(m, 'floor')]:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
