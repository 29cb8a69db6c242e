"""The tuning methods behind `--method`: a registry that dispatches, and one `Adapter` interface that
train/eval/chat use.

Each method belongs to a family per task (ours: the P-tuning v2 prefix of tuning/model/prefix.py; PEFT: prompt
tuning, P-tuning, LoRA/QLoRA and, for classification, prefix tuning; plain torch: BitFit, full); a family says
how it attaches to a freshly loaded base (`attach`) and how a saved one comes back (`load`); both return an
`Adapter`: the model to call, the trainable parameters, `save()` and `disabled()` (base answers from the same
loaded model). docs/methods.md compares them.

    adapter.py  the Adapter interface, METHOD_FILE
    ours.py     P-tuning v2 / prefix (causal LM)
    peft.py     PEFT's methods
    weights.py  BitFit and full fine-tuning
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from tasktune.errors import ConfigError
from tasktune.tuning.model.load import base_model_reference, base_source, load_base, recorded_base  # noqa: F401
from tasktune.tuning.run import ADAPTER_FILES, read_json_object

from .adapter import METHOD_FILE, Adapter, folder_bytes, read_method_info  # noqa: F401
from .ours import PrefixAdapter, attach_prefix, load_prefix
from .peft import PeftAdapter, attach_peft, load_peft
from .peft_files import check_adapter_config
from .weights import (BITFIT_FILE, FULL_COPY_LIMIT_BYTES, FULL_FILE, BitFitAdapter, FullAdapter,  # noqa: F401
                      attach_bitfit, attach_full, load_bitfit, load_full)


@dataclass(frozen=True)
class Family:
    """How one family of methods attaches to a base and loads back: (model, cfg, method, task, labels) ->
    Adapter, and (model, folder, info, is_trainable, reload_base) -> Adapter."""

    attach: Callable[..., Adapter]
    load: Callable[..., Adapter]


FAMILIES: dict[str, Family] = {
    "ours": Family(lambda model, cfg, method, task, labels: attach_prefix(model, cfg, method),
                   lambda model, folder, info, trainable, reload_base: load_prefix(model, folder, info, trainable)),
    "peft": Family(lambda model, cfg, method, task, labels: attach_peft(model, cfg, method, task, labels),
                   lambda model, folder, info, trainable, reload_base: load_peft(model, folder, info, trainable)),
    "bitfit": Family(lambda model, cfg, method, task, labels: attach_bitfit(model),
                     lambda model, folder, info, trainable, reload_base: load_bitfit(model, folder, trainable)),
    "full": Family(lambda model, cfg, method, task, labels: attach_full(model),
                   lambda model, folder, info, trainable, reload_base: load_full(model, folder, trainable,
                                                                               reload_base)),
}


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    backend: str                 # "tasktune" | "peft" | "torch"
    quantization: str = "any"    # "any": as --quantization-bit says; "4bit": always NF4; "none": never
    families: dict[str, str] = field(default_factory=dict)  # task -> FAMILIES key; a task not here: unsupported
    peft_type: str | None = None  # the `peft_type` of the adapter_config.json its saves write (None: no such file)
    own_file: str | None = None   # the weight file of a method that writes no adapter_config.json

    @property
    def classification(self) -> bool:
        """Usable with --task classification."""
        return "classification" in self.families

    def family(self, task: str) -> Family:
        if task not in self.families:
            raise ConfigError(f"--method {self.name} does not support --task {task}")
        return FAMILIES[self.families[task]]


OURS = {"causal-lm": "ours", "classification": "peft"}
PEFT = {"causal-lm": "peft", "classification": "peft"}
REGISTRY: dict[str, Method] = {m.name: m for m in (
    # ours for causal LMs; for classification PEFT's PrefixTuningConfig(SEQ_CLS): our attention-interface prefix
    # needs decoder attention (k_proj, causal masks), and PEFT also trains and saves the new classifier head
    Method("ptuning-v2", "P-tuning v2: trained key/value prefix at every layer (ours)", "tasktune",
           families=OURS, peft_type="PREFIX_TUNING"),
    Method("prefix", "prefix tuning: the P-tuning v2 prefix through an MLP re-parametrisation (ours)", "tasktune",
           families=OURS, peft_type="PREFIX_TUNING"),
    Method("prompt", "prompt tuning, soft: random virtual-token embeddings at the input (PEFT)", "peft",
           families=PEFT, peft_type="PROMPT_TUNING"),
    Method("prompt-text", "prompt tuning, hard: virtual tokens start as a text's embeddings (PEFT)", "peft",
           families=PEFT, peft_type="PROMPT_TUNING"),
    Method("p-tuning", "P-tuning: virtual tokens from an MLP prompt encoder, input layer only (PEFT)", "peft",
           families=PEFT, peft_type="P_TUNING"),
    Method("bitfit", "BitFit: only the bias terms train", "torch", families={"causal-lm": "bitfit"},
           own_file=BITFIT_FILE),
    Method("lora", "LoRA: low-rank updates of the linear layers (PEFT)", "peft", families=PEFT, peft_type="LORA"),
    Method("qlora", "QLoRA: LoRA on the NF4 4-bit base (PEFT + bitsandbytes)", "peft", quantization="4bit",
           families=PEFT, peft_type="LORA"),
    Method("full", "full fine-tuning: every weight trains", "torch", quantization="none",
           families={"causal-lm": "full"}, own_file=FULL_FILE),
)}


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def resolve_quantization(method: str, task: str, configured: int | None, explicit: str = "auto") -> int | None:
    """The base's quantization for `method`: qlora is always 4-bit, full never (an explicit 4/8 is an error)."""
    m = get_method(method)
    if task == "classification" and not m.classification:
        raise ConfigError(f"--method {method} does not support --task classification; use ptuning-v2, prefix, "
                          "prompt, prompt-text, p-tuning, lora or qlora")
    if m.quantization == "4bit":
        return 4
    if m.quantization == "none":
        if str(explicit) in ("4", "8"):
            raise ConfigError(f"--method {method} trains every weight and cannot train a {explicit}-bit base; "
                              "use --quantization-bit none, or --method qlora")
        return None
    return configured


def attach(model, cfg, *, labels: list[str] | None = None) -> Adapter:
    """Make `model` (freshly loaded, frozen) trainable per `cfg.method` / `cfg.task`; return its Adapter.

    For --task classification the P-tuning v2/prefix methods use PEFT's PrefixTuningConfig(SEQ_CLS):
    our attention-interface prefix needs decoder attention (k_proj, causal masks) and cannot reach BERT-like
    encoders, and PEFT also trains and saves the new classifier head (modules_to_save).
    """
    task = getattr(cfg, "task", "causal-lm")
    resolve_quantization(cfg.method, task, None)  # raises for unsupported method/task pairs
    return get_method(cfg.method).family(task).attach(model, cfg, cfg.method, task, labels)


def load(model, folder, *, is_trainable: bool = False, reload_base: Callable[[], nn.Module] | None = None) -> Adapter:
    """Put the adapter saved in `folder` onto `model`; `reload_base` serves the base pass of big full runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"adapter folder {folder} does not exist")
    return _load_checked(model, folder, check_method_files(folder), is_trainable, reload_base)


def _load_checked(model, folder: Path, info: dict, is_trainable: bool = False,
                  reload_base: Callable[[], nn.Module] | None = None) -> Adapter:
    """`load` once `check_method_files(folder)` gave `info`."""
    task = info.get("task", "causal-lm")
    return get_method(info.get("method", "")).family(task).load(model, folder, info, is_trainable, reload_base)


def check_method_files(folder: Path) -> dict:
    """METHOD_FILE of `folder`, once the adapter files there are those its `method`, `task` and `files` say: an
    edited `method` (lora, prompt, prefix...) or `task` (classification) loaded a P-tuning v2 prefix through another
    family, and eval answered with exit 0 as if nothing had changed."""
    info = read_method_info(folder)
    task = info.get("task", "causal-lm")
    method = get_method(info.get("method", ""))
    method.family(task)  # (a task the method does not support: ConfigError)
    where = folder / METHOD_FILE
    listed = info.get("files")
    missing = [name for name in listed if isinstance(name, str) and not (folder / name).is_file()] \
        if isinstance(listed, list) else []
    if missing:
        raise ConfigError(f"{where}: files lists {missing[0]}, which {folder} lacks; the folder is incomplete, or "
                          "its records were edited")
    disagree = f"the records disagree with the adapter files ({METHOD_FILE} edited, or files of two runs mixed)"
    if method.own_file is not None:
        if not (folder / method.own_file).is_file():
            raise ConfigError(f"{where}: method is {method.name!r}, whose weights are {method.own_file}, which "
                              f"{folder} lacks: {disagree}")
        return info
    config_path = folder / ADAPTER_FILES[0]
    if not config_path.is_file():
        raise ConfigError(f"{where}: method is {method.name!r}, whose adapter is PEFT's {method.peft_type} in "
                          f"{ADAPTER_FILES[0]}, which {folder} lacks: {disagree}")
    config = read_json_object(config_path)
    check_adapter_config(config, config_path, folder / ADAPTER_FILES[1])  # its values and shapes, before PEFT's
    task_type = "SEQ_CLS" if task == "classification" else "CAUSAL_LM"
    found = {"peft_type": config.get("peft_type"), "task_type": config.get("task_type")}
    for key, want, said in (("peft_type", method.peft_type, f"method is {method.name!r}"),
                            ("task_type", task_type, f"task is {task!r}")):
        if found[key] != want:
            raise ConfigError(f"{where}: {said}, whose adapter has {key} {want}, but {config_path} has {key} "
                              f"{found[key]!r}: {disagree}")
    if method.name == "prefix" and config.get("prefix_projection") is not True:
        raise ConfigError(f"{where}: method is 'prefix', whose prefix goes through an MLP (prefix_projection), but "
                          f"{config_path} has prefix_projection {config.get('prefix_projection')!r}: {disagree}")
    return info


def load_run_adapter(run_dir: Path, record):
    """The run's base model (as trained: same quantization) with its adapter on, in eval mode (`record`: the
    run's RunRecord)."""
    info = check_method_files(Path(run_dir))  # before the base loads
    quant = record.quantization
    source = base_source(record.config.model, run_dir)  # from any directory

    def reload_base():  # only for the base pass of a full fine-tune too big to keep a CPU copy of
        return load_base(record.config, model=source, quantization=quant, labels=record.labels,
                         device_map=device_map(quant))

    adapter = _load_checked(reload_base(), Path(run_dir), info, reload_base=reload_base)
    adapter.model.eval()
    return adapter


def device_map(quant) -> dict | None:
    """Where a loaded base goes: the first GPU when there is one (4-bit or not), else the CPU (None)."""
    import torch

    if torch.cuda.is_available():
        return {"": 0}
    return None

