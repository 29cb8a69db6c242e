"""Decode steps whose decoder layers run torch.compile'd code: the slots' CUDA graph replays fused kernels.

A graphed decode step of a 6.24B GLM at 32 rows spent ~40 % of its GPU time in ~1,000 small kernels a step (RMS
norms, rotary, residual adds, the gated MLP's activation, the attention's scale/mask/softmax), each a few
microseconds however small its tensor, beside weight matmuls already near the memory-bandwidth floor
(benchmarks/RESULTS.md, the H200 profile of `serve_profile.py`). Inductor fuses those elementwise chains.

As training's regional compile does (tuning/training/regional.py), torch.compile traces one decoder layer and its
code serves every layer: identical layers differ in their weights (graph inputs) and in `layer_idx`, so while a
layer runs compiled its modules' `layer_idx` read 0 and the slot cache it gets holds that layer's buffers alone.
Only calls with a slot cache (`Slots` decode steps) take the compiled path; the prefill and every other forward
(eval, the dynamic batch) run the layers' own eager forward. The compiled code runs inside the step's CUDA graph
capture: compiling happens on the warm-up calls before it.
"""

from __future__ import annotations

#: Set on a layer by `fuse_decode_layers` (its forward is ours).
MARK = "_tasktune_fused_decode"


def _decode_layer(layer, *args, **kwargs):
    """The one function torch.compile traces for every decoder layer (the layer, and so its weights, are inputs)."""
    return type(layer).forward(layer, *args, **kwargs)


def decoder_layers(model) -> list:
    """The model's repeated decoder blocks (transformers' GradientCheckpointingLayer subclasses), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def fuse_decode_layers(model, *, backend: str = "inductor") -> int:
    """Route each decoder layer's slot-cache calls through one compiled function; returns how many layers.
    0 (nothing changed): no decoder layers found, a layer's forward is already replaced (someone's hook), or a
    layer has no module with a `layer_idx`. Swapping `layer_idx` during a compiled call assumes one thread runs
    the model at a time (the engine's thread owns it)."""
    import torch

    from .slots import SlotCache

    layers = decoder_layers(model)
    if layers and all(vars(layer).get(MARK) for layer in layers):
        return len(layers)  # fused already (another engine over the same model)
    if not layers or any("forward" in vars(layer) for layer in layers):
        return 0
    if not all(any(type(getattr(m, "layer_idx", None)) is int for m in layer.modules()) for layer in layers):
        return 0  # a layer that does not say which cache layer is its own cannot share one trace
    # dynamic=None: the first bucket of rows compiles static, a second one a batch-size-generic graph
    compiled = torch.compile(_decode_layer, backend=backend, fullgraph=False)

    def install(layer) -> None:
        indexed = [m for m in layer.modules() if type(getattr(m, "layer_idx", None)) is int]
        idx = indexed[0].layer_idx

        def forward(*args, **kwargs):
            cache = kwargs.get("past_key_values")
            if not isinstance(cache, SlotCache):
                return type(layer).forward(layer, *args, **kwargs)
            kwargs["past_key_values"] = cache.layer(idx)
            for module in indexed:
                module.layer_idx = 0
            try:
                return compiled(layer, *args, **kwargs)
            finally:
                for module in indexed:
                    module.layer_idx = idx

        setattr(layer, MARK, True)
        layer.forward = forward

    for layer in layers:
        install(layer)
    return len(layers)


def unfuse_decode_layers(model) -> int:
    """Undo `fuse_decode_layers`; returns how many layers were changed back."""
    undone = 0
    for layer in decoder_layers(model):
        if vars(layer).pop(MARK, None):
            vars(layer).pop("forward", None)
            undone += 1
    return undone
