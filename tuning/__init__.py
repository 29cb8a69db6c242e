"""tasktune.tuning: tiny-model, train, eval, chat (see the modules)."""

import logging as _logging


def _quiet_bitsandbytes_cpu_kernel(record: _logging.LogRecord) -> bool:
    """False for bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning: peft imports
    bitsandbytes whenever it is installed, and on a CPU with AVX512-BF16 that import tries to fetch an optional 4-bit
    kernel from the Hugging Face hub. Nothing the user can act on (4-bit on a CPU uses bitsandbytes' own fallback;
    the demo never quantizes), so it is dropped; every other bitsandbytes message passes."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_quiet_bitsandbytes_cpu_kernel)
