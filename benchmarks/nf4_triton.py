"""Split-K Triton kernels for the frozen base's 4-bit linears at decode sizes (a few rows), reading the NF4 weight once:
benchmark code (benchmarks/nf4_decode_bench.py), not used by tasktune.

Why: at 32 decode rows a 6B GLM step spends most of its time in bitsandbytes' 4-bit linears, which dequantise each
weight to bf16 and call cuBLAS (the whole weight written and read again in bf16). Here y = x W^T for M <= 64 rows:
each program dequantises tiles of W in registers (NF4 code book x the per-64 absmax, double-quantised as
tuning/model/load.py stores it, rounded to bf16 as bitsandbytes' dequantisation rounds) and multiplies them with x's
tile in fp32; the K splits' partial sums are added in a fixed order (no atomics). v1 takes [BN, BK] tiles
(interleaving the two nibbles); v2 one 64-element absmax block per iteration, nibbles against x's even and odd
columns. Measured on an H100 (benchmarks/RESULTS.md, "Serving"): v1 is slower than bitsandbytes at every shape;
tasktune serves with bitsandbytes' calls or with the weights dequantised once (--decode-weights bf16).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

#: (BN, BK, W_LEFT, num_warps, num_stages) tried per shape; the K split is chosen to fill the GPU
CONFIGS = [(bn, bk, left, 4, 3 if bn * bk <= 64 * 256 else 2) for bn in (32, 64, 128) for bk in (128, 256)
           for left in (0, 1)]
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_kernel = None


def available() -> bool:
    """Triton imports and there is a CUDA device (or the Triton interpreter, for the CPU tests)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return INTERPRET or torch.cuda.is_available()


def _define_kernel():
    """Define the @triton.jit kernel as a module global (triton resolves `tl` and helpers through the module's
    globals); on first use, so importing this module needs no triton."""
    global _kernel, triton, tl, _bf16, _dot_operand
    if _kernel is not None:
        return _kernel
    import triton
    import triton.language as tl

    @triton.jit
    def _bf16(v, INTERP: tl.constexpr):
        """fp32 -> bf16 rounded to nearest even (the interpreter's cast truncates; a GPU's rounds)."""
        if INTERP:
            bits = v.to(tl.uint32, bitcast=True)
            v = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
        return v.to(tl.bfloat16)

    @triton.jit
    def _dot_operand(v, INTERP: tl.constexpr):
        """The interpreter's tl.dot multiplies bf16 bit patterns: give it the same values in fp32."""
        if INTERP:
            v = v.to(tl.float32)
        return v

    @triton.jit
    def nf4_decode_kernel(x_ptr, packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset_ptr, nf4_ptr, part_ptr,
                          M, N, K, stride_xm, chunks_per_split,
                          BLOCKSIZE: tl.constexpr, NESTED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                          BK: tl.constexpr, W_LEFT: tl.constexpr, INTERP: tl.constexpr):
        """part[split, M, N] = x[:, ks] @ W[:, ks]^T over this program's K chunks (fp32), for BN columns of y."""
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        offs_n = pid_n * BN + tl.arange(0, BN)
        rows_n = offs_n % N                       # in-range rows of W for the loads; the store masks
        offs_m = tl.arange(0, BM)
        rows_m = offs_m % M
        HALF: tl.constexpr = BK // 2
        NS: tl.constexpr = BK // BLOCKSIZE
        PER: tl.constexpr = BLOCKSIZE // 2        # bytes per absmax block
        offset = tl.load(offset_ptr)
        if W_LEFT:
            acc = tl.zeros((BN, BM), dtype=tl.float32)
        else:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
        first = split * chunks_per_split
        last = tl.minimum(first + chunks_per_split, K // BK)
        for chunk in range(first, last):
            k0 = chunk * BK
            byte = tl.load(packed_ptr + rows_n[:, None].to(tl.int64) * (K // 2) + (k0 // 2 + tl.arange(0, HALF))[None, :])
            block = rows_n[:, None].to(tl.int64) * (K // BLOCKSIZE) + (k0 // BLOCKSIZE + tl.arange(0, NS))[None, :]
            if NESTED:
                scale = tl.load(code2_ptr + tl.load(absmax_ptr + block).to(tl.int32)) \
                    * tl.load(absmax2_ptr + block // 256) + offset
            else:
                scale = tl.load(absmax_ptr + block)
            hi = tl.load(nf4_ptr + (byte >> 4).to(tl.int32))      # element k0 + 2j
            lo = tl.load(nf4_ptr + (byte & 15).to(tl.int32))      # element k0 + 2j + 1
            hi = tl.reshape(tl.reshape(hi, (BN, NS, PER)) * scale[:, :, None], (BN, HALF))
            lo = tl.reshape(tl.reshape(lo, (BN, NS, PER)) * scale[:, :, None], (BN, HALF))
            w = _dot_operand(_bf16(tl.interleave(hi, lo), INTERP), INTERP)     # [BN, BK]
            if W_LEFT:
                xt = tl.load(x_ptr + rows_m[None, :] * stride_xm + (k0 + tl.arange(0, BK))[:, None])   # [BK, BM]
                acc = tl.dot(w, _dot_operand(xt, INTERP), acc)
            else:
                xk = tl.load(x_ptr + rows_m[:, None] * stride_xm + (k0 + tl.arange(0, BK))[None, :])   # [BM, BK]
                acc = tl.dot(_dot_operand(xk, INTERP), tl.trans(w), acc)
        base = part_ptr + split.to(tl.int64) * M * N
        if W_LEFT:
            tl.store(base + offs_m[None, :] * N + offs_n[:, None], acc, mask=(offs_m[None, :] < M) & (offs_n[:, None] < N))
        else:
            tl.store(base + offs_m[:, None] * N + offs_n[None, :], acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    @triton.jit
    def nf4_decode_kernel_v2(x_ptr, packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset_ptr, nf4_ptr, part_ptr,
                             M, N, K, stride_xm, chunks_per_split,
                             NESTED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, INTERP: tl.constexpr):
        """v2: one absmax block (64 elements, 32 bytes a row) per iteration, its scale one value per row, and the
        high and low nibbles multiplied with x's even and odd columns by two dots (no interleave, no reshape)."""
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        offs_n = pid_n * BN + tl.arange(0, BN)
        rows_n = offs_n % N
        offs_m = tl.arange(0, BM)
        rows_m = offs_m % M
        j = tl.arange(0, 32)
        offset = tl.load(offset_ptr)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        first = split * chunks_per_split
        last = tl.minimum(first + chunks_per_split, K // 64)
        row_bytes = rows_n[:, None].to(tl.int64) * (K // 2) + j[None, :]
        row_blocks = rows_n.to(tl.int64) * (K // 64)
        x_rows = x_ptr + rows_m[:, None] * stride_xm + 2 * j[None, :]
        for chunk in range(first, last):
            byte = tl.load(packed_ptr + row_bytes + chunk * 32)                       # [BN, 32]
            if NESTED:
                scale = tl.load(code2_ptr + tl.load(absmax_ptr + row_blocks + chunk).to(tl.int32)) \
                    * tl.load(absmax2_ptr + (row_blocks + chunk) // 256) + offset
            else:
                scale = tl.load(absmax_ptr + row_blocks + chunk)
            hi = _dot_operand(_bf16(tl.load(nf4_ptr + (byte >> 4).to(tl.int32)) * scale[:, None], INTERP), INTERP)
            lo = _dot_operand(_bf16(tl.load(nf4_ptr + (byte & 15).to(tl.int32)) * scale[:, None], INTERP), INTERP)
            xe = _dot_operand(tl.load(x_rows + chunk * 64), INTERP)                  # [BM, 32]: elements 2j
            xo = _dot_operand(tl.load(x_rows + chunk * 64 + 1), INTERP)              # 2j + 1
            acc = tl.dot(xe, tl.trans(hi), acc)
            acc = tl.dot(xo, tl.trans(lo), acc)
        base = part_ptr + split.to(tl.int64) * M * N
        tl.store(base + offs_m[:, None] * N + offs_n[None, :], acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    global _kernel_v2
    _kernel_v2 = nf4_decode_kernel_v2
    _kernel = nf4_decode_kernel
    return _kernel


@dataclass
class NF4Weight:
    """One bitsandbytes NF4 weight as the kernel reads it (views of bnb's tensors, nothing copied): packed codes
    (two per byte, high nibble first, row-major over [N, K]), per-64 absmax (uint8 codes of a 256-entry map x a
    float per 256 blocks + offset when double-quantised, else float32), the 16-entry NF4 code book."""

    packed: torch.Tensor
    absmax: torch.Tensor
    code2: torch.Tensor
    absmax2: torch.Tensor
    offset: torch.Tensor
    nf4: torch.Tensor
    N: int
    K: int
    blocksize: int
    nested: bool

    @classmethod
    def of(cls, packed: torch.Tensor, quant_state) -> "NF4Weight":
        qs = quant_state
        if qs.quant_type != "nf4":
            raise ValueError(f"not an NF4 weight (quant_type {qs.quant_type!r})")
        n, k = (int(v) for v in qs.shape)
        nested = bool(qs.nested)
        if nested and qs.state2.blocksize != 256:
            raise ValueError("double-quantised absmax with blocks other than 256")
        if nested:
            absmax, code2, absmax2 = qs.absmax, qs.state2.code.float(), qs.state2.absmax.float()
            offset = torch.as_tensor(qs.offset, dtype=torch.float32, device=packed.device).reshape(1)
        else:
            absmax = code2 = absmax2 = qs.absmax.float()
            offset = torch.zeros(1, dtype=torch.float32, device=packed.device)
        return cls(packed.reshape(-1), absmax.contiguous(), code2.contiguous(), absmax2.contiguous(), offset,
                   qs.code.float().contiguous(), n, k, int(qs.blocksize), nested)

    def fits(self, bk: int) -> bool:
        return self.K % bk == 0 and bk % self.blocksize == 0


def row_bucket(rows: int) -> int:
    """The kernel's BM for `rows` (tl.dot needs >= 16)."""
    return max(16, 1 << (rows - 1).bit_length())


def splits_for(w: NF4Weight, bn: int, bk: int, sms: int) -> tuple[int, int]:
    """(programs along K, chunks each): enough programs to give every SM two, each over >= 2 chunks of BK."""
    chunks = w.K // bk
    columns = -(-w.N // bn)
    split = max(1, min(-(-2 * sms // columns), chunks // 2 or 1, 32))
    per = -(-chunks // split)
    return -(-chunks // per), per


def matmul(x: torch.Tensor, w: NF4Weight, config: tuple) -> torch.Tensor:
    """y = x W^T (x: [M, K] bf16, M <= 64) with the kernel config `config` = (BN, BK, W_LEFT, warps, stages)."""
    kernel = _define_kernel()
    bn, bk, left, warps, stages = config
    m = x.shape[0]
    x = x.contiguous()
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 132
    split, per = splits_for(w, bn, bk, sms)
    part = torch.empty((split, m, w.N), dtype=torch.float32, device=x.device)
    grid = (-(-w.N // bn), split)
    kernel[grid](x, w.packed, w.absmax, w.code2, w.absmax2, w.offset, w.nf4, part, m, w.N, w.K, x.stride(0), per,
                 BLOCKSIZE=w.blocksize, NESTED=w.nested, BM=row_bucket(m), BN=bn, BK=bk, W_LEFT=left,
                 INTERP=INTERPRET, num_warps=warps, num_stages=stages)
    return (part[0] if split == 1 else part.sum(0)).to(torch.bfloat16)


#: v2's (BN, num_warps, num_stages)
CONFIGS_V2 = [(bn, w, st) for bn in (64, 128, 256) for w in (4, 8) for st in (2, 4)]
_kernel_v2 = None


def matmul_v2(x: torch.Tensor, w: NF4Weight, config: tuple) -> torch.Tensor:
    """y = x W^T with the v2 kernel (64-element blocks only), `config` = (BN, warps, stages)."""
    if w.blocksize != 64:
        raise ValueError("the v2 kernel reads 64-element absmax blocks")
    _define_kernel()
    bn, warps, stages = config
    m = x.shape[0]
    x = x.contiguous()
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 132
    split, per = splits_for(w, bn, 64, sms)
    part = torch.empty((split, m, w.N), dtype=torch.float32, device=x.device)
    _kernel_v2[(-(-w.N // bn), split)](x, w.packed, w.absmax, w.code2, w.absmax2, w.offset, w.nf4, part, m, w.N, w.K,
                                       x.stride(0), per, NESTED=w.nested, BM=row_bucket(m), BN=bn,
                                       INTERP=INTERPRET, num_warps=warps, num_stages=stages)
    return (part[0] if split == 1 else part.sum(0)).to(torch.bfloat16)
