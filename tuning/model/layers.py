"""The model's repeated decoder layers, and one compiled function serving all of them.

Training's regional compile (tuning/training/regional.py) and serving's fused decode step
(tuning/inference/fused_decode.py) both have torch.compile trace one decoder layer and reuse that code for every
layer: identical layers differ in their weights (graph inputs) and in `layer_idx`, an int that dynamo would
specialise on (a recompile per layer, and eager after 8). So while a layer runs compiled its modules'
`layer_idx` read 0, and the per-layer state it is handed (the prefix's keys/values, the slot cache) is that
layer's alone. `route_layers` installs that forward; which calls take it, and what they are handed, is the
caller's `adapt`. The swap assumes one thread runs the model at a time (the training loop, the engine's thread).
"""

from __future__ import annotations

from typing import Callable


def decoder_layers(model) -> list:
    """The model's repeated decoder blocks (transformers' GradientCheckpointingLayer subclasses), in order."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - older transformers
        GradientCheckpointingLayer = ()
    layers = [m for m in model.modules() if GradientCheckpointingLayer and isinstance(m, GradientCheckpointingLayer)]
    return layers or [m for m in model.modules() if hasattr(m, "gradient_checkpointing") and hasattr(m, "self_attn")]


def run_layer(layer, *args, **kwargs):
    """The one function torch.compile traces for every decoder layer (the layer, and so its weights, are inputs)."""
    return type(layer).forward(layer, *args, **kwargs)


def route_layers(model, mark: str, compiled: Callable, adapt: Callable) -> int:
    """Give each decoder layer a forward that calls `compiled(layer, *args, **kwargs)` (torch.compile of
    `run_layer`) with its modules' `layer_idx` read as 0, for the calls that `adapt(layer, idx, kwargs)` takes:
    it returns the keyword arguments of that call (this layer's part of per-layer state), or None for the layer's
    own eager forward. Sets `mark` on each layer. Returns how many layers; 0 (nothing changed): no decoder layers,
    a layer's forward already replaced (someone's hook), or a layer with no module that has a `layer_idx` (it
    could not be handed its own state)."""
    layers = decoder_layers(model)
    if not layers or any("forward" in vars(layer) for layer in layers):
        return 0
    indexed = [[m for m in layer.modules() if type(getattr(m, "layer_idx", None)) is int] for layer in layers]
    if not all(indexed):
        return 0
    for layer, modules in zip(layers, indexed):
        _install(layer, modules, mark, compiled, adapt)
    return len(layers)


def _install(layer, modules: list, mark: str, compiled: Callable, adapt: Callable) -> None:
    idx = modules[0].layer_idx

    def forward(*args, **kwargs):
        routed = adapt(layer, idx, kwargs)
        if routed is None:
            return type(layer).forward(layer, *args, **kwargs)
        for module in modules:
            module.layer_idx = 0
        try:
            return compiled(layer, *args, **routed)
        finally:
            for module in modules:
                module.layer_idx = idx

    setattr(layer, mark, True)
    layer.forward = forward


def unroute_layers(model, mark: str) -> int:
    """Undo `route_layers` (each marked layer's class forward again); returns how many layers were changed back."""
    undone = 0
    for layer in decoder_layers(model):
        if vars(layer).pop(mark, None):
            vars(layer).pop("forward", None)
            undone += 1
    return undone
