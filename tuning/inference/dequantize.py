"""A served 4-bit base, dequantised once: memory for speed at decode sizes (`tasktune serve --decode-weights bf16`).

At a few rows a step, bitsandbytes' 4-bit linears dequantise every weight to the compute dtype on every call and
then multiply it (benchmarks/RESULTS.md, "Serving": ~11 of a 6B GLM's ~18 ms decode step at 32 rows). Doing that
dequantisation once, at start, leaves each decode step plain GEMMs over weights of exactly the same values: for more
than one row bitsandbytes computes `x @ dequantize_4bit(W).T` itself, so answers do not change; one row at a time it
runs a fused kernel whose sums round differently. The cost is memory: 2 bytes a weight instead of ~0.53 (a 6B GLM's
linears: ~11.3 GiB instead of ~3.0).
"""

from __future__ import annotations

import torch


def dequantize_4bit_linears(model) -> int:
    """Replace every bitsandbytes `Linear4bit` in `model` by a `torch.nn.Linear` whose weight is bitsandbytes' own
    dequantisation of it, in the layer's compute dtype; returns how many were replaced (0 without bitsandbytes)."""
    try:
        import bitsandbytes.functional as F
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, Linear4bit):
                continue
            dtype = child.compute_dtype or torch.bfloat16
            packed, state = child.weight.data, child.weight.quant_state
            if getattr(state, "packing_format_for_cpu", False):  # re-laid out for bitsandbytes' AVX512 CPU kernel
                packed, state = F._convert_weight_packed_for_cpu_inverse(packed, state)
            with torch.no_grad():
                weight = F.dequantize_4bit(packed, state).to(dtype)
                linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                         device=weight.device, dtype=dtype)
                linear.weight.copy_(weight)
                if child.bias is not None:
                    linear.bias.copy_(child.bias.to(dtype))
            linear.requires_grad_(False)
            setattr(parent, name, linear)
            count += 1
    if count and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the packed weights' blocks go back before the slots' cache is allocated
    return count
