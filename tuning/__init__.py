"""tasktune.tuning: tiny-model, train, eval, chat (see the modules).

Importing it pins two process-wide things before torch computes anything: ATen's CPU kernels (below) and a filter
for one bitsandbytes warning."""

import logging as _logging
import os as _os
import platform as _platform


def _pin_cpu_kernels() -> None:
    """ATen's CPU kernels for AVX2 on every x86-64 CPU that has it, also where AVX-512 is there: softmax,
    log_softmax and attention (SDPA) sum their exponentials in an order set by the vector width, so an AVX-512
    machine and an AVX2 one trained different bits from the same seed (measured: the tiny base's weights and the
    demo's P-tuning; benchmarks/RESULTS.md, "make demo from a fresh clone"). Pinned, the CPU demo gives the same
    answers on both. An ATEN_CPU_CAPABILITY the user set is kept; torch reads it at its first CPU op, so this holds
    whenever tasktune.tuning is imported before torch computes (the CLI and the API are)."""
    if _platform.machine().lower() not in ("x86_64", "amd64"):
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return
    if " avx2" in flags:
        _os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")


def _quiet_bitsandbytes_cpu_kernel(record: _logging.LogRecord) -> bool:
    """False for bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning: peft imports
    bitsandbytes whenever it is installed, and on a CPU with AVX512-BF16 that import tries to fetch an optional 4-bit
    kernel from the Hugging Face hub. Nothing the user can act on (4-bit on a CPU uses bitsandbytes' own fallback;
    the demo never quantizes), so it is dropped; every other bitsandbytes message passes."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


_pin_cpu_kernels()
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_quiet_bitsandbytes_cpu_kernel)
