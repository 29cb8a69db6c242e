"""Training configuration: one dataclass whose fields are the CLI flags and the YAML config keys.

Precedence: dataclass default < `--config run.yaml` < explicit command-line flag. Defaults follow
the reference recipe (ChatGLM-6B ptuning/train.sh as used in the grid project): pre_seq_len 128,
lr 2e-2, source/target 64/64, batch 4 x accumulation 16, save every 500 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tasktune.errors import ConfigError

#: Tuning methods (`--method`); tuning/methods.py holds what each one does, docs/methods.md compares them.
METHODS = ("ptuning-v2", "prefix", "prompt", "prompt-text", "p-tuning", "bitfit", "lora", "qlora", "full")
#: What the model learns to do (`--task`): answer (causal LM) or label a text (sequence classification).
TASKS = ("causal-lm", "classification")
#: `--group-by-length`: none, within each optimizer step (exact), or across the epoch (tuning/train.py batch_indices).
GROUPINGS = ("none", "step", "window")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field whose help text becomes the flag's --help line."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # what to train on
    model: str = _opt("models/tiny-glm", "base model: local path or hub id (loaded with AutoModelForCausalLM)")
    data: str = _opt("data/grid", "folder with train.json/dev.json (or .jsonl) from `tasktune data`")
    out: str = _opt("runs/grid-tiny", "run folder: adapter, checkpoints, logs, loss curve, reproduction record")
    method: str = _opt("ptuning-v2", "tuning method (docs/methods.md)", choices=METHODS)
    task: str = _opt("causal-lm", "causal-lm (answer prompts) or classification (records {text, label})",
                     choices=TASKS)
    # the other methods (ignored by ptuning-v2/prefix)
    num_virtual_tokens: int = _opt(0, "prompt/p-tuning virtual tokens; 0 = pre_seq_len (prompt-text: the init "
                                      "text's token count)")
    prompt_init_text: str = _opt("下面是一段人与机器人的对话。", "prompt-text: the text whose embeddings start the prompt")
    encoder_hidden_size: int = _opt(128, "p-tuning: hidden size of the prompt encoder (MLP)")
    lora_r: int = _opt(8, "lora/qlora: rank of the update matrices")
    lora_alpha: int = _opt(16, "lora/qlora: scaling numerator (update scaled by alpha / r)")
    lora_dropout: float = _opt(0.05, "lora/qlora: dropout on the LoRA input")
    lora_target_modules: str = _opt("all-linear", "lora/qlora: comma-separated module names, or all-linear")
    # the prefix
    pre_seq_len: int = _opt(128, "number of trainable prefix positions at every layer")
    prefix_projection: bool = _opt(False, "re-parameterise the prefix with embedding->Linear->Tanh->Linear")
    prefix_hidden_size: int = _opt(512, "hidden size of the projection MLP (with --prefix-projection)")
    prefix_dropout: float = _opt(0.0, "dropout on the prefix key/values during training")
    # the base model
    quantization_bit: str = _opt(
        "auto", "4 (NF4), 8 (LLM.int8), none; auto = 4 on a CUDA GPU, none on CPU", choices=("auto", "4", "8", "none")
    )
    trust_remote_code: bool = _opt(False, "allow the model folder's own Python code to run (off by default)")
    allow_pickle: bool = _opt(False, "allow loading .bin/.pt (pickle) weights; safetensors only by default")
    gradient_checkpointing: bool = _opt(True, "recompute activations in backward to save memory")
    compile: str = _opt("auto", "torch.compile the training step: off; on (fused kernels); cudagraphs (also "
                                "CUDA graphs; CUDA only); auto = cudagraphs on one CUDA GPU for "
                                "prefix methods in runs of >= 1000 steps, else off (tuning/compiling.py)",
                         choices=("auto", "off", "on", "cudagraphs"))
    # data
    prompt_column: str = _opt("content", "record key holding the prompt")
    response_column: str = _opt("summary", "record key holding the answer")
    history_column: str = _opt("history", "record key holding earlier [prompt, answer] turns")
    prompt_template: str = _opt("auto", "auto (tokenizer chat template, else chatglm), chatglm, human_assistant or a .jinja path")
    max_source_length: int = _opt(64, "prompt tokens kept (longer prompts are truncated and counted)")
    max_target_length: int = _opt(64, "answer tokens kept (longer answers are truncated and counted)")
    # optimisation
    learning_rate: float = _opt(2e-2, "peak learning rate (linear decay to 0)")
    warmup_steps: int = _opt(0, "linear warm-up steps")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 = off)")
    per_device_train_batch_size: int = _opt(4, "micro-batch size per device")
    answer_logits: bool = _opt(True, "run the LM head only where the next token is an answer token (ptuning-v2 "
                                     "and prefix; the same loss, less work); false: full logits")
    group_by_length: str = _opt(
        "none", "none; step = each optimizer step's random examples are re-cut into its accumulation micro-batches by "
                "length (less padding, the same update); window = whole batches of similar length across the epoch "
                "(less padding still, but a batch then holds mostly one kind of record, which can slow learning)",
        choices=GROUPINGS)
    gradient_accumulation_steps: int = _opt(16, "micro-batches per optimizer step")
    max_steps: int = _opt(3000, "optimizer steps")
    logging_steps: int = _opt(10, "log loss every N steps")
    save_steps: int = _opt(500, "checkpoint every N steps")
    save_total_limit: int = _opt(2, "checkpoints kept (oldest removed)")
    seed: int = _opt(42, "seed for init, data order and dropout")
    bf16: str = _opt("auto", "bf16 autocast: auto = on a CUDA GPU with bf16 support", choices=("auto", "true", "false"))
    resume: str = _opt("auto", "auto = continue from the run folder's last checkpoint if any; never; or a checkpoint path")
    on_nan: str = _opt("stop", "non-finite loss: stop (with a message) or skip the step", choices=("stop", "skip"))
    num_threads: int = _opt(0, "CPU threads for torch (0 = torch's default)")

    def __post_init__(self) -> None:
        if self.pre_seq_len <= 0:
            raise ConfigError(f"pre_seq_len must be a positive integer, got {self.pre_seq_len}")
        for name in ("max_source_length", "max_target_length", "per_device_train_batch_size",
                     "gradient_accumulation_steps", "max_steps", "logging_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.prefix_dropout < 1.0:
            raise ConfigError(f"prefix_dropout must be in [0, 1), got {self.prefix_dropout}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        grouping = str(self.group_by_length).lower()
        if grouping not in GROUPINGS:  # a config written when this was a boolean: true = window, false = none
            try:
                grouping = "window" if _parse_bool(grouping) else "none"
            except argparse.ArgumentTypeError:
                raise ConfigError(f"group_by_length must be one of {', '.join(GROUPINGS)}, "
                                  f"got {self.group_by_length!r}") from None
        self.group_by_length = grouping
        if self.num_virtual_tokens < 0 or self.lora_r <= 0:
            raise ConfigError(f"num_virtual_tokens must be >= 0 and lora_r > 0, got "
                              f"{self.num_virtual_tokens} and {self.lora_r}")

    @property
    def quantization(self) -> int | None:
        """The resolved quantization mode: 4, 8 or None."""
        mode = str(self.quantization_bit).lower()
        if mode == "auto":
            import torch

            return 4 if torch.cuda.is_available() else None
        return None if mode == "none" else int(mode)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- dataclass <-> argparse / YAML -------------------------------------------------------------

def _field_type(cls: type, f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType):  # "int | None" -> int
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one `--flag` per dataclass field; defaults are SUPPRESSed so only explicit flags override."""
    parser.add_argument("--config", metavar="YAML", help="YAML file whose keys are the flags below (snake_case)")
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = _field_type(cls, f)
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if kind is bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=argparse.SUPPRESS,
                                metavar="BOOL", help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                                help=help_text)


def read_yaml_config(path: str | Path, cls: type) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        kind = _field_type(cls, known[name])
        try:
            out[name] = _parse_bool(str(value)) if kind is bool else kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"{path}: {key}: expected {kind.__name__}, got {value!r}") from None
    return out


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig):
    """Merge dataclass defaults, the --config YAML and explicit flags into one config object."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_yaml_config(args.config, cls))
    names = {f.name for f in fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls(**values)
