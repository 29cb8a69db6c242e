"""`--gradient-checkpointing auto|none|full|every-k` and `--max-memory GIB`: checkpoint only as many decoder layers
as the memory needs (issue 23).

Full checkpointing (every layer recomputes its forward in backward) made the 6B eager step 0.60x the PEFT recipe;
none is 1.16x but needs 2 GiB more at batch 4 x 64/64 (benchmarks/RESULTS.md). `auto` estimates the step's peak
memory before the first step for none, every k-th layer (k = L .. 2: 1, 2, ... L/2 layers checkpointed) and full,
and takes the least checkpointing whose estimate fits the budget: `--max-memory` GiB (a shared card), or what this
process holds plus what the device has free (`torch.cuda.mem_get_info`). On the CPU `auto` is full (today's
behaviour: memory is rarely the limit there and no CPU step time was measured that says otherwise).

The estimate (bytes; T = batch x padded width, the micro-batch's tokens; L layers, C of them checkpointed):

    weights (measured: CUDA bytes allocated once the base is loaded)
    + trainable parameters x 16 (fp32 value, gradient, AdamW's two moments)
    + T x [ (L - C) x a                      every layer that keeps its activations
            + C x (2 x hidden x e/2)         the input each checkpointed layer keeps
            + (C > 0) x a                    one layer recomputed in backward at a time
            + C x compiled x x_c x a         torch.compile's graphs keep more per checkpointed layer
            + vocab x HEAD_BYTES x e/2 ]     logits, their fp32 copy for the loss and its gradient

with a = ACT_BYTES x (hidden + intermediate) x e/2 the activations a decoder layer keeps per token and e the
activation element size (2: bf16 autocast; 4: fp32). The constants are fitted to the 6B GLM measurements
(hidden 4096, FFN 13696, vocab 65024, 28 layers, 4-bit base 3.77 GiB + a 1.8M-parameter prefix; batch 4 x 64/64):
4.32 GiB allocated with full checkpointing, 6.41 GiB with none, 5.16 GiB full under CUDA graphs; they predict
every-2nd 5.40 GiB (measured 5.37), and at 4 x 256/256 none 14.0 (13.52), every-2nd 9.98 (9.65), full 5.64 (5.79).
Methods that keep more per layer than a prefix (LoRA saves each adapted linear's input) will use somewhat more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tasktune.errors import ConfigError
from tasktune.tuning.model.layers import decoder_layers

GIB = 2 ** 30
#: activations a decoder layer keeps per token, bytes per (hidden + intermediate) unit in bf16: the 6B figures'
#: none-full difference, 2.09 GiB = (27 x a - 28 x 8 KiB) x 512 tokens -> a = 170.8 kB = 9.60 x 17,792
ACT_BYTES = 9.60
#: logits per token: bytes per vocabulary entry in bf16 (bf16 logits, fp32 copy, gradient): the rest of 4.32 GiB
#: (0.33 GiB at 512 tokens = 10.7 x 65,024 per token)
HEAD_BYTES = 10.7
#: torch.compile (on, cudagraphs) with full checkpointing: 5.16 vs 4.32 GiB at 512 tokens (9.12 vs 5.79 GiB at
#: 2,048): +0.37 a per checkpointed layer and token (the compiled graphs save some recomputable values)
COMPILED_EXTRA = 0.37
#: `--compile eager-graphs` (dynamo's cudagraphs backend, no inductor) hands the decoder layers' weights to its graphs
#: as plain inputs, and CUDA-graph trees copy such inputs into their pool: on an H100 (2026-12-08, 6B GLM, 4 x 64/64,
#: no checkpointing) its peak was the eager peak + the layers' weights (10.6 GiB as bf16 copies, 2.7 GiB packed
#: 4-bit) + ~0.7 GiB, i.e. +0.27 a per layer and token (`eager_graphs_extra`)
EAGER_GRAPHS_EXTRA = 0.27
#: the optimizer's bytes per trainable parameter: fp32 value, gradient, exp_avg, exp_avg_sq
OPTIMIZER_BYTES = 16
#: auto needs the estimate to stay this far below the budget (the estimate's error on the measured cases: <= 4 %)
HEADROOM = 0.01
def checkpointed_layers(mode: str, layers: int) -> int:
    """How many of `layers` decoder layers `mode` ("none", "full", "every-K") checkpoints (layer i when i % K == 0)."""
    if mode == "none":
        return 0
    if mode == "full":
        return layers
    return math.ceil(layers / int(mode.split("-")[1]))


@dataclass(frozen=True)
class Sizes:
    """What the estimate needs to know about a model and a run."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    weights_bytes: int
    trainable: int
    tokens: int  # per micro-batch: batch x (padded) width
    element_bytes: int = 2  # activations: 2 under bf16 autocast, 4 in fp32


def estimate(sizes: Sizes, mode: str, *, compiled: bool = False) -> int:
    """Estimated peak bytes allocated by one training step with checkpointing `mode` (module docstring)."""
    scale = sizes.element_bytes / 2
    act = activation_bytes(sizes.hidden, sizes.intermediate, sizes.element_bytes)
    c = checkpointed_layers(mode, sizes.layers)
    per_token = ((sizes.layers - c) * act + c * 2 * sizes.hidden * scale + (act if c else 0.0)
                 + (c * COMPILED_EXTRA * act if compiled else 0.0) + sizes.vocab * HEAD_BYTES * scale)
    return int(sizes.weights_bytes + OPTIMIZER_BYTES * sizes.trainable + sizes.tokens * per_token)


def eager_graphs_extra(model, *, tokens: int, element_bytes: int = 2, added_bytes: int = 0) -> int:
    """Bytes `--compile eager-graphs` adds to the eager step's peak (EAGER_GRAPHS_EXTRA): a copy of the decoder
    layers' weights as trained (their bytes now, plus `added_bytes` when they are dequantised first) and some
    graph-pool outputs per token."""
    layers = decoder_layers(model)
    weights = sum(t.numel() * t.element_size() for layer in layers for t in (*layer.parameters(), *layer.buffers()))
    c = decoder_config(model)
    act = activation_bytes(*widths(c), element_bytes) if c is not None else 0.0
    return int(weights + added_bytes + EAGER_GRAPHS_EXTRA * act * len(layers) * tokens)


def activation_bytes(hidden: int, intermediate: int, element_bytes: int) -> float:
    """a: the activations a decoder layer keeps per token (ACT_BYTES, scaled from bf16 to `element_bytes`)."""
    return ACT_BYTES * (hidden + intermediate) * element_bytes / 2


def candidates(layers: int) -> list[str]:
    """Modes from fastest (least recomputation) to leanest: none, every-K for K = layers .. 2, full."""
    modes, seen = ["none"], set()
    for k in range(layers, 1, -1):
        c = checkpointed_layers(f"every-{k}", layers)
        if c not in seen and c < layers:
            seen.add(c)
            modes.append(f"every-{k}")
    return modes + ["full"]


@dataclass(frozen=True)
class Choice:
    """The checkpointing a run uses, and why."""

    mode: str  # none, full, every-K
    requested: str  # the flag's value
    estimate_bytes: int | None = None
    budget_bytes: int | None = None
    budget_source: str = ""  # "--max-memory", "free on cuda:0"

    def describe(self) -> str:
        """One line for the log, e.g. "checkpointing: every 2nd layer (est. 5.1 GiB of 5.5 allowed)"."""
        text = f"checkpointing: {describe_mode(self.mode)}"
        if self.estimate_bytes is not None and self.budget_bytes is not None:
            word = "allowed" if self.budget_source == "--max-memory" else "free"
            fits = "" if self.estimate_bytes <= self.budget_bytes else "; may not fit"
            text += (f" (est. {self.estimate_bytes / GIB:.1f} GiB of {self.budget_bytes / GIB:.1f} {word}"
                     f"{fits})")
        elif self.requested == "auto":
            text += " (auto on a CPU)"
        return text

    def to_dict(self) -> dict:
        return {"mode": self.mode, "requested": self.requested,
                "estimate_gib": None if self.estimate_bytes is None else round(self.estimate_bytes / GIB, 3),
                "budget_gib": None if self.budget_bytes is None else round(self.budget_bytes / GIB, 3),
                "budget": self.budget_source or None}


def describe_mode(mode: str) -> str:
    if mode == "none":
        return "none"
    if mode == "full":
        return "every layer"
    k = int(mode.split("-")[1])
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"every {k}{suffix} layer"


def choose(sizes: Sizes, budget_bytes: int, *, compiled: bool = False, source: str = "--max-memory") -> Choice:
    """The least checkpointing whose estimate fits `budget_bytes` (less HEADROOM). Nothing fitting: a ConfigError
    under --max-memory (naming the full-checkpointing estimate); full otherwise (the device may still have enough:
    its free memory moves)."""
    allowed = budget_bytes * (1 - HEADROOM)
    for mode in candidates(sizes.layers):
        need = estimate(sizes, mode, compiled=compiled)
        if need <= allowed:
            return Choice(mode, "auto", need, budget_bytes, source)
    need = estimate(sizes, "full", compiled=compiled)
    if source == "--max-memory":
        raise ConfigError(f"--max-memory {budget_bytes / GIB:g}: even full checkpointing needs an estimated "
                          f"{need / GIB:.2f} GiB (weights {sizes.weights_bytes / GIB:.2f} GiB, "
                          f"{sizes.tokens} tokens a micro-batch); raise --max-memory or lower "
                          f"--per-device-train-batch-size / the source and target lengths")
    return Choice("full", "auto", need, budget_bytes, source)


# -- the model and the device ------------------------------------------------------------------------------------

def trainable_estimate(cfg, model_config) -> int:
    """Trainable parameters `cfg.method` will add or unfreeze (before it is attached): exact for the prefix
    methods, the order of magnitude for the others (their optimizer state is small next to activations but
    for `full`)."""
    get = lambda name, default=0: getattr(model_config, name, None) or default  # noqa: E731
    hidden, layers = get("hidden_size"), get("num_hidden_layers")
    heads = get("num_attention_heads", 1)
    head_dim = get("head_dim") or hidden // max(heads, 1)
    kv = get("num_key_value_heads") or get("multi_query_group_num") or heads
    p = cfg.pre_seq_len
    if cfg.method in ("ptuning-v2", "prefix"):
        kv_width = 2 * layers * kv * head_dim
        if cfg.prefix_projection:
            return p * hidden + hidden * cfg.prefix_hidden_size + cfg.prefix_hidden_size * kv_width
        return p * kv_width
    if cfg.method in ("lora", "qlora"):  # q, k, v, o + the MLP's three projections, each r x (in + out)
        return layers * cfg.lora_r * (4 * 2 * hidden + 3 * (hidden + get("intermediate_size", 4 * hidden)))
    if cfg.method == "full":
        return get("vocab_size") * hidden * 2 + layers * (4 * hidden * hidden + 3 * hidden
                                                          * get("intermediate_size", 4 * hidden))
    return (cfg.num_virtual_tokens or p) * hidden + layers * hidden * 8  # prompt tokens, p-tuning, bitfit biases


def model_sizes(model, cfg, *, tokens: int, element_bytes: int, weights_bytes: int | None = None) -> Sizes:
    """`Sizes` of a loaded base (its config; weights measured by the caller on CUDA, else parameter bytes)."""
    c = decoder_config(model)
    if weights_bytes is None:
        weights_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    hidden, intermediate = widths(c)
    return Sizes(layers=getattr(c, "num_hidden_layers", None) or len(decoder_layers(model)) or 1,
                 hidden=hidden, intermediate=intermediate, vocab=c.vocab_size, weights_bytes=int(weights_bytes), trainable=trainable_estimate(cfg, c),
                 tokens=tokens, element_bytes=element_bytes)


def decoder_config(model):
    """The config that holds the decoder's sizes (multimodal configs keep them apart, in `text_config`); None for a
    module without a config."""
    c = getattr(model, "config", None)
    return getattr(c, "text_config", None) or c


def widths(c) -> tuple[int, int]:
    """(hidden size, FFN size) of a decoder config (FFN 4 x hidden where the config names none)."""
    return c.hidden_size, getattr(c, "intermediate_size", None) or 4 * c.hidden_size


def device_budget(device, max_memory_gib: float) -> tuple[int, str]:
    """(bytes this process may use on `device`, where that came from): --max-memory when given (> 0), else what
    it holds (reserved) plus what the device has free."""
    import torch

    if max_memory_gib and max_memory_gib > 0:
        return int(max_memory_gib * GIB), "--max-memory"
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device)), f"free on {device}"


def resolve(requested: str, model, cfg, *, device, tokens: int, element_bytes: int = 2,
            compiled: bool = False) -> Choice:
    """The checkpointing of this run: `requested` as is, or (auto) chosen by `choose` on a CUDA device; on a CPU
    auto is full. `--max-memory` with an explicit mode checks that mode's estimate too."""
    import torch

    if requested.startswith("every-"):  # every-100 on 6 layers checkpointed layer 0 alone, without a word
        layers = len(decoder_layers(model))
        if layers and int(requested.split("-")[1]) > layers:
            raise ConfigError(f"--gradient-checkpointing {requested}: the base has {layers} decoder layers, so it "
                              f"would checkpoint layer 0 alone; give every-K with K <= {layers}, full, none or auto")
    cuda = getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available()
    max_gib = float(getattr(cfg, "max_memory", 0.0) or 0.0)
    if not cuda:
        return Choice("full" if requested == "auto" else requested, requested)
    sizes = model_sizes(model, cfg, tokens=tokens, element_bytes=element_bytes,
                        weights_bytes=torch.cuda.memory_allocated(device))
    budget, source = device_budget(device, max_gib)
    if requested == "auto":
        return choose(sizes, budget, compiled=compiled, source=source)
    need = estimate(sizes, requested, compiled=compiled)
    if source == "--max-memory" and need > budget:
        raise ConfigError(f"--max-memory {max_gib:g}: --gradient-checkpointing {requested} needs an estimated "
                          f"{need / GIB:.2f} GiB; use --gradient-checkpointing auto (or full), or raise --max-memory")
    return Choice(requested, requested, need, budget, source)


def apply(model, mode: str) -> None:
    """Set `mode` on a transformers model: non-reentrant checkpointing of every K-th decoder layer (K = 1: full),
    through transformers' `activation_checkpointing_enable(every_n_layers=K)` where it exists (>= 5.2x), else
    the older `gradient_checkpointing_enable` and the per-layer flag set here."""
    if mode == "none":
        return
    every = 1 if mode == "full" else int(mode.split("-")[1])
    kwargs = {"use_reentrant": False}  # the frozen inputs need no grad; the prefix reaches each layer as a kwarg
    if hasattr(model, "activation_checkpointing_enable"):
        try:
            extra = {"every_n_layers": every} if every > 1 else {}
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **extra)
            return
        except TypeError:  # a model's own (remote-code) override without every_n_layers
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers 5.17 (the GPU image): the old name only
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if every > 1:
        for i, layer in enumerate(decoder_layers(model)):
            layer.gradient_checkpointing = i % every == 0
