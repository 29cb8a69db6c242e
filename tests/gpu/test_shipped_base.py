"""The shipped tiny base (templates/demo/tiny-glm) is what `make tiny-model` builds on a GPU: a rebuild gives the same
tokenizer and model config byte for byte, and its weights (not bit-identical: GPU kernels) P-tune to the same
quality as the shipped ones, each with the demo's recipe on the same GPU. The comparison is by metrics, as issue 22
allows where bytes cannot be reproduced; about 6 minutes on an H100."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tasktune
from tasktune.tuning.tiny.build import build_tiny_model

SHIPPED = tasktune.TEMPLATES / "demo" / "tiny-glm"
DEMO_CONFIG = tasktune.TEMPLATES / "demo" / "train-tiny.yaml"
SAME_BYTES = ("tokenizer.json", "tokenizer_config.json")
TOLERANCE = 5.0  # exact-match points between two GPU builds of one seed (sweeps 16-18: ~2, at most ~5)


def assert_same_recipe(rebuilt: Path, shipped: Path) -> None:
    """The tokenizer byte for byte and the same model configuration (as transformers reads it: the version that
    wrote config.json, and the defaults it spelt out, differ between transformers releases)."""
    from transformers import AutoConfig

    differ = [name for name in SAME_BYTES if (rebuilt / name).read_bytes() != (shipped / name).read_bytes()]
    assert not differ, f"the rebuild's {differ} differ from {shipped}'s: the recipe changed"
    ours, theirs = (AutoConfig.from_pretrained(d).to_dict() for d in (rebuilt, shipped))
    for config in (ours, theirs):
        config.pop("transformers_version", None), config.pop("_name_or_path", None)
    assert ours == theirs


def _tasktune(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tasktune", *args], check=True)


def _tuned_exact_match(model: Path, data: Path, run: Path) -> dict[str, float]:
    """The demo's P-tuning and eval on `model`: exact match per step, and over the argument and summary records.
    Run as the CPU demo runs it: unquantised, fp32, eager. On an H100 (2026-12-06) every recipe scored low here
    (fp32 eager: arguments 68 %, summaries 58 %; NF4 73.6 / 55.6 %; bf16 compiled 84.7 / 56.0 %), shipped and
    rebuilt bases alike: `tasktune eval` on CUDA prefills into a static cache, and the prefix's mask read
    transformers' "no mask" (a batch without padding) bottom-right, so those batches saw later prompt tokens
    (fixed in tuning/model/prefix.py `_causal_mask`; tests/tuning/test_prefix.py; benchmarks/RESULTS.md, "the
    GPU gap is in evaluation"). A GPU-trained prefix scored 100 / 90.7 % evaluated on the CPU."""
    _tasktune("train", "--config", str(DEMO_CONFIG), "--model", str(model), "--data", str(data), "--out", str(run),
              "--quantization-bit", "none", "--bf16", "false", "--compile", "off")
    _tasktune("eval", str(run))
    steps = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))["tuned"]["per_step"]
    both = [steps[k] for k in ("arguments", "summary")]
    result = {k: v["exact_match"] for k, v in steps.items()}
    result["args+summary"] = sum(s["exact_match"] * s["n"] for s in both) / sum(s["n"] for s in both)
    return result


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_gpu_rebuild_of_the_shipped_base_tunes_as_well(tmp_path):
    data = tmp_path / "data"
    _tasktune("data", str(tasktune.TEMPLATES / "grid" / "spec.yaml"), "--out", str(data), "--seed", "42")
    rebuilt = build_tiny_model("grid", tmp_path / "tiny-glm", seed=42, device="cuda", progress=False)
    assert_same_recipe(rebuilt, SHIPPED)
    shipped = _tuned_exact_match(SHIPPED, data, tmp_path / "run-shipped")
    ours = _tuned_exact_match(rebuilt, data, tmp_path / "run-rebuilt")
    print("shipped", shipped, "rebuilt", ours)
    assert ours["args+summary"] >= shipped["args+summary"] - TOLERANCE, (ours, shipped)
    # No absolute floor for the arguments here: on an H100 the demo's recipe, fp32 and eager as on the CPU, reached
    # arguments 68.1 %, summaries 57.9 % on the rebuild (2026-12-06, benchmarks/results/issue22/), against 92.9 %
    # overall for the same recipe on a CPU (the demo's own test); the gap is open (RESULTS.md, issue 22).
    assert ours["greet"] >= 90.0, ours
