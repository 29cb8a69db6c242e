"""A saved adapter's `adapter_config.json` (PEFT's format, which any program can write), checked against its
weights before a base model loads.

PEFT and torch take the config's numbers as sizes: `num_virtual_tokens: 4.0` or `r: "8"` was a TypeError traceback,
`num_virtual_tokens: 10**12` a 256 GB allocation, and a config that disagrees with the weights' shapes failed deep
inside PEFT with a message cut to "Error(s) in loading state_dict for Embedding:". Here each setting PEFT sizes
tensors by must be an integer (or number, or boolean) in range, and the weights' shapes (read from the safetensors
header only) must be the ones the config gives; every error names the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasktune.errors import ConfigError
from tasktune.flags import DROPOUT, SIZE, Range
from tasktune.tuning.model.tensors import tensor_shapes

#: settings PEFT builds tensors or modules from -> their range (strict integers: 4.0 reached torch.empty)
INTEGERS = {"num_virtual_tokens": Range(int, 1, 4096), "num_transformer_submodules": Range(int, 1, 2),
            "num_layers": SIZE, "num_attention_heads": SIZE, "token_dim": SIZE, "encoder_hidden_size": SIZE,
            "encoder_num_layers": Range(int, 1, 64), "r": Range(int, 1, 4096)}
NUMBERS = {"lora_alpha": Range(float, 0.0, 1e6, lo_open=True), "lora_dropout": DROPOUT,
           "encoder_dropout": DROPOUT}
#: settings read as booleans ("yes" is truthy: `use_dora: "yes"` loaded a DoRA model whose weights were missing)
BOOLEANS = ("prefix_projection", "inference_mode", "use_dora", "use_rslora", "fan_in_fan_out", "lora_bias",
            "use_qalora")
PROMPT_LEARNING = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")
#: the settings each PEFT type cannot do without
REQUIRED = {"PREFIX_TUNING": ("num_virtual_tokens",), "PROMPT_TUNING": ("num_virtual_tokens",),
            "P_TUNING": ("num_virtual_tokens",), "LORA": ("r",)}


def check_adapter_config(config: dict[str, Any], config_path: Path, weights_path: Path) -> None:
    """ConfigError naming `config_path` and the field when a setting of `config` (its JSON, already read) has the
    wrong type or range, or `weights_path`'s tensors do not have the shapes it gives."""
    peft_type = config.get("peft_type")
    for name in REQUIRED.get(peft_type, ()):
        if config.get(name) is None:
            raise ConfigError(f"{config_path}: {name}: missing; a {peft_type} adapter needs it")
    for name, bound in INTEGERS.items():
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{config_path}: {name}: expected an integer, got {type(value).__name__} {value!r:.60}")
        bound.check(f"{config_path}: {name}", value)
    for name, bound in NUMBERS.items():
        if config.get(name) is not None:
            bound.check(f"{config_path}: {name}", config[name])
    for name in BOOLEANS:
        if config.get(name) is not None and not isinstance(config[name], bool):
            raise ConfigError(f"{config_path}: {name}: expected true or false, got {config[name]!r:.60}")
    _check_names(config, config_path)
    if weights_path.is_file():
        _check_shapes(config, config_path, weights_path, tensor_shapes(weights_path))


def _check_names(config: dict[str, Any], config_path: Path) -> None:
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise ConfigError(f"{config_path}: target_modules: expected a module name or a list of them, got "
                          f"{targets!r:.60}")
    layers = config.get("layers_to_transform")
    if layers is not None and not (isinstance(layers, int) and not isinstance(layers, bool)) and not (
            isinstance(layers, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in layers)):
        raise ConfigError(f"{config_path}: layers_to_transform: expected a layer index or a list of them, got "
                          f"{layers!r:.60}")


def _check_shapes(config: dict[str, Any], config_path: Path, weights_path: Path,
                  shapes: dict[str, list[int]]) -> None:
    peft_type = config.get("peft_type")
    if peft_type in PROMPT_LEARNING and "prompt_embeddings" in shapes:
        rows = config["num_virtual_tokens"] * (config.get("num_transformer_submodules") or 1)
        found = shapes["prompt_embeddings"]
        if not found or found[0] != rows:
            raise ConfigError(f"{weights_path}: tensor 'prompt_embeddings' has shape {found}, but {config_path} "
                              f"gives num_virtual_tokens {config['num_virtual_tokens']} ({rows} rows): the two files "
                              "are of different adapters, or one was edited")
    # (per-module ranks, and MoE experts' LoRA (target_parameters: r x experts rows) are PEFT's to check)
    if peft_type == "LORA" and not config.get("rank_pattern") and not config.get("target_parameters"):
        rank = config["r"]
        for name, shape in sorted(shapes.items()):
            axis = 0 if name.endswith("lora_A.weight") else 1 if name.endswith("lora_B.weight") else None
            if axis is None or len(shape) not in (2, 4):
                continue
            grouped = len(shape) == 4 and axis == 1 and rank % shape[1] == 0  # a grouped Conv2d: r / groups columns
            if shape[axis] != rank and not grouped:
                raise ConfigError(f"{weights_path}: tensor {name!r} has shape {shape}, but {config_path} gives r "
                                  f"{rank}: the two files are of different adapters, or one was edited")
