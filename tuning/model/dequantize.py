"""A 4-bit base dequantised once: memory for speed (`tasktune serve --decode-weights bf16`; `tasktune train
--train-weights`, tuning/training/base_weights.py).

bitsandbytes' 4-bit linears dequantise every weight to the compute dtype on every call (and in training once more
in backward) and then multiply it. Doing that dequantisation once, at start, leaves plain GEMMs over weights of
exactly the same values: for more than one row bitsandbytes computes `x @ dequantize_4bit(W).T` itself, so results
do not change; one row at a time it runs a fused kernel whose sums round differently. The gain, on an H100 with a
6B GLM (benchmarks/RESULTS.md): serving, ~11 of the ~18 ms decode step at 32 rows; training, a graphed 4 x 64/64
step from 43.2 to 33.0 ms. The cost is memory: 2 bytes a weight instead of ~0.53 (the 6B GLM's linears: ~11.3 GiB
instead of ~3.0).
"""

from __future__ import annotations

import gc

import torch


def added_bytes(model) -> int:
    """Bytes that `dequantize_4bit_linears` would add to `model`: each 4-bit linear's weight in its compute dtype,
    less its packed bytes (the quantisation constants, a few % more, are not subtracted: an over-estimate)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    total = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            dtype = module.compute_dtype or torch.bfloat16
            packed = module.weight.data
            total += (module.in_features * module.out_features * torch.finfo(dtype).bits // 8
                      - packed.numel() * packed.element_size())
    return max(total, 0)


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
                # skip_init: no random initialisation to overwrite, and the global RNG is left as it was (a
                # training run's prefix is drawn after this and must not depend on --train-weights)
                linear = torch.nn.utils.skip_init(torch.nn.Linear, child.in_features, child.out_features,
                                                  bias=child.bias is not None, device=weight.device, dtype=dtype)
                linear.weight.copy_(weight)
                if child.bias is not None:
                    linear.bias.copy_(child.bias.to(dtype))
            linear.requires_grad_(False)
            setattr(parent, name, linear)
            # the packed weight goes now, whoever still holds the old module: freed only at the end, every packed
            # weight was live beside every copy (a 6B GLM's load peaked at 14.6 GiB, 2.7 above its bf16 weights)
            child.weight.data = torch.empty(0, dtype=child.weight.dtype, device=child.weight.device)
            del packed, weight
            count += 1
    if count:
        # the replaced Linear4bit modules sit in reference cycles: until the cyclic collector runs, their packed
        # weights stay allocated (a 6B GLM's ~2.7 GiB on top of the copies: 14.47 GiB measured for 11.8 expected)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the packed weights' blocks go back before the slots' cache is allocated
    return count
