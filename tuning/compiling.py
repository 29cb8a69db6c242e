"""`--compile`: run the training forward+backward through torch.compile (and CUDA graphs), issue #6.

A 4-bit 6B step at batch 4 is host-bound in eager mode: ~5,000-7,300 small kernel launches and the Python of
transformers' decoder layers and bitsandbytes' wrappers take 150-275 ms for 52-72 ms of GPU work
(benchmarks/NOTES.md). torch.compile traces the whole model (prefix hook, 4-bit matmuls as bitsandbytes'
registered custom ops, loss) into graphs with fused elementwise kernels (two frames: the prefix pre-hook and
the model; no graph breaks); "cudagraphs" (mode="reduce-overhead") also replays them as CUDA graphs, which
removes the launch cost and bitsandbytes' per-call Python.

Modes: off; on (inductor); cudagraphs (inductor + CUDA graphs); auto = AUTO_CUDA_MODE on a CUDA GPU for
AUTO_METHODS in runs of at least AUTO_MIN_STEPS optimizer steps, off elsewhere (CPU, or a short run: the
compile time outweighs any gain). Measured on an H100/H200 (benchmarks/RESULTS.md, `gpu_run.sh compile6b`): a 6B
4-bit step at batch 4, 64/64, checkpointed, 286 ms eager, 122 ms compiled, 45-47 ms with CUDA graphs; the first
step takes 85-120 s to compile, and CUDA graphs keep ~0.85 GiB more memory (5.16 vs 4.32 GiB allocated).
Compiled steps need fixed shapes: `tasktune train` pads every batch to its longest possible row, so the
model compiles once (the first step takes the compile time: tens of seconds to minutes for a 6B model).
"""

from __future__ import annotations

from typing import Any, Callable

from tasktune.errors import ConfigError

MODES = ("auto", "off", "on", "cudagraphs")
#: What `auto` picks on a CUDA GPU for methods where it was measured (see benchmarks/RESULTS.md).
AUTO_CUDA_MODE = "cudagraphs"
#: `auto` compiles only runs this long: at ~0.24 s saved per 6B step, ~100 s of compile pays back after ~400
#: steps; the margin covers smaller models, whose steps save less.
AUTO_MIN_STEPS = 1000
#: Methods (causal-lm task) for which `auto` may turn compilation on: the ones the 6B bench measured.
AUTO_METHODS = ("ptuning-v2", "prefix")
#: torch.compile backend (tests use "aot_eager": the same tracing, no code generation).
BACKEND = "inductor"


def resolve_mode(mode: str, *, method: str = "ptuning-v2", task: str = "causal-lm", cuda: bool | None = None,
                 steps: int | None = None, processes: int = 1) -> str:
    """"auto" -> "off"/"on"/"cudagraphs" for this run; checks the name and that cudagraphs has a GPU."""
    import torch

    if mode not in MODES:
        raise ConfigError(f"unknown compile mode {mode!r}; choose one of {', '.join(MODES)}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if mode == "auto":
        long_run = steps is None or steps >= AUTO_MIN_STEPS
        # graphs under DDP (processes > 1): not measured
        ok = cuda and long_run and processes == 1 and method in AUTO_METHODS and task == "causal-lm"
        return AUTO_CUDA_MODE if ok else "off"
    if mode == "cudagraphs" and not cuda:
        raise ConfigError("--compile cudagraphs needs a CUDA GPU; use --compile on (or off) on a CPU")
    return mode


def compile_model(model, mode: str, *, fullgraph: bool = False, backend: str | None = None) -> Callable[..., Any]:
    """The callable the training loop runs instead of `model` (the model itself when mode is "off").

    The compiled callable shares the model's parameters: optimizers, saving and eval keep using `model`.
    """
    if mode == "off":
        return model
    import torch

    if getattr(model, "_require_grads_hook", None) is not None and hasattr(model, "disable_input_require_grads"):
        # transformers' activation checkpointing marks the embedding output requires_grad_() (for reentrant
        # checkpointing); dynamo refuses to return such a tensor, and non-reentrant checkpointing needs none
        model.disable_input_require_grads()
    options = {}
    if mode == "cudagraphs":
        options["mode"] = "reduce-overhead"
        mark_quant_state_static(model)
    return torch.compile(model, backend=backend or BACKEND, fullgraph=fullgraph, dynamic=False, **options)


def quant_state_tensors(model) -> list:
    """The tensors of bitsandbytes' 4-bit quant states (absmax, code, offset, nested absmax/code)."""
    import torch

    found = []
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None and not isinstance(state, (list, tuple, dict)):
            found += [t for t in (getattr(state, name, None) for name in ("absmax", "code", "offset"))
                      if isinstance(t, torch.Tensor)]
            state = getattr(state, "state2", None)
    return found


def mark_quant_state_static(model) -> int:
    """CUDA graphs copy every graph input that is not a parameter or buffer into their pool at each replay;
    the 4-bit quant states (absmax etc., ~1.4 % of the 4-bit weights' bytes) are plain attributes, so they
    are marked static here: no copy, no second copy in memory. Returns how many tensors were marked."""
    import torch

    tensors = quant_state_tensors(model)
    for tensor in tensors:
        torch._dynamo.mark_static_address(tensor)
    return len(tensors)


def batch_width(cfg) -> int:
    """The fixed row width of compiled training batches: the longest row the data pipeline can produce
    (causal-lm: source + target + eos; classification: max_source_length), rounded up to a multiple of 8."""
    longest = cfg.max_source_length if cfg.task == "classification" else \
        cfg.max_source_length + cfg.max_target_length + 1
    return -(-longest // 8) * 8


def fixed_width_collate(collate: Callable[[list], dict], width: int, pad_id: int) -> Callable[[list], dict]:
    """Wrap a right-padding collator so that every batch is exactly `width` tokens wide (one compiled shape):
    input_ids padded with `pad_id`, attention_mask with 0, token labels with -100 (ignored by the loss)."""
    import torch

    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}

    def collate_fixed(features: list) -> dict:
        batch = collate(features)
        have = batch["input_ids"].shape[1]
        if have > width:
            raise ValueError(f"a batch is {have} tokens wide, more than the compiled width {width}")
        for key, value in fill.items():
            tensor = batch.get(key)
            if isinstance(tensor, torch.Tensor) and tensor.ndim == 2 and tensor.shape[1] == have < width:
                batch[key] = torch.nn.functional.pad(tensor, (0, width - have), value=value)
        return batch

    return collate_fixed


def prepare(cfg, model, collate, tokenizer, *, processes: int = 1, log=None):
    """For tuning/train.py: (mode, the callable to run as the model, the collator to use) for `cfg.compile`."""
    mode = resolve_mode(cfg.compile, method=cfg.method, task=cfg.task, steps=cfg.max_steps, processes=processes)
    forward = compile_model(model, mode)
    if mode != "off":
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = batch_width(cfg)
        collate = fixed_width_collate(collate, width, pad_id)
        if log is not None:
            log(f"compile: {mode}; batches padded to {width} tokens; the first step includes the compile time")
    return mode, forward, collate


def step_begin(mode: str) -> None:
    """Call before each compiled forward: tells CUDA-graph trees that the last replay's outputs are consumed."""
    if mode == "cudagraphs":
        import torch

        torch.compiler.cudagraph_mark_step_begin()


def materialize_grads(params) -> None:
    """Give every trainable parameter a zero gradient buffer before a step's first backward.

    With CUDA graphs the backward's outputs live in the graph's memory pool and are overwritten by the next
    replay; autograd would otherwise adopt the first micro-batch's gradient tensor as `.grad` itself, and the
    second replay would overwrite it. With a buffer in place every micro-batch is added into it instead.
    """
    import torch

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
