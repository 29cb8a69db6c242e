"""--gradient-checkpointing auto|none|full|every-K and --max-memory (tuning/training/memory.py): the estimate against the
6B figures it was fitted to, the choice for a budget, the flag's old boolean values, applying a mode."""

import argparse

import pytest
import torch

from tasktune.errors import ConfigError
from tasktune.tuning.training import memory
from tasktune.tuning.config import TrainConfig, add_config_arguments, config_from_args, parse_checkpointing
from tasktune.tuning.model.load import load_model

GIB = 2 ** 30


def glm6b(tokens=4 * 128, **extra):
    """The 6.24B GLM of benchmarks/RESULTS.md in NF4 (3.77 GiB loaded) with a P = 128 prefix."""
    values = dict(layers=28, hidden=4096, intermediate=13696, vocab=65024, weights_bytes=int(3.77 * GIB),
                  trainable=128 * 28 * 2 * 2 * 128, tokens=tokens)
    values.update(extra)
    return memory.Sizes(**values)


@pytest.mark.parametrize("tokens, mode, compiled, measured, tolerance", [
    (512, "full", False, 4.32, 0.01),      # batch 4 x 64/64: the points it was fitted to
    (512, "none", False, 6.41, 0.01),
    (512, "full", True, 5.16, 0.01),       # --compile cudagraphs
    (512, "every-2", False, 5.37, 0.02),   # predicted
    (2048, "full", False, 5.79, 0.04),     # 4 x 256/256
    (2048, "none", False, 13.52, 0.06),
    (2048, "every-2", False, 9.65, 0.07),
    (2048, "full", True, 9.12, 0.03),      # cudagraphs, 16 x 64/64
])
def test_estimate_matches_the_measured_6b_peaks(tokens, mode, compiled, measured, tolerance):
    got = memory.estimate(glm6b(tokens), mode, compiled=compiled) / GIB
    assert got == pytest.approx(measured, rel=tolerance)


def test_estimates_fall_along_the_candidates():
    sizes = glm6b()
    modes = memory.candidates(sizes.layers)
    assert modes[0] == "none" and modes[-1] == "full" and "every-2" in modes
    counts = [memory.checkpointed_layers(m, 28) for m in modes]
    assert counts == sorted(set(counts))  # each candidate checkpoints more layers than the one before
    # from one checkpointed layer on (one layer's recompute is counted once), each step down needs less memory
    estimates = [memory.estimate(sizes, m) for m in modes[1:]]
    assert estimates == sorted(estimates, reverse=True)


@pytest.mark.parametrize("budget, compiled, mode", [
    (140, False, "none"),     # an H200 to itself
    (8, False, "none"),
    (6.0, False, "every-3"),
    (5.5, False, "every-2"),
    (5.0, False, "full"),
    (5.5, True, "full"),      # graphs keep more per checkpointed layer: every-2 no longer fits
    (7.0, True, "none"),
])
def test_auto_takes_the_least_checkpointing_that_fits(budget, compiled, mode):
    choice = memory.choose(glm6b(), int(budget * GIB), compiled=compiled)
    assert choice.mode == mode
    assert choice.estimate_bytes <= budget * GIB * (1 - memory.HEADROOM)


def test_the_choice_is_one_line():
    choice = memory.choose(glm6b(), int(5.5 * GIB))
    assert choice.describe() == "checkpointing: every 2nd layer (est. 5.4 GiB of 5.5 allowed)"
    free = memory.choose(glm6b(), 140 * GIB, source="free on cuda:0")
    assert free.describe() == "checkpointing: none (est. 6.4 GiB of 140.0 free)"
    assert memory.Choice("full", "auto").describe() == "checkpointing: every layer (auto on a CPU)"
    assert memory.describe_mode("every-3") == "every 3rd layer" and memory.describe_mode("every-11") == \
        "every 11th layer"


def test_max_memory_below_full_checkpointing_is_an_error():
    with pytest.raises(ConfigError, match=r"--max-memory 4: even full checkpointing needs an estimated 4\.32 GiB"):
        memory.choose(glm6b(), 4 * GIB)
    # the device's free memory is not a promise: too little of it still trains with full checkpointing
    choice = memory.choose(glm6b(), 4 * GIB, source="free on cuda:0")
    assert choice.mode == "full" and choice.describe().endswith("of 4.0 free; may not fit)")


@pytest.mark.parametrize("value, mode", [
    ("auto", "auto"), ("none", "none"), ("full", "full"), ("every-2", "every-2"), ("every4", "every-4"),
    ("Every-1", "full"), (True, "full"), (False, "none"), ("true", "full"), ("false", "none"), ("yes", "full"),
])
def test_modes_and_the_old_booleans(value, mode):
    assert parse_checkpointing(value) == mode
    assert TrainConfig(gradient_checkpointing=value).gradient_checkpointing == mode


@pytest.mark.parametrize("value", ["some", "every-0", "every-", "2", ""])
def test_a_bad_mode_names_the_flag(value):
    with pytest.raises(ConfigError, match="--gradient-checkpointing: expected auto, none, full, every-K"):
        TrainConfig(gradient_checkpointing=value)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    return config_from_args(parser.parse_args(argv))


def test_flags_and_yaml(tmp_path):
    assert _parse([]).gradient_checkpointing == "auto" and _parse([]).max_memory == 0.0
    assert _parse(["--gradient-checkpointing"]).gradient_checkpointing == "full"  # the bare flag, as before
    assert _parse(["--gradient-checkpointing", "every-2", "--max-memory", "5.5"]).max_memory == 5.5
    old = tmp_path / "old.yaml"
    old.write_text("gradient_checkpointing: true\n")  # a config (or run record) from before the modes
    assert _parse(["--config", str(old)]).gradient_checkpointing == "full"
    with pytest.raises(SystemExit):
        _parse(["--max-memory", "-1"])


def _layer_flags(model):
    return [layer.gradient_checkpointing for layer in memory.decoder_layers(model)]


@pytest.mark.parametrize("mode, flags", [("none", [False, False]), ("full", [True, True]),
                                         ("every-2", [True, False])])
def test_apply_sets_the_layers(tiny_model_dir, mode, flags):
    model = load_model(tiny_model_dir("glm"))
    memory.apply(model, mode)
    assert _layer_flags(model) == flags


def test_resolve_on_a_cpu_keeps_full(tiny_model_dir):
    model = load_model(tiny_model_dir("glm"))
    cfg = TrainConfig(max_memory=0.001)  # no estimate on a CPU: no error either
    choice = memory.resolve("auto", model, cfg, device=torch.device("cpu"), tokens=512)
    assert (choice.mode, choice.estimate_bytes) == ("full", None)
    assert memory.resolve("every-2", model, cfg, device=torch.device("cpu"), tokens=512).mode == "every-2"


def test_every_k_past_the_layer_count_is_refused_naming_it(tiny_model_dir):
    """every-100 on a 2-layer base checkpointed layer 0 alone, accepted without a word; every-K up to the layer
    count is taken as given."""
    model = load_model(tiny_model_dir("glm"))
    layers = len(_layer_flags(model))
    for mode in ("every-2", f"every-{layers}"):
        assert memory.resolve(mode, model, TrainConfig(), device=torch.device("cpu"), tokens=512).mode == mode
    with pytest.raises(ConfigError, match=rf"^--gradient-checkpointing every-100: the base has {layers} decoder "
                                          rf"layers, .* every-K with K <= {layers}, full, none or auto$"):
        memory.resolve("every-100", model, TrainConfig(), device=torch.device("cpu"), tokens=512)


def test_model_sizes_of_a_loaded_model(tiny_model_dir):
    model = load_model(tiny_model_dir("glm"))
    sizes = memory.model_sizes(model, TrainConfig(pre_seq_len=4), tokens=64, element_bytes=4)
    assert (sizes.layers, sizes.hidden, sizes.intermediate) == (2, 64, 128)
    assert sizes.trainable == 4 * 2 * 2 * 2 * 16  # P x layers x (key, value) x kv heads x head_dim
    assert sizes.weights_bytes == sum(p.numel() * 4 for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
