"""Regional compilation (issue 23): each decoder layer compiled in place through one shared torch.compile'd function.

`--compile` used to trace the whole model into one graph: dynamo, AOTAutograd and inductor's wrapper code then
grow with the depth, and a warm compile cache still re-traces all of it in every new process (28 layers of a 6B
model). Here torch.compile sees one decoder layer at a time: identical layers differ only in their weights (graph
inputs under dynamo's `inline_inbuilt_nn_modules`, on by default) and in `layer_idx`, so one trace serves every
layer. Two graphs in all: layer 0 (its input needs no gradient) and the others. The embedding, the prefix hook,
the final norm, the LM head and the loss stay eager (a few kernels per step).

`layer_idx` is an int that dynamo would specialise on (a recompile per layer, and eager after 8); so while a layer
runs compiled its modules' `layer_idx` read 0 and the prefix keyword carries that layer's keys/values alone (what
`prefixed_attention` reads at index `layer_idx`). Outside training (eval mode or no grad: evaluation, generation)
a layer runs its eager forward; in training the backward's recompute of a checkpointed layer is compiled too.
"""

from __future__ import annotations

from typing import Any

from tasktune.tuning.training import memory

#: Set on a layer by `compile_layers` (its forward is ours); `uncompile_layers` removes both.
MARK = "_tasktune_compiled_layer"


def _run_layer(layer, *args, **kwargs):
    """The one function torch.compile traces for every decoder layer (the layer, and so its weights, are inputs)."""
    return type(layer).forward(layer, *args, **kwargs)


def compile_layers(model, *, backend: str, fullgraph: bool = False, **options: Any) -> int:
    """Compile each decoder layer of `model` in place through one shared compiled function; returns how many.
    0: no decoder layers found, or a layer's forward is already replaced (someone's hook): compile the model."""
    import torch

    from tasktune.tuning.model.prefix import PREFIX_KWARG, PrefixKV

    layers = memory.decoder_layers(model)
    if not layers or any("forward" in vars(layer) for layer in layers):
        return 0
    compiled = torch.compile(_run_layer, backend=backend, fullgraph=fullgraph, dynamic=False, **options)

    def install(layer) -> None:
        indexed = [m for m in layer.modules() if type(getattr(m, "layer_idx", None)) is int]
        idx = indexed[0].layer_idx if indexed else 0

        def forward(*args, **kwargs):
            if not (layer.training and torch.is_grad_enabled()):
                return type(layer).forward(layer, *args, **kwargs)
            prefix = kwargs.get(PREFIX_KWARG)
            if isinstance(prefix, PrefixKV):  # this layer's keys/values, at index 0
                kwargs[PREFIX_KWARG] = PrefixKV({**prefix, "key": (prefix["key"][idx],),
                                                 "value": (prefix["value"][idx],), "masks": {}})
            elif isinstance(prefix, torch.Tensor):  # a raw (layers, 2, kv heads, P, head dim) prefix
                kwargs[PREFIX_KWARG] = prefix[idx:idx + 1]
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


def uncompile_layers(model) -> int:
    """Undo `compile_layers` (each layer's class forward again); returns how many layers were compiled."""
    undone = 0
    for layer in memory.decoder_layers(model):
        if vars(layer).pop(MARK, None):
            vars(layer).pop("forward", None)
            undone += 1
    return undone
