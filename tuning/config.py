"""Training configuration: one dataclass whose fields are the CLI flags and the YAML config keys.

Precedence: dataclass default < `--config run.yaml` < explicit command-line flag. Defaults follow
the reference recipe (ChatGLM-6B ptuning/train.sh as used in the grid project): pre_seq_len 128,
lr 2e-2, source/target 64/64, batch 4 x accumulation 16, save every 500 steps.

A setting only some methods read (METHOD_FLAGS: LoRA's rank, the prefix length...) that the user types for a method
that does not read it is refused (`check_method_settings`; from a --config YAML, which may serve several methods, it
is a warning), as is a --quantization-bit the method contradicts.

Longer than 300 lines because the dataclass is the one list of every training flag (its help text included), and
the flag/YAML plumbing, the table of which method reads which flag and the check of the Python API's arguments by
their annotations (`checked_arguments`, a shared piece that tasktune/api.py and the stages may both use) belong
with it.
"""

from __future__ import annotations

import argparse
import re
import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tasktune import yamlread
from tasktune.errors import ConfigError, TaskTuneWarning
from tasktune.files import read_text_file
from tasktune.flags import (BATCH, COUNT, DROPOUT, LEARNING_RATE, SEED, SIZE, STEPS0, TOKENS, Range, bool_choice,
                            check_choices, check_output_folder, check_ranges, check_types)

#: Tuning methods (`--method`); tuning/model/methods/ holds what each one does, docs/methods.md compares them.
METHODS = ("ptuning-v2", "prefix", "prompt", "prompt-text", "p-tuning", "bitfit", "lora", "qlora", "full")
#: What the model learns to do (`--task`): answer (causal LM) or label a text (sequence classification).
TASKS = ("causal-lm", "classification")
#: `--group-by-length`: none, within each optimizer step (exact), or across the epoch (tuning/training/train.py batch_indices).
GROUPINGS = ("none", "step", "window")
PREFIX_METHODS = ("ptuning-v2", "prefix")


#: `tasktune train`'s --model when none is given: where `tasktune tiny-model` writes by default
DEFAULT_MODEL = "models/tiny-glm"

@dataclass(frozen=True)
class MethodFlags:
    """Settings (flags and YAML keys) that only `methods` read, and those only for `tasks`."""

    what: str
    names: tuple[str, ...]
    methods: tuple[str, ...]
    tasks: tuple[str, ...] = TASKS


#: Which methods read each method-specific setting (tuning/model/methods/ reads them); one the user sets for a
#: method that does not read it is refused (`check_method_settings`): it was silently ignored. Every other setting
#: is read by every method.
METHOD_FLAGS = (
    MethodFlags("the prefix length", ("pre_seq_len",), (*PREFIX_METHODS, "prompt", "p-tuning")),
    MethodFlags("the prefix's projection", ("prefix_projection", "prefix_hidden_size"), PREFIX_METHODS),
    MethodFlags("the prefix dropout", ("prefix_dropout",), PREFIX_METHODS, ("causal-lm",)),  # (PEFT's: none)
    MethodFlags("answer-only logits", ("answer_logits",), PREFIX_METHODS, ("causal-lm",)),
    MethodFlags("the virtual tokens", ("num_virtual_tokens",), ("prompt", "prompt-text", "p-tuning")),
    MethodFlags("the init text", ("prompt_init_text",), ("prompt-text",)),
    MethodFlags("the prompt encoder", ("encoder_hidden_size",), ("p-tuning",)),
    MethodFlags("LoRA's flags", ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"), ("lora", "qlora")),
    MethodFlags("a 4-bit base's training weights", ("train_weights",), tuple(m for m in METHODS if m != "full")),
)
#: The --quantization-bit values a method can honour where it has its own (tuning/model/methods REGISTRY's
#: `quantization`: qlora always 4-bit, full never quantised); another value set by the user contradicts the method.
METHOD_QUANTIZATION = {"qlora": ("auto", "4"), "full": ("auto", "none")}


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field whose help text becomes the flag's --help line; `range=Range(...)` (tasktune/flags.py)
    bounds a number: the flag's argparse type and `check_ranges` (YAML keys, the Python API) both use it."""
    return field(default=default, metadata={"help": help, **extra})


# --gradient-checkpointing's values (training/memory.py plans them)
MODES_HELP = ("auto = the least checkpointing whose estimated peak fits the GPU's free memory or --max-memory "
              "(full on a CPU); none; full (every layer); every-K (every K-th decoder layer, K >= 2); "
              "true/false = full/none (tuning/training/memory.py)")
EVERY_PATTERN = re.compile(r"every[-_]?(\d+)")


def parse_checkpointing(value) -> str:
    """A `--gradient-checkpointing` value -> "auto", "none", "full" or "every-K" (K >= 2); true/false (the
    boolean of older configs and run records) -> full/none; ConfigError naming the flag otherwise."""
    text = str(value).strip().lower()
    if text in ("auto", "none", "full"):
        return text
    if text in ("1", "true", "yes", "on"):
        return "full"
    if text in ("0", "false", "no", "off"):
        return "none"
    match = EVERY_PATTERN.fullmatch(text)
    if match:
        k = int(match.group(1))
        if k >= 1:
            return "full" if k == 1 else f"every-{k}"
    raise ConfigError(f"--gradient-checkpointing: expected auto, none, full, every-K (K >= 2) or true/false, "
                      f"got {value!r}")


@dataclass
class TrainConfig:
    # what to train on
    model: str = _opt(DEFAULT_MODEL, "base model: local path or hub id (loaded with AutoModelForCausalLM)")
    data: str = _opt("data/grid", "folder with train.json/dev.json (or .jsonl) from `tasktune data`")
    out: str = _opt("runs/grid-tiny", "run folder: adapter, checkpoints, logs, loss curve, reproduction record")
    method: str = _opt("ptuning-v2", "tuning method (docs/methods.md)", choices=METHODS)
    task: str = _opt("causal-lm", "causal-lm (answer prompts) or classification (records {text, label})",
                     choices=TASKS)
    # the other methods (refused with the methods that do not read them: METHOD_FLAGS)
    num_virtual_tokens: int = _opt(0, "prompt/p-tuning virtual tokens; 0 = pre_seq_len (prompt-text: the init "
                                      "text's token count)", range=Range(int, 0, 4096, note="0 = pre_seq_len"))
    prompt_init_text: str = _opt("下面是一段人与机器人的对话。", "prompt-text: the text whose embeddings start the prompt")
    encoder_hidden_size: int = _opt(128, "p-tuning: hidden size of the prompt encoder (MLP)", range=SIZE)
    lora_r: int = _opt(8, "lora/qlora: rank of the update matrices", range=Range(int, 1, 4096))
    lora_alpha: int = _opt(16, "lora/qlora: scaling numerator (update scaled by alpha / r)",
                           range=Range(int, 1, 1 << 16))
    lora_dropout: float = _opt(0.05, "lora/qlora: dropout on the LoRA input", range=DROPOUT)
    lora_target_modules: str = _opt("all-linear", "lora/qlora: comma-separated module names, or all-linear")
    # the prefix
    pre_seq_len: int = _opt(128, "number of trainable prefix positions at every layer", range=Range(int, 1, 4096))
    prefix_projection: bool = _opt(False, "re-parameterise the prefix with embedding->Linear->Tanh->Linear")
    prefix_hidden_size: int = _opt(512, "hidden size of the projection MLP (with --prefix-projection)", range=SIZE)
    prefix_dropout: float = _opt(0.0, "dropout on the prefix key/values during training", range=DROPOUT)
    # the base model
    quantization_bit: str = _opt(
        "auto", "4 (NF4), 8 (LLM.int8), none; auto = 4 on a CUDA GPU, none on CPU", choices=("auto", "4", "8", "none")
    )
    trust_remote_code: bool = _opt(False, "allow the model folder's own Python code to run (off by default)")
    allow_pickle: bool = _opt(False, "allow loading .bin/.pt (pickle) weights; safetensors only by default")
    gradient_checkpointing: str = _opt("auto", "recompute activations in backward to save memory: " + MODES_HELP,
                                       const="full")
    max_memory: float = _opt(0.0, "GiB of GPU memory this run may use (a shared card): --gradient-checkpointing "
                                  "auto fits its estimate under it; 0 = what the GPU has free",
                             range=Range(float, 0.0, 1e6, note="0 = the GPU's free memory"))
    train_weights: str = _opt("auto", "a 4-bit base's linears during training: 4bit (as loaded); bf16 "
                                      "(dequantised once before the first step: the same values, ~3.8x their "
                                      "memory, a faster step); auto = bf16 on a CUDA GPU for ptuning-v2/prefix "
                                      "when they fit with the checkpointing chosen for 4-bit, else 4bit "
                                      "(tuning/training/base_weights.py)",
                              choices=("auto", "4bit", "bf16"))
    compile: str = _opt("auto", "torch.compile the training step: off; on (fused kernels); cudagraphs (also "
                                "CUDA graphs; CUDA only; the first step compiles for seconds to minutes); "
                                "eager-graphs (CUDA graphs of the eager kernels: no compile, more memory); auto = "
                                "cudagraphs on one CUDA GPU for prefix methods in runs of >= 250 steps (>= 100 over "
                                "dequantised weights, >= 1000 when checkpointing makes it compile the whole model) "
                                "or of any length when the compile cache holds this run's graphs; in shorter runs "
                                "eager-graphs where its memory fits without checkpointing, else off "
                                "(tuning/training/compiling.py)",
                         choices=("auto", "off", "on", "cudagraphs", "eager-graphs"))
    compile_cache: str = _opt("on", "keep compiled graphs in $TASKTUNE_CACHE/compile (default "
                                    "~/.cache/tasktune/compile), keyed by model, shapes, versions and mode, so a "
                                    "later run with the same shapes starts in seconds; off = compile afresh",
                              choices=("on", "off"))
    # data
    prompt_column: str = _opt("content", "record key holding the prompt")
    response_column: str = _opt("summary", "record key holding the answer")
    history_column: str = _opt("history", "record key holding earlier [prompt, answer] turns")
    prompt_template: str = _opt("auto", "auto (tokenizer chat template, else chatglm), chatglm, human_assistant or a .jinja path")
    max_source_length: int = _opt(64, "prompt tokens kept (longer prompts are truncated and counted)", range=TOKENS)
    max_target_length: int = _opt(64, "answer tokens kept (longer answers are truncated and counted)", range=TOKENS)
    # optimisation
    learning_rate: float = _opt(2e-2, "peak learning rate (linear decay to 0)", range=LEARNING_RATE)
    warmup_steps: int = _opt(0, "linear warm-up steps", range=STEPS0)
    weight_decay: float = _opt(0.0, "AdamW weight decay", range=Range(float, 0.0, 10.0))
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 = off)",
                                range=Range(float, 0.0, 1e6, note="0 = off"))
    per_device_train_batch_size: int = _opt(4, "micro-batch size per device", range=BATCH)
    answer_logits: bool = _opt(True, "run the LM head only where the next token is an answer token (ptuning-v2 "
                                     "and prefix; the same loss, less work); false: full logits")
    group_by_length: str = _opt(
        "none", "none; step = each optimizer step's random examples are re-cut into its accumulation micro-batches by "
                "length (less padding, the same update); window = whole batches of similar length across the epoch "
                "(less padding still, but a batch then holds mostly one kind of record, which can slow learning)",
        choices=GROUPINGS)
    gradient_accumulation_steps: int = _opt(16, "micro-batches per optimizer step",
                                            range=Range(int, 1, 1 << 20))
    max_steps: int = _opt(3000, "optimizer steps", range=COUNT)
    logging_steps: int = _opt(10, "log loss every N steps", range=COUNT)
    save_steps: int = _opt(500, "checkpoint every N steps", range=COUNT)
    save_total_limit: int = _opt(2, "checkpoints kept (oldest removed; 0 = keep all)",
                                 range=Range(int, 0, 10**6, note="0 = keep all"))
    seed: int = _opt(42, "seed for init, data order and dropout", range=SEED)
    bf16: str = _opt("auto", "bf16 autocast: auto = on a CUDA GPU with bf16 support", choices=("auto", "true", "false"))
    resume: str = _opt("auto", "auto = continue from the run folder's last checkpoint if any; never; or a checkpoint path")
    allow_config_change: bool = _opt(False, "resume even though settings that shape training (learning rate, "
                                            "steps, lengths, template...) differ from the checkpoint's run; the "
                                            "change is kept in tasktune_run.json")
    on_nan: str = _opt("stop", "non-finite loss: stop (with a message) or skip the step", choices=("stop", "skip"))
    num_threads: int = _opt(0, "CPU threads for torch (0 = torch's default)",
                            range=Range(int, 0, 4096, note="0 = torch's default"))

    def __post_init__(self) -> None:
        check_types(self, parsed=("gradient_checkpointing",))  # (true/false or a mode: parse_checkpointing)
        check_ranges(self)
        check_output_folder(self.out, "--out")
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
        self.gradient_checkpointing = parse_checkpointing(self.gradient_checkpointing)  # true/false: full/none
        check_choices(self)

    @classmethod
    def range_of(cls, name: str) -> Range:
        """The declared range of numeric field `name` (for other commands' flags of the same meaning)."""
        return next(f.metadata["range"] for f in fields(cls) if f.name == name)

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
            bound = f.metadata.get("range")
            if bound is not None:
                help_text = f"{help_text}; {bound.describe()}"
            extra = {"nargs": "?", "const": f.metadata["const"]} if "const" in f.metadata else {}  # a bare flag
            parser.add_argument(flag, type=bound or kind, default=argparse.SUPPRESS,
                                choices=f.metadata.get("choices"), help=help_text, **extra)


def read_yaml_config(path: str | Path, cls: type) -> dict[str, Any]:
    """The keys of a `--config` YAML file, each parsed as its field's type and range-checked (errors name the
    file and the key)."""
    path = Path(path)
    where = f"--config {path}"  # every error names the flag and the file
    try:
        if not path.is_file():
            what = ("is a folder, not a file" if path.is_dir() else "is not a regular file (a FIFO or a device?)"
                    if path.exists() else "file not found")
            raise ConfigError(f"{where}: {what}")
        data = yamlread.load(read_text_file(path)) or {}  # duplicate keys refused
    except (OSError, UnicodeEncodeError) as exc:  # a name too long, a lone surrogate, no permission
        raise ConfigError(f"--config {str(path)!r}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of option: value")
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        kind = _field_type(cls, known[name])
        bound = known[name].metadata.get("range")
        choices = known[name].metadata.get("choices")
        if isinstance(value, bool) and choices:  # YAML reads `off`, `on`, `false`, `true` (unquoted) as booleans
            value = bool_choice(value, choices)
        try:
            if kind is bool:
                out[name] = _parse_bool(str(value))
            elif bound is not None:  # 1.5 or `true` for an integer, `.nan` for a float: refused, never rounded
                if isinstance(value, str) or bound.problem(value):
                    out[name] = bound(str(value)) if isinstance(value, str) else bound.check(name, value)
                else:
                    out[name] = kind(value)
            elif kind is str and isinstance(value, (dict, list)):
                raise TypeError
            else:
                out[name] = kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError, ConfigError) as exc:
            detail = str(exc) if isinstance(exc, (argparse.ArgumentTypeError, ConfigError)) else \
                f"expected {kind.__name__}, got {value!r}"
            raise ConfigError(f"{where}: {key}: {detail.removeprefix(name + ': ')}") from None
        # a boolean the field has no word for is the dataclass's to read (group_by_length's old true/false) or refuse
        if choices and not isinstance(value, bool) and str(out[name]) not in choices:
            raise ConfigError(f"{where}: {key}: {value!r} is not one of {', '.join(map(str, choices))}")
    return out


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig):
    """Merge dataclass defaults, the --config YAML and explicit flags into one config object; for a TrainConfig,
    the settings the user gave (in either) are checked against the method (`check_method_settings`)."""
    values: dict[str, Any] = {}
    given: dict[str, str] = {}  # field -> how the user gave it (for the error)
    if getattr(args, "config", None):
        values.update(read_yaml_config(args.config, cls))
        given.update({name: f"--config {args.config}: {name}" for name in values})
    names = {f.name for f in fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names}  # defaults are SUPPRESSed: only those typed
    values.update(flags)
    given.update({name: flag_name(name) for name in flags})
    config = cls(**values)
    if isinstance(config, TrainConfig):
        check_method_settings(config, given)
    return config


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def unread_settings(method: str, task: str, names) -> list[tuple[str, MethodFlags]]:
    """The settings among `names` that `method` does not read for `task`, each with its METHOD_FLAGS row."""
    return [(name, row) for row in METHOD_FLAGS for name in row.names
            if name in names and (method not in row.methods or task not in row.tasks)]


def check_method_settings(cfg: TrainConfig, given) -> None:
    """ConfigError for a setting the user gave (`given`: field names, or field -> how it was given, e.g.
    "--lora-r" or "--config run.yaml: lora_r"; defaults are not given) that `cfg.method` does not read: LoRA's rank
    for prefix, `--train-weights` for full... (METHOD_FLAGS), or that contradicts it (METHOD_QUANTIZATION; a
    setting that only matters with another: --prefix-hidden-size without --prefix-projection). Such settings were
    ignored (or, for qlora's --quantization-bit none, overridden) with exit 0."""
    label = dict(given) if isinstance(given, dict) else {name: flag_name(name) for name in given}
    method, task = cfg.method, cfg.task
    for name, row in unread_settings(method, task, label):
        who = f"--method {method}" + (f" --task {task}" if method in row.methods else "")
        users = ", ".join(row.methods) + ("" if row.tasks == TASKS else f" with --task {'/'.join(row.tasks)}")
        said = f"{label[name]}: {who} does not use it ({row.what}: used by {users})"
        if label[name].startswith("--config "):  # one YAML may serve several methods (make train's, with --method)
            warnings.warn(f"{said}; ignored", TaskTuneWarning, stacklevel=2)
        else:  # typed for this run: a mistake
            raise ConfigError(said)
    quant = str(cfg.quantization_bit).lower()
    if "quantization_bit" in label and quant not in METHOD_QUANTIZATION.get(method, (quant,)):
        why = ("always trains on a 4-bit (NF4) base; leave --quantization-bit out (or give 4), or use --method lora "
               "for a base that is not 4-bit") if method == "qlora" else \
            "trains every weight and cannot train a quantised base; use --quantization-bit none, or --method qlora"
        raise ConfigError(f"{label['quantization_bit']} {quant}: --method {method} {why}")
    if "prefix_projection" in label and method == "prefix" and not cfg.prefix_projection:
        raise ConfigError(f"{label['prefix_projection']} false: --method prefix always projects its prefix (what sets "
                          "it apart from ptuning-v2); use --method ptuning-v2 for a prefix without the MLP")
    if "prefix_hidden_size" in label and method == "ptuning-v2" and not cfg.prefix_projection:
        raise ConfigError(f"{label['prefix_hidden_size']}: --method ptuning-v2 uses it only with --prefix-projection "
                          "(the hidden size of its MLP); add --prefix-projection, or use --method prefix")
    if "pre_seq_len" in label and method in ("prompt", "p-tuning") and cfg.num_virtual_tokens:
        raise ConfigError(f"{label['pre_seq_len']}: --method {method} takes its virtual tokens from "
                          f"--num-virtual-tokens ({cfg.num_virtual_tokens}) and does not use it; give one of the two")
    if "train_weights" in label and quant in ("none", "8") and method != "qlora":
        raise ConfigError(f"{label['train_weights']}: --quantization-bit {quant} loads no 4-bit base, so there are no "
                          "4-bit weights to train over; leave it out, or use --quantization-bit 4")


# -- the Python API's arguments -----------------------------------------------------------------------------------

def checked_arguments(func):
    """Decorate a public Python API function: before it runs, each argument is checked against its parameter's
    annotation, so every parameter of a kind is checked as a class: a `bool` takes only True/False (`meta="no"` is a
    non-empty string, so it was true), a path (`str | Path`) only non-empty text or an os.PathLike without a NUL
    (None was pathlib's bare TypeError), a plain `str` only text; `X | None` also takes None, `*args` are checked
    one by one. Numbers are left to their Range checks. ConfigError naming the function and the parameter."""
    import functools
    import inspect

    signature = inspect.signature(func)
    where = func.__qualname__

    @functools.cache
    def kinds() -> dict[str, tuple[str, bool]]:  # parameter -> (bool | path | str, None allowed); resolved late:
        hints = typing.get_type_hints(func)      # a method's "Assistant" return type exists only after its class
        out = {}
        for name, parameter in signature.parameters.items():
            hint = hints.get(name)
            args = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
            optional = type(None) in args
            args.discard(type(None))
            kind = "bool" if args == {bool} else "path" if Path in args else "str" if args == {str} else None
            if kind:
                out[name] = (kind, optional)
        return out

    def check(name: str, value: Any, kind: str, optional: bool) -> None:
        if value is None and optional:
            return
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}: {name}: expected True or False, got {type(value).__name__} {value!r:.60}")
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{where}: {name}: expected text, got {type(value).__name__} {value!r:.60}")
        if kind == "path":
            import os

            text = os.fspath(value) if isinstance(value, os.PathLike) else value
            if not isinstance(text, str):
                raise ConfigError(f"{where}: {name}: expected a path, got {type(value).__name__} {value!r:.60}")
            if not text:
                raise ConfigError(f"{where}: {name}: expected a path, got an empty one")
            if "\0" in text:
                raise ConfigError(f"{where}: {name}: expected a path, got {value!r:.60}, which holds a NUL character")

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return func(*args, **kwargs)  # a wrong call: Python's own message, as without the check
        for name, (kind, optional) in kinds().items():
            if name not in bound.arguments:
                continue
            value = bound.arguments[name]
            many = signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL
            for item in (value if many else (value,)):
                check(name, item, kind, optional)
        return func(*args, **kwargs)

    wrapper.checked_arguments = True  # (tests: every public API function has it)
    return wrapper
