"""An adapter's saved tensors, read and checked before any of them reaches a model: the one reader behind every
method's load (prefix, encoder, BitFit). A file another program or hand wrote can hold what `tasktune train`
never does: NaN or infinite values (a NaN prefix answered garbage with exit 0), integer or boolean tensors, or
tensors nobody asked for."""

from __future__ import annotations

from pathlib import Path

import torch

from tasktune.errors import ConfigError


def read_tensors(path: Path, expected: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path`: ConfigError naming the file (and the tensor) when it is
    missing, unreadable, holds a tensor that is not floating point or not finite, or (given `expected`) holds
    other names than those."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConfigError(f"{path}: missing adapter weights")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on truncated or corrupt files
        raise ConfigError(f"{path}: unreadable safetensors file (truncated or corrupt?): {exc}") from None
    if expected is not None and set(tensors) != expected:
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise ConfigError(f"{path}: expected the tensors {sorted(expected)}"
                          + (f"; unexpected: {extra[:5]}" if extra else "") + (f"; missing: {missing}" if missing else ""))
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ConfigError(f"{path}: tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')}; adapter "
                              f"weights are floating point")
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ConfigError(f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s); the adapter is "
                              f"damaged (train it again, or resume from an earlier checkpoint)")
    return tensors


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Each tensor's shape in the safetensors file `path`, read from its header alone (no tensor data)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:  # SafetensorError on a truncated or corrupt header
        raise ConfigError(f"{path}: unreadable safetensors file (truncated or corrupt?): {exc}") from None


def check_floating_header(path: Path) -> None:
    """ConfigError naming `path` and the tensor when its header gives a tensor that is not floating point (read
    from the header alone: a whole model's file is not loaded twice)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
    except Exception as exc:  # SafetensorError on a truncated or corrupt header
        raise ConfigError(f"{path}: unreadable safetensors file (truncated or corrupt?): {exc}") from None
    for name, dtype in sorted(dtypes.items()):
        if not dtype.startswith(("F", "BF")):  # F64/F32/F16/BF16/F8_*; not I*, U8, BOOL
            raise ConfigError(f"{path}: tensor {name!r} is {dtype}; adapter weights are floating point")
