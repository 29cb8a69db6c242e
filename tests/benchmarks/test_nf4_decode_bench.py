"""benchmarks/nf4_decode_bench.py on CPU: the decode kernels of benchmarks/nf4_triton.py, interpreted by Triton, give
bitsandbytes' dequantised product (slow: the interpreter takes about a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "nf4_decode_bench.py"


@pytest.mark.slow
def test_decode_kernels_interpreted_match_bitsandbytes():
    pytest.importorskip("triton")
    pytest.importorskip("bitsandbytes")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check-cpu"], capture_output=True, text=True, env=env,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check-cpu: passed" in proc.stdout
