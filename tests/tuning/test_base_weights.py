"""--train-weights (tuning/training/base_weights.py): when a 4-bit base is dequantised once for training, and that
a run over the dequantised copies trains the prefix it would over the 4-bit linears."""

from __future__ import annotations

import json

import pytest
import torch

from tasktune.errors import ConfigError
from tasktune.tuning.model.dequantize import added_bytes
from tasktune.tuning.model.load import load_model
from tasktune.tuning.training import base_weights, memory
from tasktune.tuning.training.train import fit
from tests.tuning.runs import fast_config, write_data

GIB = memory.GIB


def _checkpointing(estimate_gib=None, budget_gib=None, source="free on cuda:0", mode="none"):
    est = None if estimate_gib is None else int(estimate_gib * GIB)
    budget = None if budget_gib is None else int(budget_gib * GIB)
    return memory.Choice(mode, "auto", est, budget, source if budget_gib else "")


def _choose(requested="auto", *, quant=4, method="ptuning-v2", task="causal-lm", cuda=True, added_gib=10.7,
            **checkpointing):
    checkpointing.setdefault("estimate_gib", 6.4)
    checkpointing.setdefault("budget_gib", 79.0)
    return base_weights.choose(requested, quant=quant, method=method, task=task, cuda=cuda,
                               checkpointing=_checkpointing(**checkpointing), added_bytes=int(added_gib * GIB))


def test_auto_dequantises_when_the_copies_fit_beside_the_chosen_checkpointing():
    chosen = _choose()
    assert chosen.mode == "bf16" and chosen.estimate_bytes == int(6.4 * GIB) + int(10.7 * GIB)
    assert "dequantised once (+10.7 GiB; est. 17.1 of 79.0 GiB)" in chosen.describe()


@pytest.mark.parametrize("budget_gib, mode", [(17.0, "4bit"), (17.5, "bf16")])
def test_auto_keeps_4bit_where_the_copies_do_not_fit(budget_gib, mode):
    """6.4 + 10.7 = 17.1 GiB, which needs 1 % headroom: 17.0 keeps 4-bit, 17.5 dequantises."""
    chosen = _choose(budget_gib=budget_gib, source="--max-memory")
    assert chosen.mode == mode
    if mode == "4bit":
        assert "would need an estimated 17.1 GiB of 17.0" in chosen.describe()


@pytest.mark.parametrize("change, reason", [
    ({"cuda": False, "estimate_gib": None, "budget_gib": None}, "auto on a CPU"),
    ({"method": "lora"}, "--method lora trains over the 4-bit linears"),
    ({"method": "qlora"}, "--method qlora"),
])
def test_auto_keeps_4bit_off_a_gpu_and_for_other_methods(change, reason):
    chosen = _choose(**change)
    assert chosen.mode == "4bit" and reason in chosen.reason


def test_a_base_that_is_not_4bit_has_nothing_to_dequantise():
    assert _choose(quant=None).mode == "as-loaded"
    assert _choose(quant=8).mode == "as-loaded"
    assert "nothing to dequantise" in _choose("bf16", quant=None).describe()


def test_explicit_modes():
    assert _choose("4bit").mode == "4bit"
    assert _choose("bf16", cuda=False, estimate_gib=None, budget_gib=None).mode == "bf16"  # asked for on a CPU
    with pytest.raises(ConfigError, match="--train-weights bf16 works with --method ptuning-v2 or prefix"):
        _choose("bf16", method="lora")
    with pytest.raises(ConfigError, match=r"--max-memory 8: --train-weights bf16 needs an estimated 17\.10 GiB"):
        _choose("bf16", budget_gib=8.0, source="--max-memory")
    with pytest.raises(ConfigError, match="--train-weights 'fp8'"):
        _choose("fp8")


def test_added_bytes_of_the_tiny_4bit_base(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    assert added_bytes(load_model(tiny_model_dir("glm"))) == 0
    model = load_model(tiny_model_dir("glm"), quantization_bit=4)
    linears = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    dense = sum(m.in_features * m.out_features * 2 for m in linears)
    packed = sum(m.weight.data.numel() * m.weight.data.element_size() for m in linears)
    assert added_bytes(model) == dense - packed and packed * 3 < dense


def test_a_run_over_dequantised_weights_trains_the_same_prefix(tiny_model_dir, tmp_path):
    """The tiny base loaded 4-bit on the CPU, trained 2 steps over its 4-bit linears and over their dequantised
    copies: the run record says which, and the trained prefixes agree (the same init, the same weight values)."""
    pytest.importorskip("bitsandbytes")
    data = write_data(tmp_path / "data")
    prefixes, records = {}, {}
    for weights in ("4bit", "bf16"):
        cfg = fast_config(tiny_model_dir("glm"), data, tmp_path / weights, quantization_bit="4", max_steps=2,
                          train_weights=weights, compile="off", bf16="false", save_steps=100)
        result = fit(cfg, log=lambda line: None)
        records[weights] = json.loads((result.run_dir / "tasktune_run.json").read_text())
        from safetensors.torch import load_file

        (state,) = [load_file(p) for p in result.run_dir.glob("**/*.safetensors") if "checkpoint" not in str(p)]
        prefixes[weights] = next(iter(state.values()))
    assert records["4bit"]["base_weights"]["mode"] == "4bit"
    assert records["bf16"]["base_weights"]["mode"] == "bf16" and records["bf16"]["base_weights"]["added_bytes"] > 0
    assert records["bf16"]["config"]["train_weights"] == "bf16"
    # exact on this machine (bitsandbytes' CPU path dequantises and multiplies in fp32 too); a CPU kernel that
    # rounds otherwise may move them by far less than the prefix's scale (~3.5) that a different init would
    torch.testing.assert_close(prefixes["bf16"], prefixes["4bit"], rtol=0, atol=1e-3)
