"""P-tuning v2: trained key/value prefixes in front of every attention layer of a frozen causal LM.

Design (longer version in docs/prefix-design.md):
- `PrefixEncoder` turns the P virtual tokens into keys/values for every layer, flat in PEFT's PREFIX_TUNING
  layout (layer, key|value, kv head, head dim), so a checkpoint is PEFT's `prompt_embeddings` as is.
- `attach_prefix` switches the model to a wrapper attention function registered with transformers'
  `AttentionInterface` ("tasktune_prefix_sdpa" / "tasktune_prefix_eager"); the wrapper calls the model's own
  sdpa/eager attention after prepending the layer's prefix K/V (no rotary: the prefix has no position) and
  P always-visible mask columns (it builds the causal mask itself where sdpa passes None).
- A forward pre-hook on the model computes the prefix once per call and hands it down as the keyword
  `tasktune_prefix`; transformers forwards **kwargs from `XForCausalLM.forward` to the attention function, so
  plain forward, the HF Trainer and `generate()` all get it, and gradient checkpointing recomputes with it.
  The hook also does the per-call work once rather than in every layer (issue #6: the eager step is bound by
  kernel launches): one cast to the compute dtype, one batch expand, one split into per-layer keys/values
  (their backward is one stack, not a zero-filled select_backward + add per layer), and every layer shares
  one extended attention mask per call (`PrefixKV.mask`).
- The KV cache holds text tokens only: cache lengths, masks and `generate()` need no special handling.
- Text positions start at P (PEFT's convention): the hook adds P to `position_ids`, computing them from the
  attention-mask cumsum (left padding) or the cache length when absent.

Longer than 300 lines because the prefix encoder, its key/value layout and the attention wrapper that consumes it
must agree on one layout; they are kept side by side so that a change to one is seen next to the others.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from tasktune.errors import ConfigError

#: The forward keyword that carries the prefix from the model's pre-hook to the attention functions.
PREFIX_KWARG = "tasktune_prefix"
#: The forward keyword that replaces the attention function for one call (the server's decode attention).
ATTENTION_KWARG = "tasktune_attention"
#: Attention implementations we can wrap -> the name our wrapper is registered under.
WRAPPED_ATTENTION = {"sdpa": "tasktune_prefix_sdpa", "eager": "tasktune_prefix_eager"}
#: Attribute under which the encoder is registered on the model (so optimizers and `.to()` see it).
ENCODER_ATTR = "tasktune_prefix_encoder"


@dataclass
class PrefixConfig:
    """Options of the trainable prefix."""

    pre_seq_len: int = 128
    """Number of virtual tokens P prepended to every layer's keys/values."""
    prefix_projection: bool = False
    """Reparametrise the prefix through embedding -> Linear -> Tanh -> Linear (prefix-tuning variant)."""
    prefix_hidden_size: int = 512
    """Hidden width of the projection MLP (used only with prefix_projection)."""
    prefix_dropout: float = 0.0
    """Dropout on the prefix keys/values while training."""

    def __post_init__(self):
        if self.pre_seq_len < 1:
            raise ConfigError(f"pre_seq_len must be >= 1, got {self.pre_seq_len}")
        if self.prefix_projection and self.prefix_hidden_size < 1:
            raise ConfigError(f"prefix_hidden_size must be >= 1, got {self.prefix_hidden_size}")
        if not 0.0 <= self.prefix_dropout < 1.0:
            raise ConfigError(f"prefix_dropout must be in [0, 1), got {self.prefix_dropout}")


@dataclass(frozen=True)
class PrefixShape:
    """The key/value geometry of a model, as PEFT derives it (GQA: kv heads, not query heads)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def token_dim(self) -> int:
        """Width of one layer's key (or value) for one token: PEFT's `token_dim` under GQA."""
        return self.num_kv_heads * self.head_dim

    @property
    def width(self) -> int:
        """Width of one virtual token's flat vector: num_layers * 2 * token_dim."""
        return self.num_layers * 2 * self.token_dim


def read_prefix_shape(model_config) -> PrefixShape:
    """Layers, kv heads and head dim from a transformers config (same rules as peft's prompt-learning setup)."""
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return PrefixShape(num_layers=config.num_hidden_layers, num_kv_heads=kv_heads, head_dim=head_dim)


class PrefixEncoder(nn.Module):
    """P virtual tokens -> every layer's prefix keys and values, kept in fp32.

    `forward()` returns a tensor of shape (num_layers, 2, num_kv_heads, P, head_dim): `[l, 0]` is layer l's
    key prefix and `[l, 1]` its value prefix. `flat()` returns the (P, num_layers * 2 * kv_heads * head_dim)
    matrix PEFT saves as `prompt_embeddings` (the projection, if any, already applied).
    """

    def __init__(self, config: PrefixConfig, shape: PrefixShape):
        super().__init__()
        self.config, self.shape = config, shape
        if config.prefix_projection:
            self.embedding = nn.Embedding(config.pre_seq_len, shape.token_dim)
            self.transform = nn.Sequential(
                nn.Linear(shape.token_dim, config.prefix_hidden_size),
                nn.Tanh(),
                nn.Linear(config.prefix_hidden_size, shape.width),
            )
        else:
            self.embedding = nn.Embedding(config.pre_seq_len, shape.width)
            self.transform = None
        self.register_buffer("prefix_ids", torch.arange(config.pre_seq_len), persistent=False)

    def flat(self) -> torch.Tensor:
        """(P, width) keys/values of all layers, flat in PEFT's layout."""
        embedded = self.embedding(self.prefix_ids)
        return self.transform(embedded) if self.transform is not None else embedded

    def forward(self) -> torch.Tensor:
        s = self.shape
        # (P, L*2*H*D) -> (P, L, 2, H, D) -> (L, 2, H, P, D); flat index = ((l*2 + kv)*H + h)*D + d, as in peft.
        per_token = self.flat().view(self.config.pre_seq_len, s.num_layers, 2, s.num_kv_heads, s.head_dim)
        return per_token.permute(1, 2, 3, 0, 4)


def _causal_mask(q_len: int, kv_len: int, device, additive_dtype=None) -> torch.Tensor:
    """(1, 1, q, kv) causal mask, top-left aligned as sdpa's `is_causal`: query i sees text key j iff j <= i.

    It stands for the None mask transformers hands sdpa in place of `is_causal`, which it does only where top-left
    is right: kv == q (a prefill; top-left and bottom-right agree) or a prefill into an empty static cache, whose
    keys are the prompt's q followed by unwritten slots (transformers' sdpa then keeps the first q keys). Aligned
    bottom-right there, as before, every prompt token of a batch without padding saw the later prompt tokens and the
    empty slots: `tasktune eval` on CUDA (static cache) lost ~30 points on such batches (benchmarks/RESULTS.md)."""
    rows = torch.arange(q_len, device=device)[:, None]
    visible = (torch.arange(kv_len, device=device)[None, :] <= rows)[None, None]
    if additive_dtype is None:
        return visible
    return torch.zeros(visible.shape, dtype=additive_dtype, device=device).masked_fill(
        ~visible, torch.finfo(additive_dtype).min
    )


def extend_mask(mask, query: torch.Tensor, key: torch.Tensor, prefix_len: int, additive: bool,
                visible: torch.Tensor | None = None):
    """Prepend `prefix_len` prefix key columns to a 4D mask (bool: True = attend; additive: 0 = attend).

    `visible`: None (every row sees every prefix column), or a (batch, prefix_len) bool tensor saying which prefix
    columns each row sees (the server batches rows of different prefixes, and rows of the base model, which see
    none). A None mask means "plain causal" (sdpa fast path) or "all visible" (one query token); the first is
    materialised because with extra keys sdpa's top-left `is_causal` would be wrong.
    """
    q_len, kv_len = query.shape[-2], key.shape[-2]
    if mask is None:
        if q_len == 1 and visible is None:
            return None  # decoding one token: prefix, past and itself are all visible
        if q_len == 1:
            mask = torch.ones((1, 1, 1, kv_len), dtype=torch.bool, device=query.device)
            if additive:
                mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
        else:
            mask = _causal_mask(q_len, kv_len, query.device, query.dtype if additive else None)
    if visible is None:
        fill = True if mask.dtype == torch.bool else 0.0
        columns = torch.full((*mask.shape[:-1], prefix_len), fill, dtype=mask.dtype, device=mask.device)
    else:
        batch = visible.shape[0]
        mask = mask.expand(batch, *mask.shape[1:])
        seen = visible[:, None, None, :].expand(batch, mask.shape[1], mask.shape[2], prefix_len)
        columns = seen if mask.dtype == torch.bool else torch.zeros(
            seen.shape, dtype=mask.dtype, device=mask.device).masked_fill(~seen, torch.finfo(mask.dtype).min)
    return torch.cat([columns, mask], dim=-1)


class PrefixKV(dict):
    """What the hook hands to every layer for one forward call: per-layer prefix keys/values, already in the
    compute dtype and expanded to the batch, plus a cache of extended masks shared by the layers.

    A dict (keys "key", "value": tuples of (batch, kv_heads, P, head_dim) per layer; "masks": the cache;
    optional "visible": (batch, P) bool, which prefix columns each row sees, see `extend_mask`) so that
    torch.compile traces it as plain data.
    """

    def fresh(self) -> "PrefixKV":
        """The same keys/values with an empty mask cache, for another forward call (masks are per call)."""
        return PrefixKV({**self, "masks": {}})

    def layer(self, idx: int, batch: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self["key"][idx], self["value"][idx]
        if key.shape[0] != batch:  # a caller that reshaped the batch: expand the shared prefix again
            key, value = (t[:1].expand(batch, -1, -1, -1) for t in (key, value))
        if key.dtype != dtype:  # the hook's compute-dtype guess missed (e.g. fp32 rotary under autocast)
            key, value = key.to(dtype), value.to(dtype)
        return key, value

    def mask(self, mask, query: torch.Tensor, key: torch.Tensor, prefix_len: int, additive: bool):
        """`extend_mask`, computed once per forward call (all layers get the same mask or None)."""
        visible = self.get("visible")
        if torch.compiler.is_compiling():  # traced once per graph anyway; keep the graph free of side effects
            return extend_mask(mask, query, key, prefix_len, additive, visible)
        entry = ("none", query.shape[-2], key.shape[-2], query.dtype, additive) if mask is None else \
            ("mask", id(mask), query.dtype, additive)
        cached = self["masks"].get(entry)
        if cached is None or (mask is not None and cached[0] is not mask):
            cached = (mask, extend_mask(mask, query, key, prefix_len, additive, visible))  # holding `mask` keeps its id
            self["masks"][entry] = cached
        return cached[1]


def split_prefix(kv: torch.Tensor, batch: int, dtype) -> PrefixKV:
    """(num_layers, 2, kv_heads, P, head_dim) -> PrefixKV: one cast, one expand, one unbind per call."""
    kv = kv.to(dtype).unsqueeze(2).expand(-1, -1, batch, -1, -1, -1)  # (L, 2, B, H, P, D)
    keys, values = kv.unbind(1)
    return PrefixKV(key=keys.unbind(0), value=values.unbind(0), masks={})


def _base_attention(base: str, module: nn.Module):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "sdpa":
        return ALL_ATTENTION_FUNCTIONS["sdpa"]
    # "eager" is each modeling file's own function (transformers' default when no interface is registered).
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as eager
    return eager


def _make_prefixed_attention(base: str):
    def prefixed_attention(module, query, key, value, attention_mask, **kwargs):
        prefix = kwargs.pop(PREFIX_KWARG, None)
        attend = kwargs.pop(ATTENTION_KWARG, None) or _base_attention(base, module)
        if prefix is None:  # prefix disabled: exactly the base computation
            return attend(module, query, key, value, attention_mask, **kwargs)
        if not isinstance(prefix, PrefixKV):  # a raw (L, 2, H_kv, P, D) tensor: split it here
            prefix = split_prefix(prefix, query.shape[0], key.dtype)
        prefix_key, prefix_value = prefix.layer(module.layer_idx, query.shape[0], key.dtype)
        mask = prefix.mask(attention_mask, query, key, prefix_key.shape[-2], additive=(base == "eager"))
        key = torch.cat([prefix_key, key], dim=2)
        value = torch.cat([prefix_value, value], dim=2)
        return attend(module, query, key, value, mask, **kwargs)

    prefixed_attention.__name__ = f"prefixed_{base}_attention"
    return prefixed_attention


def register_attention() -> None:
    """Register our wrappers with transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for base, name in WRAPPED_ATTENTION.items():
        AttentionInterface.register(name, _make_prefixed_attention(base))
        # The mask is built as for the base implementation (text keys only); the wrapper extends it.
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])


def _set_attention(model, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except (AttributeError, ValueError, KeyError, ImportError):
        model.config._attn_implementation = name
    if model.config._attn_implementation != name:
        model.config._attn_implementation = name


class PrefixTuner:
    """A prefix attached to one model: holds the encoder, the hook and the on/off switch."""

    def __init__(self, model, config: PrefixConfig, encoder: PrefixEncoder, base_attention: str):
        self.model, self.config, self.encoder = model, config, encoder
        self.shape = encoder.shape
        self._base_attention = base_attention
        self._enabled = True
        self._dropout = nn.Dropout(config.prefix_dropout)
        self._forward_params = list(inspect.signature(model.forward).parameters)
        self._hook = model.register_forward_pre_hook(self._inject, with_kwargs=True)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the model as the plain base model inside the block (same weights, no prefix, no position shift)."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters() if p.requires_grad)

    def prefix(self) -> torch.Tensor:
        """(num_layers, 2, kv_heads, P, head_dim) fp32 keys/values, dropout applied while the model trains."""
        kv = self.encoder()
        if self.model.training and self.config.prefix_dropout > 0:
            kv = self._dropout(kv)
        return kv

    def _text_positions(self, kwargs: dict) -> torch.Tensor:
        """0-based positions of the tokens in this call: mask cumsum (left padding) or cache length."""
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs["inputs_embeds"]
        q_len = inputs.shape[1]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        return torch.arange(past, past + q_len, device=inputs.device).unsqueeze(0)

    def _inject(self, module, args, kwargs):
        if not self._enabled:
            return None
        if args:  # positional call, e.g. model(input_ids, attention_mask): name them
            kwargs.update(zip(self._forward_params, args))
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = self._text_positions(kwargs)
        # Text positions start after the prefix (PEFT: the prefix fills cache slots 0..P-1).
        kwargs["position_ids"] = positions + self.config.pre_seq_len
        inputs = kwargs.get("input_ids")
        batch = (inputs if inputs is not None else kwargs["inputs_embeds"]).shape[0]
        kwargs[PREFIX_KWARG] = split_prefix(self.prefix(), batch, self._compute_dtype())
        return (), kwargs

    def _compute_dtype(self) -> torch.dtype:
        """The dtype the attention keys will have: autocast's if on, else the hidden states' (embedding) dtype.
        A wrong guess costs one cast per layer (PrefixKV.layer), not correctness."""
        device_type = self.encoder.prefix_ids.device.type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.model.get_input_embeddings().weight.dtype

    def detach(self) -> None:
        """Remove the prefix: hook, attention wrapper and encoder; base parameters keep requires_grad=False."""
        self._hook.remove()
        _set_attention(self.model, self._base_attention)
        if getattr(self.model, ENCODER_ATTR, None) is self.encoder:
            delattr(self.model, ENCODER_ATTR)


def _attention_modules(model) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj")]


def attach_prefix(model, config: PrefixConfig) -> PrefixTuner:
    """Freeze `model`, add a trainable fp32 prefix encoder to it and route attention through the prefix."""
    current = model.config._attn_implementation or "eager"
    if current in WRAPPED_ATTENTION.values() or hasattr(model, ENCODER_ATTR):
        raise ConfigError("the model already has a prefix attached; call tuner.detach() first")
    if current not in WRAPPED_ATTENTION:
        raise ConfigError(
            f"attention implementation {current!r} cannot take a prefix; load the model with "
            "attn_implementation='sdpa' (default) or 'eager'"
        )
    shape = read_prefix_shape(model.config)
    layers = _attention_modules(model)
    uses_interface = getattr(model, "_can_set_attn_implementation", lambda: True)()
    if len(layers) != shape.num_layers or not uses_interface:
        # e.g. remote-code models with their own attention: the wrapper would never be called
        raise ConfigError(
            f"{type(model).__name__}: found {len(layers)} attention layers with layer_idx for "
            f"{shape.num_layers} configured, or its attention does not go through transformers' "
            "AttentionInterface; the prefix cannot reach it (use a transformers-native model class)"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    device = model.get_input_embeddings().weight.device
    encoder = PrefixEncoder(config, shape).to(device=device, dtype=torch.float32)
    model.add_module(ENCODER_ATTR, encoder)
    register_attention()
    _set_attention(model, WRAPPED_ATTENTION[current])
    return PrefixTuner(model, config, encoder, current)
