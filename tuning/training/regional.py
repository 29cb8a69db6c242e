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

from tasktune.tuning.model.layers import route_layers, run_layer, unroute_layers

#: Set on a layer by `compile_layers` (its forward is ours); `uncompile_layers` removes both.
MARK = "_tasktune_compiled_layer"


def compile_layers(model, *, backend: str, fullgraph: bool = False, **options: Any) -> int:
    """Compile each decoder layer of `model` in place through one shared compiled function; returns how many.
    0: no decoder layers found, a layer's forward is already replaced (someone's hook), or a layer has no
    `layer_idx` (tuning/model/layers.py): compile the model."""
    import torch

    from tasktune.tuning.model.prefix import PREFIX_KWARG, PrefixKV

    def adapt(layer, idx: int, kwargs: dict) -> dict | None:
        if not (layer.training and torch.is_grad_enabled()):
            return None
        prefix = kwargs.get(PREFIX_KWARG)
        if isinstance(prefix, PrefixKV):  # this layer's keys/values, at index 0
            kwargs[PREFIX_KWARG] = PrefixKV({**prefix, "key": (prefix["key"][idx],),
                                             "value": (prefix["value"][idx],), "masks": {}})
        elif isinstance(prefix, torch.Tensor):  # a raw (layers, 2, kv heads, P, head dim) prefix
            kwargs[PREFIX_KWARG] = prefix[idx:idx + 1]
        return kwargs

    compiled = torch.compile(run_layer, backend=backend, fullgraph=fullgraph, dynamic=False, **options)
    return route_layers(model, MARK, compiled, adapt)


def uncompile_layers(model) -> int:
    """Undo `compile_layers` (each layer's class forward again); returns how many layers were compiled."""
    return unroute_layers(model, MARK)
