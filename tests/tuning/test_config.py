"""TrainConfig: recipe defaults, YAML < flags precedence, clear errors."""

import argparse

import pytest

from tasktune.errors import ConfigError
from tasktune.tuning.config import TrainConfig, add_config_arguments, config_from_args


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    return config_from_args(parser.parse_args(argv))


def test_defaults_follow_the_reference_recipe():
    cfg = TrainConfig()
    assert (cfg.pre_seq_len, cfg.learning_rate) == (128, 2e-2)
    assert (cfg.max_source_length, cfg.max_target_length) == (64, 64)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.save_steps) == (4, 16, 500)
    assert cfg.gradient_checkpointing == "auto" and cfg.trust_remote_code is False


def test_yaml_then_flags_override(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("pre_seq_len: 16\nlearning-rate: 0.1\nmax_steps: 7\ngradient_checkpointing: false\n")
    cfg = _parse(["--config", str(yaml_file), "--max-steps", "9"])
    assert cfg.pre_seq_len == 16 and cfg.learning_rate == 0.1 and cfg.max_steps == 9
    assert cfg.gradient_checkpointing == "none"  # the old boolean: false = none


def test_bool_flag_without_value_means_true():
    assert _parse(["--prefix-projection"]).prefix_projection is True
    assert _parse(["--prefix-projection", "false"]).prefix_projection is False


@pytest.mark.parametrize("text, fragment", [
    ("pre_seq_lenn: 3\n", "unknown key 'pre_seq_lenn'"),
    ("max_steps: many\n", "max_steps: expected int"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_yaml_names_the_key(tmp_path, text, fragment):
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        _parse(["--config", str(yaml_file)])


def test_group_by_length_takes_a_mode_and_the_old_booleans(tmp_path):
    assert _parse([]).group_by_length == "none"
    assert _parse(["--group-by-length", "step"]).group_by_length == "step"
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("group_by_length: true\n")  # a config written when it was a boolean: whole-batch grouping
    assert _parse(["--config", str(yaml_file)]).group_by_length == "window"
    yaml_file.write_text("group_by_length: false\n")
    assert _parse(["--config", str(yaml_file)]).group_by_length == "none"


@pytest.mark.parametrize("field, value", [("pre_seq_len", 0), ("pre_seq_len", -3), ("max_steps", 0),
                                          ("prefix_dropout", 1.0), ("group_by_length", "sorted")])
def test_invalid_values_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_quantization_resolves(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainConfig(quantization_bit="auto").quantization is None
    assert TrainConfig(quantization_bit="4").quantization == 4
    assert TrainConfig(quantization_bit="none").quantization is None


@pytest.mark.parametrize("name", ["train-tiny.yaml", "train-tiny-gpu.yaml"])
def test_demo_configs_are_valid_train_configs(name):
    from pathlib import Path

    from tasktune.tuning.config import read_yaml_config

    path = Path(__file__).resolve().parents[2] / "templates" / "demo" / name
    cfg = TrainConfig(**read_yaml_config(path, TrainConfig))
    assert cfg.max_source_length == 160 and cfg.pre_seq_len == 64  # whole dialogues fit; the sweep's P


@pytest.mark.parametrize("text, fragment", [
    ("compile: fast\n", r"bad.yaml: compile: 'fast' is not one of auto, off, on, cudagraphs"),
    ("train_weights: fp8\n", r"bad.yaml: train_weights: 'fp8' is not one of auto, 4bit, bf16"),
    ("bf16: maybe\n", r"bad.yaml: bf16: 'maybe' is not one of auto, true, false"),
    ("method: lora2\n", r"bad.yaml: method: 'lora2' is not one of"),
])
def test_a_yaml_value_outside_its_choices_names_file_and_key(tmp_path, text, fragment):
    """Checked when the file is read, as the flag's argparse choices are: before, `compile: fast` went on to load
    the model and failed there (or, for a field read only as `== "true"`, was silently taken as false)."""
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        _parse(["--config", str(yaml_file)])


def test_yaml_and_python_booleans_become_the_fields_words(tmp_path):
    """YAML reads unquoted off/on/true/false as booleans: `compile: off` is "off", `bf16: false` is "false"."""
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("compile: off\ncompile_cache: off\nbf16: false\n")
    cfg = _parse(["--config", str(yaml_file)])
    assert (cfg.compile, cfg.compile_cache, cfg.bf16) == ("off", "off", "false")
    cfg = TrainConfig(compile=False, bf16=True, compile_cache=True)
    assert (cfg.compile, cfg.compile_cache, cfg.bf16) == ("off", "on", "true")
    with pytest.raises(ConfigError, match=r"--compile: 'fast' is not one of"):
        TrainConfig(compile="fast")


def test_a_yaml_key_given_twice_names_file_and_line(tmp_path):
    """PyYAML keeps the last of two equal keys: `max_steps: 1` then `max_steps: 2` trained 2 steps, silently."""
    yaml_file = tmp_path / "dup.yaml"
    yaml_file.write_text("max_steps: 1\nlearning_rate: 0.1\nmax_steps: 2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: invalid YAML: duplicate key 'max_steps' \(first at line 1\)"):
        _parse(["--config", str(yaml_file)])


def test_an_empty_output_path_is_refused():
    """Path("") is ".": `--out ""` wrote the data set into the current folder."""
    from tasktune.flags import check_output_folder

    with pytest.raises(ConfigError, match="--out : empty path"):
        check_output_folder("", "--out")
