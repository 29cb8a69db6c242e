"""The environment variables tasktune reads, checked as flags are: a value that is not a number in range is a
ConfigError naming the variable (a junk RANK was a ValueError traceback, TASKTUNE_SWITCH_INTERVAL=nan aborted the
interpreter in take_gil)."""

from __future__ import annotations

import math
import os

from .errors import ConfigError


def env_int(name: str, default: int, low: int = 0, high: int = 1 << 31) -> int:
    """$name as an integer in low..high (unset or empty: `default`)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw[:40]!r}: expected an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"environment variable {name}={value}: expected {low} to {high}")
    return value


def env_float(name: str, default: float | None, low: float, high: float) -> float | None:
    """$name as a finite number in low..high (unset or empty: `default`)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw[:40]!r}: expected a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"environment variable {name}={raw[:40]}: expected a number from {low:g} to {high:g}")
    return value


def launched_rank() -> int:
    """This process's rank in a multi-process launch (torchrun / accelerate set RANK and WORLD_SIZE); 0 when
    the launch has one process, whatever a stray RANK says (RANK=1 alone switched off the run lock)."""
    world = env_int("WORLD_SIZE", 1, 1)
    rank = env_int("RANK", 0, 0)
    if world > 1 and rank >= world:
        raise ConfigError(f"environment variables RANK={rank} and WORLD_SIZE={world}: the rank must be below the size")
    return rank if world > 1 else 0
