"""NF4 dequantisation benchmark (issue 23): the frozen base's 4-bit linears, today's path against fused ones.

In a training step every frozen NF4 linear runs y = x W^T (forward) and dx = dy W (backward; no weight grad).
bitsandbytes' `matmul_4bit` dequantises the whole weight to bf16 (kDequantizeBlockwise) and calls a bf16 GEMM,
in both directions. This script times, per ChatGLM3-6B linear shape and M (rows = batch x tokens):

  bnb matmul_4bit        today's path: `bnb.matmul_4bit` (fwd) and its autograd backward (dx)
  bnb dequantize_4bit    the dequantisation half alone (`F.dequantize_4bit`, the same call in fwd and bwd)
  torch.compile dequant  a pure-PyTorch NF4 dequant (code-book gather x double-quantised absmax) under inductor
  compiled dequant + mm  that dequant, then the bf16 matmul
  triton fused           this file's Triton kernels: NF4 codes unpacked and scaled inside the GEMM's K loop,
                         reading bitsandbytes' packed weight and quant_state as they are (no re-quantisation)
  bnb cgemm_4bit (fwd)   bitsandbytes' own fused 4-bit GEMM (which its dispatch skips on sm90 for M > 64), forced;
                         forward only (it has no dy W form)
  torchao NF4Tensor      optional (skipped when torchao is missing): torchao's linear_nf4 under torch.compile, on a
                         weight torchao re-quantised itself (so its error is against its own dequant)
  bf16 matmul (floor)    the plain bf16 GEMM on the already-dequantised weight

Times are CUDA events around each call (L2 flushed before each, warm-up first), the median of --iters. Errors are
against bnb's dequantize_4bit weight with the product in fp32: max |out - ref| / max |ref| over the shapes
(bf16 output rounding alone gives ~2e-3; pass mark 1e-2). The step column is what one training step would spend
in these linears: 28 layers x the 4 linears x (fwd + bwd); full gradient checkpointing adds a second forward.

    python benchmarks/nf4_bench.py --out nf4.json                        # GPU: the table (about 2 minutes)
    python benchmarks/nf4_bench.py --m 544 --shapes qkv --iters 10       # a quick look
    TRITON_INTERPRET=1 python benchmarks/nf4_bench.py --check-cpu        # CPU: the Triton kernels (interpreted),
                                                                         # the dequant, against bitsandbytes' CPU one
    python benchmarks/nf4_bench.py --check-compile                       # CPU: every config compiled for sm_90

Quantisation as tuning/model/load.py does it: nf4, double quant (compress_statistics), blocksize 64, uint8 storage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

# (out_features N, in_features K) of ChatGLM3-6B's four linears per layer
SHAPES = {
    "qkv": (4608, 4096),        # query_key_value: 32 query heads + 2 x 2 kv heads of 128
    "dense": (4096, 4096),      # attention output
    "h_to_4h": (27392, 4096),   # SwiGLU's two halves, 2 x 13696
    "4h_to_h": (4096, 13696),
}
LAYERS = 28
BLOCKSIZE = 64
TOLERANCE = 1e-2  # max |out - ref| / max |ref|


# ------------------------------------------------------------------------------------------ the weight

class NF4Weight:
    """A bitsandbytes 4-bit weight as its raw parts: packed codes (element 2i in byte i's high nibble, 2i+1 in the
    low one, row-major over the [N, K] weight), per-64 block absmax (uint8 codes of bnb's dynamic map x a float
    absmax per 256 blocks + offset when nested, else float32), the NF4 code book."""

    def __init__(self, packed: torch.Tensor, quant_state):
        qs = quant_state
        self.quant_state = qs
        self.packed_param = packed                      # as bnb keeps it: [(N*K)/2, 1] uint8
        self.packed = packed.reshape(-1)
        self.N, self.K = (int(v) for v in qs.shape)
        self.blocksize = int(qs.blocksize)
        self.nf4 = qs.code.float().contiguous()
        byte = torch.arange(256, device=packed.device)
        self.pairs = torch.stack((self.nf4[byte >> 4], self.nf4[byte & 15]), dim=1).contiguous()  # [256, 2]
        self.nested = bool(qs.nested)
        if self.nested:
            if qs.state2.blocksize != 256:
                raise ValueError("nested absmax with state2.blocksize != 256 is not supported")
            self.absmax = qs.absmax.contiguous()                      # uint8 codes
            self.code2 = qs.state2.code.float().contiguous()
            self.absmax2 = qs.state2.absmax.float().contiguous()
            self.offset = torch.as_tensor(qs.offset, dtype=torch.float32, device=packed.device).reshape(1)
        else:
            self.absmax = qs.absmax.float().contiguous()
            self.code2 = self.absmax2 = self.absmax                   # unused
            self.offset = torch.zeros(1, dtype=torch.float32, device=packed.device)
        if self.K % self.blocksize:
            raise ValueError(f"in_features {self.K} is not a multiple of the blocksize {self.blocksize}")
        if self.N * self.K >= 2 ** 31:
            raise ValueError("the kernels index with int32: N * K must be < 2**31")


def quantize(weight: torch.Tensor, *, double_quant: bool = True, blocksize: int = BLOCKSIZE) -> NF4Weight:
    """Quantise a [N, K] weight as the project's BitsAndBytesConfig does (nf4, bf16 compute, uint8 storage)."""
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(weight, blocksize=blocksize, compress_statistics=double_quant,
                                    quant_type="nf4", quant_storage=torch.uint8)
    return NF4Weight(packed, state)


def bnb_dequant(w: NF4Weight) -> torch.Tensor:
    import bitsandbytes.functional as F

    return F.dequantize_4bit(w.packed_param, w.quant_state).to(torch.bfloat16)


def dequant_torch(packed, absmax, code2, absmax2, offset, nf4, N: int, K: int, blocksize: int = BLOCKSIZE,
                  nested: bool = True, dtype=torch.bfloat16):
    """Pure-PyTorch NF4 dequant (what torch.compile fuses into one kernel): code-book gather, then the per-block
    scale (itself a code-book gather x a per-256-block absmax + offset when double-quantised), in fp32, cast last."""
    codes = torch.stack((packed >> 4, packed & 15), dim=-1).reshape(-1).long()
    values = nf4[codes].reshape(-1, blocksize)
    if nested:
        blocks = torch.arange(absmax.numel(), device=absmax.device) // 256
        scale = code2[absmax.long()] * absmax2[blocks] + offset
    else:
        scale = absmax
    return (values * scale[:, None]).to(dtype).reshape(N, K)


def dequant_torch_w(w: NF4Weight, fn=dequant_torch):
    return fn(w.packed, w.absmax, w.code2, w.absmax2, w.offset, w.nf4, w.N, w.K, w.blocksize, w.nested)


# ------------------------------------------------------------------------------------------ Triton kernels

_KERNELS_DEFINED = False
# Two workarounds for TRITON_INTERPRET=1 (CPU), constexpr INTERP in the kernels, off on GPUs: triton 3.9's
# interpreter's tl.dot on bf16 operands multiplies their raw bit patterns, so there the (bf16-exact) operands are
# upcast to fp32 before the dot (the same products); and its fp32 -> bf16 cast truncates where a GPU's cvt.rn
# rounds to nearest even (as torch and bitsandbytes do), so there the rounding is done by hand (_bf16).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _define_kernels():
    """Define the @triton.jit kernels as module globals (triton resolves the names a kernel uses, the helper
    tile and `tl`, through the module's globals, so they cannot live in a closure)."""
    global triton, tl, _bf16, _dot_operand, _store_tile, _nf4_tile, nf4_forward_kernel, nf4_backward_kernel, _KERNELS_DEFINED
    if _KERNELS_DEFINED:
        return
    import triton
    import triton.language as tl

    @triton.jit
    def _bf16(v, INTERP: tl.constexpr):
        """fp32 -> bf16, round to nearest even (finite values)."""
        if INTERP:
            bits = v.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            v = bits.to(tl.float32, bitcast=True)
        return v.to(tl.bfloat16)

    @triton.jit
    def _dot_operand(v, INTERP: tl.constexpr):
        """A tile as tl.dot takes it: under the interpreter, whose dot multiplies bf16 bit patterns, exact fp32."""
        if INTERP:
            v = v.to(tl.float32)
        return v

    @triton.jit
    def _store_tile(out_ptr, acc, offs_m, offs_c, stride_m, col_mask, M, W_LEFT: tl.constexpr, INTERP: tl.constexpr):
        """Store an output tile of rows offs_m and columns offs_c (acc holds it transposed, [cols, rows], when the
        weight was the dot's left operand), rounded to bf16; rows past M and columns outside col_mask are masked."""
        if W_LEFT:
            ptrs = out_ptr + offs_m[None, :] * stride_m + offs_c[:, None]
            tl.store(ptrs, _bf16(acc, INTERP), mask=(offs_m[None, :] < M) & col_mask[:, None])
        else:
            ptrs = out_ptr + offs_m[:, None] * stride_m + offs_c[None, :]
            tl.store(ptrs, _bf16(acc, INTERP), mask=(offs_m[:, None] < M) & col_mask[None, :])

    @triton.jit
    def _nf4_tile(packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset, nf4_ptr, pairs_ptr, rows, k0, K,
                  BR: tl.constexpr, BK: tl.constexpr, BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr,
                  LUT: tl.constexpr, INTERP: tl.constexpr):
        """W[rows, k0:k0+BK] as bf16 ([BR, BK]): one byte per element pair, scaled per 64-block, fp32 then cast
        (bnb's rounding). `rows` are in-range row indices; K % BK == 0 and BK % BLOCKSIZE == 0.
        LUT 0: two 4-byte gathers per byte from the 16-entry code book (tl.load), and an interleave;
        LUT 1: one 8-byte gather per byte from a 256 x 2 table holding both nibbles' values (tl.load: triton's
        pipeliner then stages the gathered values through shared memory, cp.async, as it does every dot feeder);
        LUT 2: the same gather as inline PTX (ld.global.nc.v2.f32), which the pipeliner leaves alone: the 2 KiB
        table stays in L1 and the values go straight to registers. The interpreter runs LUT 2 as LUT 1."""
        HALF: tl.constexpr = BK // 2
        NS: tl.constexpr = BK // BLOCKSIZE
        byte = tl.load(packed_ptr + rows[:, None] * (K // 2) + (k0 // 2 + tl.arange(0, HALF))[None, :])
        block = rows[:, None] * (K // BLOCKSIZE) + (k0 // BLOCKSIZE + tl.arange(0, NS))[None, :]   # [BR, NS]
        if NESTED:
            q = tl.load(absmax_ptr + block).to(tl.int32)
            scale = tl.load(code2_ptr + q) * tl.load(absmax2_ptr + block // 256) + offset
        else:
            scale = tl.load(absmax_ptr + block)
        if LUT == 2 and not INTERP:
            hi, lo = tl.inline_asm_elementwise("ld.global.nc.v2.f32 {$0, $1}, [$2];", "=r,=r,l",
                                               [pairs_ptr + byte.to(tl.int32) * 2],
                                               dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
            v = tl.reshape(tl.join(hi, lo), (BR, NS, BLOCKSIZE)) * scale[:, :, None]   # [BR, HALF, 2] in order
            return _bf16(tl.reshape(v, (BR, BK)), INTERP)
        elif LUT >= 1:
            pair = tl.load(pairs_ptr + byte.to(tl.int32)[:, :, None] * 2 + tl.arange(0, 2)[None, None, :])
            v = tl.reshape(pair, (BR, NS, BLOCKSIZE)) * scale[:, :, None]           # [BR, HALF, 2] in order
            return _bf16(tl.reshape(v, (BR, BK)), INTERP)
        else:
            hi = tl.load(nf4_ptr + (byte >> 4).to(tl.int32))          # element k0 + 2j   [BR, HALF], fp32
            lo = tl.load(nf4_ptr + (byte & 15).to(tl.int32))          # element k0 + 2j + 1
            PER: tl.constexpr = BLOCKSIZE // 2                          # bytes per block
            hi = tl.reshape(tl.reshape(hi, (BR, NS, PER)) * scale[:, :, None], (BR, HALF))
            lo = tl.reshape(tl.reshape(lo, (BR, NS, PER)) * scale[:, :, None], (BR, HALF))
            return _bf16(tl.interleave(hi, lo), INTERP)                # [BR, BK]: hi0 lo0 hi1 lo1 ...

    @triton.jit
    def nf4_forward_kernel(x_ptr, packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset_ptr, nf4_ptr, pairs_ptr, y_ptr,
                           M, N, K, stride_xm, stride_ym,
                           BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                           BK: tl.constexpr, W_LEFT: tl.constexpr, LUT: tl.constexpr,
                           INTERP: tl.constexpr):
        """y[M, N] = x[M, K] @ W[N, K]^T. Programs walk M fastest so the tiles sharing a W slice run together."""
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BM)
        pid_m = pid % num_m
        pid_n = pid // num_m
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        rows_m = offs_m % M          # wrapped (in-range) indices for the loads; the store masks
        rows_n = offs_n % N
        offset = tl.load(offset_ptr)
        offs_k = tl.arange(0, BK)
        if W_LEFT:   # acc = y^T tile: the dequantised W is the dot's register operand
            acc = tl.zeros((BN, BM), dtype=tl.float32)
        else:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            w = _dot_operand(_nf4_tile(packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset, nf4_ptr, pairs_ptr,
                                       rows_n, k0, K, BN, BK, BLOCKSIZE, NESTED, LUT, INTERP), INTERP)  # [BN, BK]
            if W_LEFT:
                xt = tl.load(x_ptr + rows_m[None, :] * stride_xm + (k0 + offs_k)[:, None])   # [BK, BM]
                acc = tl.dot(w, _dot_operand(xt, INTERP), acc)
            else:
                x = tl.load(x_ptr + rows_m[:, None] * stride_xm + (k0 + offs_k)[None, :])    # [BM, BK]
                acc = tl.dot(_dot_operand(x, INTERP), tl.trans(w), acc)
        _store_tile(y_ptr, acc, offs_m, offs_n, stride_ym, offs_n < N, M, W_LEFT, INTERP)

    @triton.jit
    def nf4_backward_kernel(dy_ptr, packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset_ptr, nf4_ptr, pairs_ptr,
                            dx_ptr,
                            M, N, K, stride_dym, stride_dxm,
                            BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                            BK: tl.constexpr, W_LEFT: tl.constexpr, LUT: tl.constexpr,
                           INTERP: tl.constexpr):
        """dx[M, K] = dy[M, N] @ W[N, K]: output tiles [BM, BK] over (M, K), the loop over N in steps of BN."""
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BM)
        pid_m = pid % num_m
        pid_k = pid // num_m
        offs_m = pid_m * BM + tl.arange(0, BM)
        rows_m = offs_m % M
        k0 = pid_k * BK
        offs_k = k0 + tl.arange(0, BK)
        offset = tl.load(offset_ptr)
        offs_bn = tl.arange(0, BN)
        if W_LEFT:   # acc = dx^T tile, W^T the register operand
            acc = tl.zeros((BK, BM), dtype=tl.float32)
        else:
            acc = tl.zeros((BM, BK), dtype=tl.float32)
        for n0 in range(0, N, BN):
            rows_n = (n0 + offs_bn) % N
            inside = (n0 + offs_bn) < N
            w = _dot_operand(_nf4_tile(packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset, nf4_ptr, pairs_ptr,
                                       rows_n, k0, K, BN, BK, BLOCKSIZE, NESTED, LUT, INTERP), INTERP)  # [BN, BK]
            if W_LEFT:
                dyt = tl.load(dy_ptr + rows_m[None, :] * stride_dym + rows_n[:, None],
                              mask=inside[:, None], other=0.0)                         # [BN, BM]
                acc = tl.dot(tl.trans(w), _dot_operand(dyt, INTERP), acc)
            else:
                dy = tl.load(dy_ptr + rows_m[:, None] * stride_dym + rows_n[None, :],
                             mask=inside[None, :], other=0.0)                          # [BM, BN]
                acc = tl.dot(_dot_operand(dy, INTERP), w, acc)
        _store_tile(dx_ptr, acc, offs_m, offs_k, stride_dxm, offs_k < K, M, W_LEFT, INTERP)  # BK divides K

    _KERNELS_DEFINED = True


# The autotuned space: (BM, BN, BK, W_LEFT, LUT, warps, stages). BK: a multiple of 64 dividing K (13696 = 107 x 128:
# no 256 there; configs that don't divide K are pruned per call). fwd: BN tiles N, BK the reduction; bwd: BN is the
# reduction step over N and BK tiles the output's K. All compile for sm90 (wgmma) with triton 3.9, <= 210 KiB of
# shared memory (checked ahead of time on CPU: triton.compile(..., target=GPUTarget("cuda", 90, 128))).
CONFIGS = {
    "fwd": [(128, 128, 64, True, 2, 8, 3), (128, 128, 128, True, 2, 8, 3), (128, 256, 64, True, 2, 8, 3),
            (64, 256, 64, True, 2, 8, 3), (128, 128, 64, False, 2, 8, 3), (128, 256, 64, False, 2, 8, 3),
            (128, 128, 64, True, 1, 8, 3), (128, 128, 64, False, 1, 8, 3), (128, 128, 64, True, 0, 8, 3),
            (128, 128, 64, False, 2, 8, 2)],
    "bwd": [(128, 64, 128, True, 2, 8, 3), (128, 128, 128, True, 2, 8, 3), (64, 64, 128, True, 2, 4, 3),
            (128, 64, 128, False, 2, 8, 3), (128, 128, 128, False, 2, 8, 3), (128, 64, 256, False, 2, 8, 3),
            (128, 128, 64, False, 2, 8, 3), (128, 64, 128, False, 1, 8, 3), (128, 64, 128, True, 1, 8, 3),
            (128, 64, 128, False, 0, 8, 3)],
}


def build_triton(autotune: bool = True):
    """The fused kernels, built on first use (importing triton here lets --check-cpu set TRITON_INTERPRET first).
    Returns an object with .forward(x, w) -> x W^T and .backward(dy, w) -> dy W, both bf16 in and out."""
    _define_kernels()

    def _configs(kind):
        return [triton.Config(dict(BM=bm, BN=bn, BK=bk, W_LEFT=left, LUT=lut), num_warps=wp, num_stages=st)
                for bm, bn, bk, left, lut, wp, st in CONFIGS[kind]]

    def _bench(fn, quantiles):   # shorter than triton's default (25 ms warm-up, 100 ms): ~20 configs x 16 keys
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=40, quantiles=quantiles)

    def _prune(configs, named_args, **kwargs):
        K = named_args["K"]
        return [c for c in configs if K % c.kwargs["BK"] == 0] or configs[:1]

    def _autotune(configs):
        kwargs = dict(key=["M", "N", "K"], prune_configs_by={"early_config_prune": _prune})
        try:
            return triton.autotune(configs, do_bench=_bench, **kwargs)
        except TypeError:   # a triton without autotune(do_bench=): its default timing
            return triton.autotune(configs, **kwargs)

    class Kernels:
        fwd_raw = nf4_forward_kernel
        bwd_raw = nf4_backward_kernel
        fwd_tuned = _autotune(_configs("fwd"))(nf4_forward_kernel)
        bwd_tuned = _autotune(_configs("bwd"))(nf4_backward_kernel)

        def __init__(self, tuned: bool):
            self.tuned = tuned

        @staticmethod
        def _args(w):
            return (w.packed, w.absmax, w.code2, w.absmax2, w.offset, w.nf4, w.pairs)

        def forward(self, x, w, config: dict | None = None):
            x2 = x.reshape(-1, w.K)
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            M = x2.shape[0]
            y = torch.empty((M, w.N), dtype=torch.bfloat16, device=x.device)
            common = dict(BLOCKSIZE=w.blocksize, NESTED=w.nested, INTERP=INTERPRET)
            if self.tuned and config is None:
                grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(w.N, meta["BN"]),)  # noqa: E731
                self.fwd_tuned[grid](x2, *self._args(w), y, M, w.N, w.K, x2.stride(0), y.stride(0), **common)
            else:
                cfg = {**dict(BM=32, BN=32, BK=64, W_LEFT=True, LUT=2), **(config or {})}
                grid = (triton.cdiv(M, cfg["BM"]) * triton.cdiv(w.N, cfg["BN"]),)
                self.fwd_raw[grid](x2, *self._args(w), y, M, w.N, w.K, x2.stride(0), y.stride(0), **common, **cfg)
            return y.reshape(*x.shape[:-1], w.N)

        def backward(self, dy, w, config: dict | None = None):
            dy2 = dy.reshape(-1, w.N)
            if dy2.stride(-1) != 1:
                dy2 = dy2.contiguous()
            M = dy2.shape[0]
            dx = torch.empty((M, w.K), dtype=torch.bfloat16, device=dy.device)
            common = dict(BLOCKSIZE=w.blocksize, NESTED=w.nested, INTERP=INTERPRET)
            if self.tuned and config is None:
                grid = lambda meta: (triton.cdiv(M, meta["BM"]) * (w.K // meta["BK"]),)  # noqa: E731
                self.bwd_tuned[grid](dy2, *self._args(w), dx, M, w.N, w.K, dy2.stride(0), dx.stride(0), **common)
            else:
                cfg = {**dict(BM=32, BN=32, BK=64, W_LEFT=False, LUT=2), **(config or {})}
                if w.K % cfg["BK"]:
                    raise ValueError(f"K={w.K} is not a multiple of BK={cfg['BK']}")
                grid = (triton.cdiv(M, cfg["BM"]) * (w.K // cfg["BK"]),)
                self.bwd_raw[grid](dy2, *self._args(w), dx, M, w.N, w.K, dy2.stride(0), dx.stride(0), **common,
                                   **cfg)
            return dx.reshape(*dy.shape[:-1], w.K)

        def best(self):
            out = {}
            for name, tuner in (("fwd", self.fwd_tuned), ("bwd", self.bwd_tuned)):
                out[name] = {str(k): str(v) for k, v in getattr(tuner, "cache", {}).items()}
            return out

    return Kernels(autotune)


# ------------------------------------------------------------------------------------------ errors

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------ CPU check

def check_cpu(seed: int = 0) -> int:
    """The Triton kernels under TRITON_INTERPRET=1 on CPU tensors, and the pure-PyTorch dequant, against
    bitsandbytes' CPU quantize/dequantize. Exactness: x = I gives y = W^T and dy = I gives dx = W, which must equal
    bnb's dequantised weight bit for bit (a single non-zero product per output: no accumulation error)."""
    global INTERPRET
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is imported (build_triton imports it)
    if os.environ["TRITON_INTERPRET"] != "1":
        print("--check-cpu needs TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    INTERPRET = True
    kernels = build_triton(autotune=False)
    torch.manual_seed(seed)
    failures = []
    # (N, K, M, nested, configs): odd M and N not a multiple of the tile exercise the wrapped loads and masks
    cases = [
        (96, 256, 40, True, [dict(BM=32, BN=32, BK=64, W_LEFT=True, LUT=2),
                             dict(BM=16, BN=64, BK=128, W_LEFT=False, LUT=0)]),
        (80, 384, 17, True, [dict(BM=32, BN=32, BK=128, W_LEFT=True, LUT=0),
                             dict(BM=16, BN=32, BK=64, W_LEFT=False, LUT=1)]),
        (64, 192, 33, False, [dict(BM=32, BN=64, BK=64, W_LEFT=True, LUT=2),
                              dict(BM=32, BN=16, BK=64, W_LEFT=False, LUT=0)]),
        (640, 128, 24, True, [dict(BM=16, BN=64, BK=64, W_LEFT=False, LUT=1)]),   # > 256 blocks: absmax2 > 0
        # K = 5 x 128: an odd number of 128-tiles, as 13696 = 107 x 128
        (48, 640, 9, True, [dict(BM=16, BN=32, BK=128, W_LEFT=True, LUT=2),
                             dict(BM=16, BN=16, BK=128, W_LEFT=False, LUT=2)]),
    ]
    print("| N | K | M | nested | config | dequant vs bnb | fwd y=W^T (x=I) | bwd dx=W (dy=I) "
          "| fwd rel err | bwd rel err | bf16 mm fwd / bwd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for N, K, M, nested, configs in cases:
        weight = (torch.randn(N, K) * 0.02).to(torch.bfloat16)
        w = quantize(weight, double_quant=nested)
        ref_w = bnb_dequant(w)
        deq = dequant_torch_w(w)
        deq_diff = (deq.float() - ref_w.float()).abs().max().item()
        if deq_diff != 0:
            failures.append(f"torch dequant differs from bnb by {deq_diff} at {N}x{K}")
        x = torch.randn(M, K).to(torch.bfloat16)
        dy = torch.randn(M, N).to(torch.bfloat16)
        y_ref = x.float() @ ref_w.float().t()
        dx_ref = dy.float() @ ref_w.float()
        # what the bf16 product of bnb's weight scores (torch's CPU matmul), for scale
        base = f"{rel_err(x @ ref_w.t(), y_ref):.2e} / {rel_err(dy @ ref_w, dx_ref):.2e}"
        for cfg in configs:
            eye_k = torch.eye(K, dtype=torch.bfloat16)
            eye_n = torch.eye(N, dtype=torch.bfloat16)
            wt = kernels.forward(eye_k, w, config=cfg)                  # [K, N] = W^T
            wb = kernels.backward(eye_n, w, config=cfg)                 # [N, K] = W
            d_f = (wt.float() - ref_w.float().t()).abs().max().item()
            d_b = (wb.float() - ref_w.float()).abs().max().item()
            e_f = rel_err(kernels.forward(x, w, config=cfg), y_ref)
            e_b = rel_err(kernels.backward(dy, w, config=cfg), dx_ref)
            cfg_s = " ".join(f"{k}={v}" for k, v in cfg.items())
            print(f"| {N} | {K} | {M} | {nested} | {cfg_s} | {deq_diff:.1e} | {d_f:.1e} | {d_b:.1e} | {e_f:.2e} "
                  f"| {e_b:.2e} | {base} |")
            if d_f != 0 or d_b != 0:
                failures.append(f"{N}x{K} {cfg_s}: in-kernel dequant not exact (fwd {d_f}, bwd {d_b})")
            if not (e_f <= TOLERANCE and e_b <= TOLERANCE):
                failures.append(f"{N}x{K} M={M} {cfg_s}: rel err fwd {e_f:.2e} bwd {e_b:.2e} > {TOLERANCE}")
    for failure in failures:
        print("FAIL:", failure)
    print("check-cpu:", "FAILED" if failures else "passed", f"({len(cases)} shapes)")
    return 1 if failures else 0


def check_compile(arch: int = 90) -> int:
    """Compile every autotuned config of both kernels ahead of time for sm_`arch` (no GPU needed: triton's own
    ptxas) with the divisibility-by-16 specialisation the real shapes get; print shared memory, whether the dot
    became wgmma, how many cp.async copies the pipeliner staged. Exit 1 if any config fails to compile."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("--check-compile needs TRITON_INTERPRET unset", file=sys.stderr)
        return 2
    _define_kernels()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 128 if arch >= 90 else 32)
    weight_args = {"packed_ptr": "*u8", "absmax_ptr": "*u8", "code2_ptr": "*fp32", "absmax2_ptr": "*fp32",
                   "offset_ptr": "*fp32", "nf4_ptr": "*fp32", "pairs_ptr": "*fp32"}
    kernels = {"fwd": (nf4_forward_kernel, "x_ptr", "y_ptr", "stride_xm", "stride_ym"),
               "bwd": (nf4_backward_kernel, "dy_ptr", "dx_ptr", "stride_dym", "stride_dxm")}
    failures = 0
    print("| kernel | BM BN BK W_LEFT LUT warps stages | shared KiB | mma | cp.async | compile s |")
    print("|---|---|---|---|---|---|")
    for kind, (fn, first, out, s_in, s_out) in kernels.items():
        signature = {first: "*bf16", **weight_args, out: "*bf16", "M": "i32", "N": "i32", "K": "i32",
                     s_in: "i32", s_out: "i32"}
        names = list(signature) + ["BLOCKSIZE", "NESTED", "BM", "BN", "BK", "W_LEFT", "LUT", "INTERP"]
        signature.update({name: "constexpr" for name in names[len(signature):]})
        attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t != "constexpr"}
        for bm, bn, bk, left, lut, warps, stages in CONFIGS[kind]:
            const = dict(BLOCKSIZE=BLOCKSIZE, NESTED=True, BM=bm, BN=bn, BK=bk, W_LEFT=left, LUT=lut, INTERP=False)
            row = f"| {kind} | {bm} {bn} {bk} {left} {lut} {warps} {stages} |"
            t = time.time()
            try:
                src = ASTSource(fn=fn, signature=signature, attrs=attrs,
                                constexprs={(names.index(k),): v for k, v in const.items()})
                compiled = triton.compile(src, target=target, options=dict(num_warps=warps, num_stages=stages))
            except Exception as exc:  # noqa: BLE001
                failures += 1
                print(f"{row} FAILED: {type(exc).__name__}: {str(exc)[:300]} |")
                continue
            ptx = compiled.asm["ptx"]
            mma = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
            print(f"{row} {compiled.metadata.shared / 1024:.0f} | {mma} | {ptx.count('cp.async.c')} "
                  f"| {time.time() - t:.1f} |", flush=True)
    print("check-compile:", "FAILED" if failures else "passed", f"(sm_{arch})")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------ GPU timing

class Timer:
    def __init__(self, iters: int, warmup: int, flush: bool):
        self.iters, self.warmup = iters, warmup
        # > L2 (50 MB on H100, 60 on H200): each timed call starts with the weight out of L2, as in a real step
        self.flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda") if flush else None

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(self.iters)]
        # Park the GPU for ~30 ms so that Python queues every call ahead of it: the events then time the
        # kernels back to back, not the launch overhead (a training step replays CUDA graphs, no launches)
        torch.cuda.synchronize()
        torch.cuda._sleep(60_000_000)
        for start, end in events:
            if self.flush is not None:
                self.flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)


def _torchao():
    """(to_nf4, linear_nf4) from torchao, or a reason string."""
    try:
        try:
            from torchao.dtypes.nf4tensor import linear_nf4, to_nf4
        except ImportError:
            from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4, to_nf4
        return to_nf4, linear_nf4
    except Exception as exc:  # noqa: BLE001 (missing, or built for another torch)
        return f"torchao unavailable: {type(exc).__name__}: {exc}"[:200]


def _bnb_cgemm():
    try:
        from bitsandbytes.backends.cuda.ops import _gemm_4bit_kernel_impl
        return _gemm_4bit_kernel_impl
    except Exception as exc:  # noqa: BLE001
        return f"bitsandbytes has no fused gemm_4bit: {exc}"[:200]


PATHS = [
    ("bnb", "bnb matmul_4bit (today)"),
    ("bnb_dequant", "bnb dequantize_4bit alone"),
    ("compiled_dequant", "torch.compile dequant alone"),
    ("compiled", "torch.compile dequant + mm"),
    ("triton", "triton fused dequant-GEMM"),
    ("bnb_cgemm", "bnb cgemm_4bit forced (fwd only)"),
    ("torchao", "torchao NF4Tensor (compiled)"),
    ("bf16", "bf16 matmul (floor)"),
]


def run_gpu(args, on_block=None) -> dict:
    """Time every path; `on_block(results, M)` runs as each M's block completes (partial output under a timeout)."""
    import bitsandbytes as bnb

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    timer = Timer(args.iters, args.warmup, not args.no_flush)
    kernels, skipped = None, {}
    if "triton" in args.paths:
        try:
            kernels = build_triton(autotune=True)
        except Exception as exc:  # noqa: BLE001 (no triton, or one it can't build with: the other rows go on)
            skipped["triton"] = f"{type(exc).__name__}: {exc}"[:200]
    # dynamic: one compile serves the four shapes (a pointwise kernel; its speed does not hang on static sizes)
    deq_compiled = torch.compile(dequant_torch, dynamic=True, fullgraph=True)
    ao = _torchao() if "torchao" in args.paths else "not asked for"
    ao_linear = None if isinstance(ao, str) else torch.compile(ao[1])
    cgemm = _bnb_cgemm() if "bnb_cgemm" in args.paths else "not asked for"
    if isinstance(ao, str):
        skipped["torchao"] = ao
    if isinstance(cgemm, str):
        skipped["bnb_cgemm"] = cgemm
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "bitsandbytes": bnb.__version__,
               "blocksize": BLOCKSIZE, "double_quant": not args.no_double_quant, "iters": args.iters,
               "flush_l2": not args.no_flush, "layers": LAYERS, "by_m": {}, "skipped": skipped}
    try:
        import triton
        results["triton"] = triton.__version__
    except ImportError:
        pass
    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    weights = {}
    for shape in args.shapes:
        N, K = SHAPES[shape]
        weight = torch.randn(N, K, device="cuda", generator=gen, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
        w = quantize(weight, double_quant=not args.no_double_quant)
        entry = {"w": w, "deq": bnb_dequant(w)}
        if "torchao" in args.paths and not isinstance(ao, str):
            try:
                entry["ao"] = ao[0](weight, block_size=BLOCKSIZE, scaler_block_size=256)
            except Exception as exc:  # noqa: BLE001
                skipped["torchao"] = f"to_nf4 failed: {exc}"[:200]
        del weight
        weights[shape] = entry
        t = time.time()
        d = dequant_torch_w(w, deq_compiled)   # compile outside the timings
        entry["compile_s"] = round(time.time() - t, 1)
        entry["deq_compiled_diff"] = (d.float() - entry["deq"].float()).abs().max().item()
        del d

    for M in args.m:
        rows = {}
        for shape in args.shapes:
            N, K = SHAPES[shape]
            entry = weights[shape]
            w, wdq = entry["w"], entry["deq"]
            x = torch.randn(M, K, device="cuda", generator=gen).to(torch.bfloat16).requires_grad_(True)
            dy = torch.randn(M, N, device="cuda", generator=gen).to(torch.bfloat16)
            y_ref = x.detach().float() @ wdq.float().t()
            dx_ref = dy.float() @ wdq.float()
            xd = x.detach()
            cell = {}

            def record(key, fwd, bwd, check=True, ref=(y_ref, dx_ref)):
                out = {}
                try:
                    if fwd is not None:
                        if check:
                            out["fwd_err"] = rel_err(fwd(), ref[0])
                        out["fwd_ms"] = timer(fwd)
                    if bwd is not None:
                        if check:
                            out["bwd_err"] = rel_err(bwd(), ref[1])
                        out["bwd_ms"] = timer(bwd)
                except Exception as exc:  # noqa: BLE001 (one path failing must not lose the table)
                    out["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    print(f"  {key} {shape} M={M}: {out['error']}", file=sys.stderr)
                cell[key] = out

            if "bnb" in args.paths:
                qw, qs = w.packed_param, w.quant_state
                y_b = bnb.matmul_4bit(x, qw.t(), quant_state=qs)
                record("bnb", lambda: bnb.matmul_4bit(x, qw.t(), quant_state=qs),
                       lambda: torch.autograd.grad(y_b, x, dy, retain_graph=True)[0])
            if "bnb_dequant" in args.paths:
                t_deq = timer(lambda: bnb_dequant(w))
                cell["bnb_dequant"] = {"fwd_ms": t_deq, "bwd_ms": t_deq, "fwd_err": 0.0, "bwd_err": 0.0}
            if "compiled_dequant" in args.paths:
                t_deq = timer(lambda: dequant_torch_w(w, deq_compiled))
                diff = entry["deq_compiled_diff"]
                cell["compiled_dequant"] = {"fwd_ms": t_deq, "bwd_ms": t_deq, "weight_max_abs_diff": diff,
                                            "fwd_err": diff, "bwd_err": diff}
            if "compiled" in args.paths:
                record("compiled", lambda: xd @ dequant_torch_w(w, deq_compiled).t(),
                       lambda: dy @ dequant_torch_w(w, deq_compiled))
            if kernels is not None:
                record("triton", lambda: kernels.forward(xd, w), lambda: kernels.backward(dy, w))
            if "bnb_cgemm" in args.paths and not isinstance(cgemm, str):
                qs = w.quant_state
                if M > 1536:   # bnb's own dispatch never calls it past M = 1536 (_gemm_4bit_custom_max_m)
                    cell["bnb_cgemm"] = {"skipped": "M > 1536, bnb's cap for its kernel"}
                elif w.nested:
                    record("bnb_cgemm", lambda: cgemm(xd, w.packed_param, (N, K), qs.state2.absmax, w.blocksize,
                                                      "nf4", None, qs.absmax, qs.state2.code, w.offset), None)
                else:
                    record("bnb_cgemm", lambda: cgemm(xd, w.packed_param, (N, K), qs.absmax, w.blocksize, "nf4"),
                           None)
            if ao_linear is not None and "ao" in entry:
                ao_w = entry["ao"]
                ao_ref_w = ao_w.get_original_weight().to(torch.bfloat16).float()
                ref = (xd.float() @ ao_ref_w.t(), dy.float() @ ao_ref_w)
                try:
                    y_ao = ao_linear(x, ao_w)   # x requires grad, as in training (one graph for fwd and bwd)
                    record("torchao", lambda: ao_linear(x, ao_w),
                           lambda: torch.autograd.grad(y_ao, x, dy, retain_graph=True)[0], ref=ref)
                    cell["torchao"]["vs"] = "own dequant"
                except Exception as exc:  # noqa: BLE001
                    cell["torchao"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                del ref, ao_ref_w
            if "bf16" in args.paths:
                record("bf16", lambda: xd @ wdq.t(), lambda: dy @ wdq)
            rows[shape] = cell
            torch.cuda.empty_cache()
            print(f"  M={M} {shape}: " + ", ".join(
                f"{k} {v.get('fwd_ms', float('nan')):.3f}/{v.get('bwd_ms', float('nan')):.3f}"
                for k, v in cell.items()), file=sys.stderr, flush=True)
        results["by_m"][str(M)] = {"shapes": rows, "step_ms": step_totals(rows, args.shapes)}
        if on_block is not None:
            on_block(results, str(M))
    if kernels is not None:
        results["triton_best"] = kernels.best()
    results["compile_s"] = {s: weights[s]["compile_s"] for s in args.shapes}
    return results


def step_totals(rows: dict, shapes) -> dict:
    """ms per training step: LAYERS x sum over the shapes of (fwd + bwd); None where a direction is missing."""
    totals = {}
    for key, _ in PATHS:
        total = 0.0
        for shape in shapes:
            cell = rows[shape].get(key, {})
            if "fwd_ms" not in cell or "bwd_ms" not in cell:
                total = None
                break
            total += cell["fwd_ms"] + cell["bwd_ms"]
        totals[key] = None if total is None else total * LAYERS
    return totals


def table(results: dict, only: str | None = None, header: bool = True) -> str:
    """Markdown: a header line, then one table per M (`only`: that M's alone)."""
    lines = []
    shapes = list(next(iter(results["by_m"].values()))["shapes"])
    if header:
        lines.append(f"{results['device']}; torch {results['torch']}, bitsandbytes {results['bitsandbytes']}, "
                     f"triton {results.get('triton', '-')}; nf4, blocksize {results['blocksize']}, double quant "
                     f"{results['double_quant']}; median of {results['iters']}, L2 flushed: {results['flush_l2']}")
        for name, why in results.get("skipped", {}).items():
            lines.append(f"skipped {name}: {why}")
    for M, block in results["by_m"].items():
        if only is not None and M != only:
            continue
        lines.append("")
        lines.append(f"M = {M} rows; cells fwd / bwd ms; step = {results['layers']} layers x 4 linears x (fwd + bwd)")
        lines.append("| path | " + " | ".join(shapes) + " | step ms | vs today | max rel err |")
        lines.append("|---|" + "---|" * (len(shapes) + 3))
        today = block["step_ms"].get("bnb")
        for key, label in PATHS:
            cells = [block["shapes"][s].get(key) for s in shapes]
            if all(c is None for c in cells):
                continue
            parts, errs = [], []
            for c in cells:
                if not c:
                    parts.append("-")
                    continue
                if "error" in c or "fwd_ms" not in c:
                    parts.append("error" if "error" in c else "skipped")
                    continue
                f, b = c.get("fwd_ms"), c.get("bwd_ms")
                parts.append(f"{f:.3f} / {b:.3f}" if b is not None else f"{f:.3f} / -")
                errs += [c[k] for k in ("fwd_err", "bwd_err") if c.get(k) is not None]
            step = block["step_ms"].get(key)
            step_s = f"{step:.2f}" if step is not None else "-"
            vs = f"{today / step:.2f}x" if step and today else "-"
            if key in ("bnb_dequant", "compiled_dequant"):   # a share of today's step, not an alternative to it
                vs = f"{step / today:.0%} of today" if step and today else "-"
            if step is None and all(c and "fwd_ms" in c for c in cells):   # forward only: its share
                step_s = f"fwd {LAYERS * sum(c['fwd_ms'] for c in cells):.2f}"
            err = max(errs) if errs else None
            mark = "" if err is None or err <= TOLERANCE else " FAIL"
            if key in ("bnb_dequant", "compiled_dequant"):
                err_s = f"weight diff {err:.1e}" if err is not None else "-"
            else:
                err_s = f"{err:.2e}{mark}" if err is not None else "-"
                err_s += " (own dequant)" if key == "torchao" else ""
            lines.append(f"| {label} | " + " | ".join(parts) + f" | {step_s} | {vs} | {err_s} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=lambda s: [int(v) for v in s.split(",")], default=[544, 2176],
                        help="rows (batch x tokens), comma-separated (default 544,2176: 4 and 16 x 136)")
    parser.add_argument("--shapes", type=lambda s: s.split(","), default=list(SHAPES),
                        help="comma-separated subset of " + ",".join(SHAPES))
    parser.add_argument("--paths", type=lambda s: s.split(","), default=[k for k, _ in PATHS],
                        help="comma-separated subset of " + ",".join(k for k, _ in PATHS))
    parser.add_argument("--iters", type=int, default=20, help="timed calls per measurement (median; default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--no-flush", action="store_true", help="don't flush L2 before each timed call")
    parser.add_argument("--no-double-quant", action="store_true",
                        help="float32 absmax (compress_statistics=False); the project uses double quant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--check-cpu", action="store_true",
                        help="no GPU: run the Triton kernels under TRITON_INTERPRET=1 on small CPU shapes against "
                             "bitsandbytes' CPU quantize/dequantize (needs triton and bitsandbytes); exit 1 on failure")
    parser.add_argument("--check-compile", type=int, nargs="?", const=90, metavar="ARCH",
                        help="no GPU: compile every autotuned config for sm_ARCH (default 90) with triton's ptxas; "
                             "exit 1 if one fails")
    args = parser.parse_args(argv)
    if args.check_cpu:
        return check_cpu(args.seed)
    if args.check_compile:
        return check_compile(args.check_compile)
    unknown = set(args.shapes) - set(SHAPES) | set(args.paths) - {k for k, _ in PATHS}
    if unknown:
        parser.error(f"unknown shape or path: {', '.join(sorted(unknown))}")
    if not torch.cuda.is_available():
        print("no CUDA GPU: the timings need one (use --check-cpu for the CPU correctness check)", file=sys.stderr)
        return 2
    def on_block(results, M):   # print and save each M's table as it completes
        print(table(results, only=M, header=M == next(iter(results["by_m"]))), flush=True)
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(results, handle, indent=1)

    results = run_gpu(args, on_block)
    if results.get("triton_best"):
        print("\ntriton autotune picks: " + json.dumps(results["triton_best"]))
    print("compile seconds (torch.compile dequant, first call per shape): " + json.dumps(results["compile_s"]))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    failed = [k for block in results["by_m"].values() for cell in block["shapes"].values()
              for k, v in cell.items() if k not in ("bnb_dequant", "torchao") and
              max(v.get("fwd_err", 0) or 0, v.get("bwd_err", 0) or 0) > TOLERANCE]
    if failed:
        print("error above tolerance:", sorted(set(failed)), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
