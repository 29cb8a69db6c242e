"""Plain torch methods that change the base's own weights: BitFit (the biases) and full fine-tuning."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tasktune.errors import ConfigError
from tasktune.tuning.model.tensors import check_floating_header, read_tensors

from .adapter import Adapter

BITFIT_FILE = "tasktune_bitfit.safetensors"
FULL_FILE = "tasktune_full.safetensors"
#: eval keeps a CPU copy of the base weights of a fully fine-tuned model up to this size, to answer as
#: the base from the same loaded model; above it, the base is loaded separately for the base pass.
FULL_COPY_LIMIT_BYTES = 2 << 30


def _bias_names(model) -> list[str]:
    return [name for name, _ in model.named_parameters() if name == "bias" or name.endswith(".bias")]


class BitFitAdapter(Adapter):
    """Only the biases train; the originals stay in a CPU copy (biases are tiny), swapped in by disabled()."""

    method = "bitfit"

    def __init__(self, model, names: list[str]):
        super().__init__(model)
        params = dict(model.named_parameters())
        self.names = names
        self.original = {n: params[n].detach().to("cpu", copy=True) for n in names}

    def parameters(self) -> list[nn.Parameter]:
        params = dict(self.model.named_parameters())
        return [params[n] for n in self.names if params[n].requires_grad]

    def _copy_in(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        previous = {}
        with torch.no_grad():
            for name, value in tensors.items():
                previous[name] = params[name].detach().to("cpu", copy=True)
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return previous

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        tuned = self._copy_in(self.original)
        try:
            yield self.model
        finally:
            self._copy_in(tuned)

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        from safetensors.torch import save_file

        params = dict(self.model.named_parameters())
        save_file({n: params[n].detach().to("cpu").contiguous() for n in self.names}, str(folder / BITFIT_FILE),
                  metadata={"format": "pt"})
        return [BITFIT_FILE]


def attach_bitfit(model) -> BitFitAdapter:
    names = _bias_names(model)
    if not names:
        cfg = model.config
        hints = {k: getattr(cfg, k) for k in ("attention_bias", "mlp_bias", "add_bias_linear", "add_qkv_bias")
                 if hasattr(cfg, k)}
        raise ConfigError(
            f"--method bitfit: {type(model).__name__} has no bias parameters"
            f"{' (' + ', '.join(f'{k}={v}' for k, v in hints.items()) + ')' if hints else ''}, so BitFit has "
            "nothing to train. Use a model with biases (e.g. Qwen2: q/k/v biases; BERT) or another --method.")
    for param in model.parameters():
        param.requires_grad_(False)
    params = dict(model.named_parameters())
    for name in names:
        params[name].data = params[name].data.float()  # train biases in fp32 whatever the base dtype
        params[name].requires_grad_(True)
    return BitFitAdapter(model, names)


def load_bitfit(model, folder: Path, is_trainable: bool) -> BitFitAdapter:
    tensors = read_tensors(folder / BITFIT_FILE)
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ConfigError(f"{folder / BITFIT_FILE}: biases {unknown[:3]} are not in {type(model).__name__}; "
                          "saved for a different base model")
    # every bias of the base, each of its shape: a file lacking some left those at the base's values (exit 0), and
    # one of another shape was a RuntimeError traceback from copy_
    missing = sorted(set(_bias_names(model)) - set(tensors))
    if missing:
        raise ConfigError(f"{folder / BITFIT_FILE}: lacks {len(missing)} of the {len(_bias_names(model))} biases of "
                          f"{type(model).__name__} ({', '.join(missing[:3])}); the file is incomplete, or was saved "
                          "for a different base model")
    for name, tensor in sorted(tensors.items()):
        if tensor.shape != params[name].shape:
            raise ConfigError(f"{folder / BITFIT_FILE}: tensor {name!r} has shape {list(tensor.shape)}, the base's "
                              f"bias has {list(params[name].shape)}; saved for a different base model")
    for param in model.parameters():
        param.requires_grad_(False)
    adapter = BitFitAdapter(model, sorted(tensors))
    adapter._copy_in(tensors)
    for name in adapter.names:
        params[name].requires_grad_(is_trainable)
    return adapter


class FullAdapter(Adapter):
    """Every weight trains; saved whole (safetensors). The base pass swaps in a CPU copy of the base
    weights when it is small enough, else it loads the base again (`reload_base`)."""

    method = "full"

    def __init__(self, model, original: dict[str, torch.Tensor] | None = None,
                 reload_base: Callable[[], nn.Module] | None = None):
        super().__init__(model)
        self.original, self.reload_base = original, reload_base

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        if self.original is not None:
            tuned = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.original)
            try:
                yield self.model
            finally:
                self.model.load_state_dict(tuned)
        elif self.reload_base is not None:
            base = self.reload_base()
            try:
                yield base
            finally:
                del base
        else:
            raise ConfigError("full fine-tuning: no copy of the base weights and no way to reload the base")

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        from safetensors.torch import save_model

        save_model(self.model, str(folder / FULL_FILE), metadata={"format": "pt"})
        return [FULL_FILE]


def attach_full(model) -> FullAdapter:
    for param in model.parameters():
        param.requires_grad_(True)
    return FullAdapter(model)


def load_full(model, folder: Path, is_trainable: bool, reload_base) -> FullAdapter:
    from safetensors.torch import load_model

    path = folder / FULL_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; not a folder saved by --method full")
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    original = ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if size <= FULL_COPY_LIMIT_BYTES else None)
    check_floating_header(path)  # integer weights were cast in without a word
    try:
        load_model(model, str(path), strict=True)
    except Exception as exc:  # shape/key mismatch or a corrupt file: its heading and first detail
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
        raise ConfigError(f"{path}: does not fit {type(model).__name__}: {' '.join(lines)[:600]}") from None
    bad = next((name for name, param in model.named_parameters() if not bool(torch.isfinite(param).all())), None)
    if bad is not None:  # (a NaN weight answered garbage with exit 0)
        raise ConfigError(f"{path}: tensor {bad!r} holds NaN or infinite values; the weights are damaged (train "
                          "again, or resume from an earlier checkpoint)")
    for param in model.parameters():
        param.requires_grad_(is_trainable)
    return FullAdapter(model, original, None if original is not None else reload_base)
