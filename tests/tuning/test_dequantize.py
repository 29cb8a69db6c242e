"""tuning/model/dequantize.py: a 4-bit base dequantised once gives the logits bitsandbytes computes for it."""

from __future__ import annotations

import pytest
import torch

from tasktune.tuning.model.dequantize import dequantize_4bit_linears
from tasktune.tuning.model.load import load_model


def test_dequantised_base_gives_bitsandbytes_logits(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    model = load_model(tiny_model_dir("glm"), quantization_bit=4)
    packed = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert packed > 0
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], device=model.device)
    for module in model.modules():  # bitsandbytes' portable path (a GPU's for more than one row), not its AVX512
        if hasattr(module, "support_avx512bf16_for_cpu"):  # CPU kernel, whose sums round otherwise
            module.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        before = model(ids).logits
        assert dequantize_4bit_linears(model) == packed
        after = model(ids).logits
    assert not any(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if "proj" in n and n.endswith("weight"))
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_base_without_4bit_linears_is_left_alone(tiny_model_dir):
    model = load_model(tiny_model_dir("glm"))
    assert dequantize_4bit_linears(model) == 0


def test_weights_relaid_for_the_cpu_kernel_are_restored_first(tiny_model_dir):
    """bitsandbytes re-lays a 4-bit weight out for its AVX512 CPU kernel on the first forward where it can; the
    dequantisation reads the original layout back: the values of a fresh load, but for the per-block scales, which
    that layout keeps in bf16 (bitsandbytes' inverse is best-effort), so within bf16 rounding."""
    pytest.importorskip("bitsandbytes")
    fresh, used = (load_model(tiny_model_dir("glm"), quantization_bit=4) for _ in range(2))
    with torch.no_grad():
        used(torch.tensor([[5, 6, 7]], device=used.device))
    dequantize_4bit_linears(fresh), dequantize_4bit_linears(used)
    for (name, a), (_, b) in zip(fresh.named_parameters(), used.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1.6e-2, atol=0)  # two bf16 roundings: the scale, the product


def test_dequantising_leaves_the_random_state_alone(tiny_model_dir):
    """A training run draws its prefix after the base is dequantised (--train-weights bf16): the new linears are
    not randomly initialised first, so the prefix is the one a 4-bit run draws."""
    pytest.importorskip("bitsandbytes")
    model = load_model(tiny_model_dir("glm"), quantization_bit=4)
    torch.manual_seed(0)
    expected = torch.randn(8)
    torch.manual_seed(0)
    assert dequantize_4bit_linears(model) > 0
    assert torch.equal(torch.randn(8), expected)


def test_the_packed_weights_are_freed_at_once(tiny_model_dir):
    """The replaced 4-bit linears are in reference cycles: without a collection their packed weights outlived the
    call (on a GPU: 2.7 GiB of a 6B GLM still allocated beside its copies)."""
    import gc
    import weakref

    pytest.importorskip("bitsandbytes")
    model = load_model(tiny_model_dir("glm"), quantization_bit=4)
    packed = [weakref.ref(m.weight) for m in model.modules() if type(m).__name__ == "Linear4bit"]
    was = gc.isenabled()
    gc.disable()  # only dequantize_4bit_linears' own collection may free them
    try:
        assert dequantize_4bit_linears(model) == len(packed) > 0
        assert all(ref() is None for ref in packed)
    finally:
        if was:
            gc.enable()


def test_each_packed_weight_is_freed_even_while_its_module_is_held(tiny_model_dir):
    """The load's peak: a packed weight that lived until the end of the loop sat beside every bf16 copy (a 6B
    GLM's 2.7 GiB; benchmarks/RESULTS.md, mem_peak.py). Each one is emptied as soon as its copy exists, so a
    reference elsewhere (a hook, a cycle, a caller) cannot keep it."""
    pytest.importorskip("bitsandbytes")
    model = load_model(tiny_model_dir("glm"), quantization_bit=4)
    held = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert held and all(m.weight.numel() > 0 for m in held)
    assert dequantize_4bit_linears(model) == len(held)
    assert [m.weight.numel() for m in held] == [0] * len(held)
