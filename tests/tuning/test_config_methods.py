"""A setting the user gives that the chosen method does not read is refused (tuning/config.py METHOD_FLAGS,
`check_method_settings`): `--method prefix --lora-r 4`, `--method full --train-weights 4bit` and more trained with
exit 0 and the flag ignored, and `--method qlora --quantization-bit none` trained 4-bit while the run record said
"none"."""

import argparse
import dataclasses

import pytest

from tasktune.errors import ConfigError, TaskTuneWarning
from tasktune.tuning.config import (METHOD_FLAGS, METHOD_QUANTIZATION, METHODS, TASKS, TrainConfig,
                                    add_config_arguments, config_from_args)


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    return config_from_args(parser.parse_args(argv))


@pytest.mark.parametrize("argv, message", [
    ("--method prefix --lora-r 4",
     r"^--lora-r: --method prefix does not use it \(LoRA's flags: used by lora, qlora\)$"),
    ("--method lora --prefix-projection --prefix-hidden-size 64",
     r"^--prefix-projection: --method lora does not use it \(the prefix's projection: used by ptuning-v2, prefix\)"),
    ("--method lora --prefix-hidden-size 64", r"^--prefix-hidden-size: --method lora does not use it"),
    ("--method full --train-weights 4bit", r"^--train-weights: --method full does not use it"),
    ("--method lora --pre-seq-len 4", r"^--pre-seq-len: --method lora does not use it \(the prefix length: used by "
                                      r"ptuning-v2, prefix, prompt, p-tuning\)"),
    ("--method prompt-text --pre-seq-len 4", r"^--pre-seq-len: --method prompt-text does not use it"),
    ("--method prompt --prompt-init-text hi", r"^--prompt-init-text: --method prompt does not use it .*prompt-text"),
    ("--method lora --encoder-hidden-size 64", r"^--encoder-hidden-size: --method lora does not use it .*p-tuning"),
    ("--num-virtual-tokens 4", r"^--num-virtual-tokens: --method ptuning-v2 does not use it"),
    ("--method bitfit --answer-logits false", r"^--answer-logits: --method bitfit does not use it"),
    ("--method qlora --lora-r 4 --prefix-dropout 0.1", r"^--prefix-dropout: --method qlora does not use it"),
    ("--task classification --prefix-dropout 0.1",
     r"^--prefix-dropout: --method ptuning-v2 --task classification does not use it \(the prefix dropout: used by "
     r"ptuning-v2, prefix with --task causal-lm\)"),
    # contradictions: a value the method overrides, or a setting only read with another
    ("--method qlora --quantization-bit none", r"^--quantization-bit none: --method qlora always trains on a 4-bit"),
    ("--method qlora --quantization-bit 8", r"^--quantization-bit 8: --method qlora"),
    ("--method full --quantization-bit 4", r"^--quantization-bit 4: --method full trains every weight"),
    ("--method prefix --prefix-projection false", r"^--prefix-projection false: --method prefix always projects"),
    ("--prefix-hidden-size 64", r"^--prefix-hidden-size: --method ptuning-v2 uses it only with --prefix-projection"),
    ("--method p-tuning --num-virtual-tokens 4 --pre-seq-len 8",
     r"^--pre-seq-len: --method p-tuning takes its virtual tokens from --num-virtual-tokens \(4\)"),
    ("--method lora --quantization-bit none --train-weights bf16",
     r"^--train-weights: --quantization-bit none loads no 4-bit base"),
])
def test_a_flag_the_method_does_not_read_is_refused_naming_both(argv, message):
    with pytest.raises(ConfigError, match=message):
        _parse(argv.split())


@pytest.mark.parametrize("argv", [
    "--method lora --lora-r 4 --lora-alpha 8 --lora-dropout 0.1 --lora-target-modules q_proj --train-weights 4bit",
    "--method qlora --quantization-bit 4 --lora-r 4",
    "--method qlora --quantization-bit auto",
    "--method full --quantization-bit none",
    "--method prefix --prefix-projection --prefix-hidden-size 64 --prefix-dropout 0.1 --pre-seq-len 4",
    "--pre-seq-len 4 --prefix-projection --prefix-hidden-size 64 --answer-logits false --prefix-dropout 0.1",
    "--method prompt --num-virtual-tokens 4",
    "--method p-tuning --pre-seq-len 8 --encoder-hidden-size 32",
    "--method prompt-text --prompt-init-text hi --num-virtual-tokens 4",
    "--task classification --pre-seq-len 4 --prefix-projection",
    "--method full",  # the method's own defaults (lora_r 8, pre_seq_len 128, ...) are not given: no refusal
])
def test_flags_the_method_reads_and_defaults_are_accepted(argv):
    cfg = _parse(argv.split())
    assert cfg.method == (argv.split()[1] if argv.startswith("--method") else "ptuning-v2")


def test_yaml_keys_count_as_given_and_are_named_with_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: lora\nlora_r: 4\n")
    assert _parse(["--config", str(path)]).lora_r == 4
    # a YAML may serve several methods (make train's config with --method): a key the method does not read is a
    # warning naming the file and key; a contradiction (below) and a typed flag are refused
    with pytest.warns(TaskTuneWarning, match=rf"^--config {path}: lora_r: --method prefix does not use it .*; ignored"):
        assert _parse(["--config", str(path), "--method", "prefix"]).method == "prefix"
    path.write_text("quantization_bit: none\n")
    with pytest.raises(ConfigError, match=rf"^--config {path}: quantization_bit none: --method qlora"):
        _parse(["--config", str(path), "--method", "qlora"])
    with pytest.raises(ConfigError, match="^--lora-r: "):  # a flag over a key: the flag is named
        _parse(["--config", str(path), "--method", "prefix", "--lora-r", "4"])


def test_the_table_names_real_settings_and_agrees_with_the_method_registry():
    from tasktune.tuning.model.methods import REGISTRY

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for row in METHOD_FLAGS:
        assert set(row.names) <= names and set(row.methods) <= set(METHODS) and set(row.tasks) <= set(TASKS), row
    own = {name: m.quantization for name, m in REGISTRY.items() if m.quantization != "any"}
    assert {name: {"4bit": ("auto", "4"), "none": ("auto", "none")}[q] for name, q in own.items()} == \
        METHOD_QUANTIZATION


def test_the_cli_exits_2_before_anything_is_written(tmp_path, capsys):
    from tasktune.cli import main

    out = tmp_path / "run"
    code = main(["train", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--out", str(out),
                 "--method", "qlora", "--quantization-bit", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "tasktune train: error: --quantization-bit none: --method qlora" in err, err
    assert not out.exists()


def test_peft_methods_attach_without_transformers_deprecation_warning(tiny_model_dir):
    """PEFT's PeftModel reads transformers' deprecated `is_gradient_checkpointing`: every lora/qlora/prompt run
    printed a FutureWarning a user could do nothing about. The other warnings are left as they are."""
    import warnings

    from tasktune.tuning.model.load import load_model
    from tasktune.tuning.model.methods.peft import attach_peft

    model = load_model(tiny_model_dir("glm"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attach_peft(model, TrainConfig(method="lora"), "lora", "causal-lm", None)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)], [str(w.message) for w in caught]
