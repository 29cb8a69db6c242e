"""benchmarks/nf4_bench.py on CPU: its pure-PyTorch NF4 dequant against bitsandbytes' (bit for bit), the step
totals and table, and (slow, needs triton) the fused Triton kernels under TRITON_INTERPRET=1 (--check-cpu) and compiled
for sm_90 (--check-compile)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "nf4_bench.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_nf4", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("shape", [(64, 256), (640, 128)])   # 640 x 128: > 256 blocks, a second absmax2 entry
def test_torch_dequant_matches_bitsandbytes_bit_for_bit(shape, double_quant):
    pytest.importorskip("bitsandbytes")
    nf4 = _module()
    torch.manual_seed(0)
    w = nf4.quantize((torch.randn(*shape) * 0.02).to(torch.bfloat16), double_quant=double_quant)
    assert w.nested is double_quant and (w.N, w.K) == shape and w.packed.numel() == shape[0] * shape[1] // 2
    ours = nf4.dequant_torch_w(w)
    assert ours.dtype == torch.bfloat16 and ours.shape == shape
    assert torch.equal(ours, nf4.bnb_dequant(w))
    # the pair table the Triton kernels gather from: byte b -> (code[b >> 4], code[b & 15])
    assert torch.equal(w.pairs[0x3A], torch.stack((w.nf4[3], w.nf4[10])))


def test_step_totals_sum_fwd_and_bwd_over_28_layers_and_table_marks_failures():
    nf4 = _module()
    rows = {s: {"bnb": {"fwd_ms": 0.5, "bwd_ms": 0.25, "fwd_err": 2e-3, "bwd_err": 3e-3},
                "triton": {"fwd_ms": 0.25, "bwd_ms": 0.25, "fwd_err": 2e-3, "bwd_err": 0.5},
                "bnb_cgemm": {"fwd_ms": 0.1, "fwd_err": 1e-3}} for s in nf4.SHAPES}
    totals = nf4.step_totals(rows, list(nf4.SHAPES))
    assert totals["bnb"] == pytest.approx(28 * 4 * 0.75)
    assert totals["triton"] == pytest.approx(28 * 4 * 0.5)
    assert totals["bnb_cgemm"] is None and totals["bf16"] is None
    results = {"device": "test", "torch": "t", "bitsandbytes": "b", "blocksize": 64, "double_quant": True,
               "iters": 3, "flush_l2": True, "layers": 28, "skipped": {"torchao": "missing"},
               "by_m": {"544": {"shapes": rows, "step_ms": totals}}}
    text = nf4.table(results)
    assert "| bnb matmul_4bit (today) |" in text and "84.00 | 1.00x" in text and "56.00 | 1.50x" in text
    assert "5.00e-01 FAIL" in text and "fwd 11.20" in text and "skipped torchao: missing" in text


def test_main_without_gpu_says_so():
    nf4 = _module()
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert nf4.main(["--m", "544"]) == 2


@pytest.mark.slow
def test_triton_kernels_interpreted_match_bitsandbytes():
    """--check-cpu: the fused kernels, interpreted, on small shapes: x = I gives W^T exactly, dy = I gives W."""
    pytest.importorskip("triton")
    pytest.importorskip("bitsandbytes")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check-cpu"], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check-cpu: passed" in proc.stdout


@pytest.mark.slow
def test_triton_kernels_compile_for_sm90_in_every_autotuned_config():
    """--check-compile: each config lowered to PTX and assembled by triton's ptxas for sm_90, no GPU needed."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check-compile"], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check-compile: passed" in proc.stdout and "| none |" not in proc.stdout
