"""`--train-weights auto|4bit|bf16`: train over a 4-bit base as loaded, or over its linears dequantised to bf16
once before the first step (issue 23; tuning/model/dequantize.py).

bitsandbytes dequantises every 4-bit weight on every call, in forward and again in backward: ~15 of the 6B GLM's
~41 ms of GPU work a graphed step. Dequantised once, the step runs plain GEMMs over the very values bitsandbytes
multiplies with (results differ only in the sums' rounding order): on an H100 at 4 x 64/64 with CUDA graphs and no
checkpointing, 43.2 -> 33.0 ms a step, at ~3.8x the weights' memory (3.77 -> 14.47 GiB; benchmarks/RESULTS.md, dq23).
The saved adapter and the run's base are unchanged: eval and serve load the 4-bit base as usual.

`auto` dequantises when all of these hold, else keeps 4-bit:
- the base was loaded 4-bit and the device is CUDA (on a CPU nothing was measured);
- the method is tasktune's prefix (ptuning-v2, prefix; causal-lm): PEFT's k-bit preparation would cast the bf16
  copies to fp32, and the other methods were not measured;
- the step's memory estimate (tuning/training/memory.py) with the checkpointing already chosen for the 4-bit
  weights, plus the bytes the copies add, fits the same budget (`--max-memory`, else the device's free memory).
  So dequantising never costs checkpointing: the memory goes to less recomputation first.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasktune.errors import ConfigError
from tasktune.tuning.training import memory

MODES = ("auto", "4bit", "bf16")
#: methods (causal-lm) whose training can run over dequantised copies
METHODS = ("ptuning-v2", "prefix")
GIB = memory.GIB


@dataclass(frozen=True)
class WeightsChoice:
    """What the base's linears are during training, and why."""

    mode: str  # "4bit", "bf16" (dequantised once), "as-loaded" (the base is not 4-bit: nothing to choose)
    requested: str  # the flag's value
    reason: str = ""
    added_bytes: int = 0  # what dequantising adds (4-bit bases)
    estimate_bytes: int | None = None  # the step's estimated peak with these weights
    budget_bytes: int | None = None

    def describe(self) -> str:
        """One line for the log, e.g. "base weights: bf16, dequantised once (+10.7 GiB; est. 15.1 of 79.2 GiB free)"."""
        if self.mode == "bf16":
            text = f"base weights: bf16, dequantised once (+{self.added_bytes / GIB:.1f} GiB"
            if self.estimate_bytes is not None and self.budget_bytes is not None:
                text += f"; est. {self.estimate_bytes / GIB:.1f} of {self.budget_bytes / GIB:.1f} GiB"
            return text + ")"
        return f"base weights: {self.mode} ({self.reason})"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "requested": self.requested, "reason": self.reason,
                "added_bytes": self.added_bytes,
                "estimate_gib": None if self.estimate_bytes is None else round(self.estimate_bytes / GIB, 3),
                "budget_gib": None if self.budget_bytes is None else round(self.budget_bytes / GIB, 3)}


def choose(requested: str, *, quant: int | None, method: str, task: str, cuda: bool,
           checkpointing: memory.Choice, added_bytes: int) -> WeightsChoice:
    """The weights of this run (module docstring): `checkpointing` is the plan's choice for the 4-bit weights,
    with its estimate and budget (None on a CPU); `added_bytes` what dequantising would add
    (tuning/model/dequantize.added_bytes)."""
    if requested not in MODES:
        raise ConfigError(f"--train-weights {requested!r}: choose one of {', '.join(MODES)}")
    if quant != 4:
        why = "the base is not 4-bit: nothing to dequantise" if requested == "bf16" else "the base is not 4-bit"
        return WeightsChoice("as-loaded", requested, why)
    eligible = method in METHODS and task == "causal-lm"
    if requested == "bf16" and not eligible:
        raise ConfigError(f"--train-weights bf16 works with --method {' or '.join(METHODS)} (causal-lm), not "
                          f"--method {method} --task {task}: PEFT's 4-bit preparation would cast the dequantised "
                          "copies to fp32; use --train-weights 4bit (or auto)")
    if requested == "4bit":
        return WeightsChoice("4bit", requested, "--train-weights 4bit")
    budget = checkpointing.budget_bytes
    need = None if checkpointing.estimate_bytes is None else checkpointing.estimate_bytes + added_bytes
    if requested == "bf16":
        if need is not None and checkpointing.budget_source == "--max-memory" and need > budget:
            raise ConfigError(f"--max-memory {budget / GIB:g}: --train-weights bf16 needs an estimated "
                              f"{need / GIB:.2f} GiB (the dequantised weights add {added_bytes / GIB:.2f} GiB); "
                              "use --train-weights auto or 4bit, or raise --max-memory")
        return WeightsChoice("bf16", requested, "--train-weights bf16", added_bytes, need, budget)
    if not eligible:
        return WeightsChoice("4bit", requested, f"auto: --method {method} trains over the 4-bit linears")
    if not cuda or need is None:
        return WeightsChoice("4bit", requested, "auto on a CPU")
    if need <= budget * (1 - memory.HEADROOM):
        return WeightsChoice("bf16", requested, "auto: fits", added_bytes, need, budget)
    return WeightsChoice("4bit", requested,
                         f"auto: dequantised copies (+{added_bytes / GIB:.1f} GiB) would need an estimated "
                         f"{need / GIB:.1f} GiB of {budget / GIB:.1f}", added_bytes, need, budget)
