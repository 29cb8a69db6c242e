"""The environment variables tasktune reads, checked as flags are (each with a `tasktune.flags.Range`): a value
that is not a number in range is a ConfigError naming the variable (a junk RANK was a ValueError traceback,
TASKTUNE_SWITCH_INTERVAL=nan aborted the interpreter in take_gil)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .errors import ConfigError
from .flags import Range

#: a process rank or count of a launch
RANKS = Range(int, 0, 1 << 31)


def env_number(name: str, default: Any, bound: Range) -> Any:
    """$name parsed and checked by `bound` (unset or empty: `default`)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return bound(raw)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"environment variable {name}={raw[:40]!r}: {exc}") from None


def launched_rank() -> int:
    """This process's rank in a multi-process launch (torchrun / accelerate set RANK and WORLD_SIZE); 0 when
    the launch has one process, whatever a stray RANK says (RANK=1 alone switched off the run lock)."""
    world = env_number("WORLD_SIZE", 1, Range(int, 1, RANKS.hi))
    rank = env_number("RANK", 0, RANKS)
    # read by accelerate (int(), a traceback on junk) and by the 4-bit device map; -1 is accelerate's "no launch"
    env_number("LOCAL_RANK", -1, Range(int, -1, RANKS.hi))
    if world > 1 and rank >= world:
        raise ConfigError(f"environment variables RANK={rank} and WORLD_SIZE={world}: the rank must be below the size")
    return rank if world > 1 else 0
