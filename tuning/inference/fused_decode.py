"""Decode steps whose decoder layers run torch.compile'd code: the slots' CUDA graph replays fused kernels.

A graphed decode step of a 6.24B GLM at 32 rows spent ~40 % of its GPU time in ~1,000 small kernels a step (RMS
norms, rotary, residual adds, the gated MLP's activation, the attention's scale/mask/softmax), each a few
microseconds however small its tensor, beside weight matmuls already near the memory-bandwidth floor
(benchmarks/RESULTS.md, the H200 profile of `serve_profile.py`). Inductor fuses those elementwise chains.

As training's regional compile does (tuning/training/regional.py), torch.compile traces one decoder layer and its
code serves every layer (tuning/model/layers.py): while a layer runs compiled its modules' `layer_idx` read 0 and
the slot cache it gets holds that layer's buffers alone.
Only calls with a slot cache take the compiled path: the `Slots` decode steps (inside their CUDA graphs) and the
prefill of joining rows in the slots' layout (`Slots.prefill`, no graph: its shapes vary); every other forward
(eval, the dynamic batch) runs the layers' own eager forward. Compiling happens on `Slots.warm_up`'s calls, before
the first request.
"""

from __future__ import annotations

from tasktune.tuning.model.layers import decoder_layers, route_layers, run_layer, unroute_layers

__all__ = ["MARK", "decoder_layers", "fuse_decode_layers", "unfuse_decode_layers"]

#: Set on a layer by `fuse_decode_layers` (its forward is ours).
MARK = "_tasktune_fused_decode"


def fuse_decode_layers(model, *, backend: str = "inductor") -> int:
    """Route each decoder layer's slot-cache calls through one compiled function; returns how many layers.
    0 (nothing changed): no decoder layers found, a layer's forward is already replaced (someone's hook), or a
    layer has no module with a `layer_idx` (tuning/model/layers.py)."""
    import torch

    from .slots import SlotCache

    layers = decoder_layers(model)
    if layers and all(vars(layer).get(MARK) for layer in layers):
        return len(layers)  # fused already (another engine over the same model)

    def adapt(layer, idx: int, kwargs: dict) -> dict | None:
        cache = kwargs.get("past_key_values")
        if not isinstance(cache, SlotCache) or not cache.compiled:
            return None
        return {**kwargs, "past_key_values": cache.layer(idx)}

    # dynamic=None: the first bucket of rows compiles static, a second one a batch-size-generic graph
    return route_layers(model, MARK, torch.compile(run_layer, backend=backend, fullgraph=False), adapt)


def unfuse_decode_layers(model) -> int:
    """Undo `fuse_decode_layers`; returns how many layers were changed back."""
    return unroute_layers(model, MARK)
