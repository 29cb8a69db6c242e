"""The tuning methods behind `--method`: a registry, and one `Adapter` interface that train/eval/chat use.

Each method says how it attaches to a freshly loaded base (`attach`) and how a saved one comes back
(`load`); both return an `Adapter`: the model to call, the trainable parameters, `save()` and
`disabled()` (base answers from the same loaded model). Ours: P-tuning v2 (tuning/prefix.py). PEFT:
prompt tuning, P-tuning, LoRA/QLoRA and, for classification, prefix tuning. Plain torch: BitFit, full.
docs/methods.md compares them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tasktune import __version__
from tasktune import files as atomic
from tasktune.errors import ConfigError

#: Written by every method's save(): which method made the folder, for which task and labels.
METHOD_FILE = "tasktune_method.json"
BITFIT_FILE = "tasktune_bitfit.safetensors"
FULL_FILE = "tasktune_full.safetensors"
#: eval keeps a CPU copy of the base weights of a fully fine-tuned model up to this size, to answer as
#: the base from the same loaded model; above it, the base is loaded separately for the base pass.
FULL_COPY_LIMIT_BYTES = 2 << 30


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    backend: str                 # "tasktune" | "peft" | "torch"
    quantization: str = "any"    # "any": as --quantization-bit says; "4bit": always NF4; "none": never
    classification: bool = True  # usable with --task classification


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("ptuning-v2", "P-tuning v2: trained key/value prefix at every layer (ours)", "tasktune"),
    Method("prefix", "prefix tuning: the P-tuning v2 prefix through an MLP re-parametrisation (ours)", "tasktune"),
    Method("prompt", "prompt tuning, soft: random virtual-token embeddings at the input (PEFT)", "peft"),
    Method("prompt-text", "prompt tuning, hard: virtual tokens start as a text's embeddings (PEFT)", "peft"),
    Method("p-tuning", "P-tuning: virtual tokens from an MLP prompt encoder, input layer only (PEFT)", "peft"),
    Method("bitfit", "BitFit: only the bias terms train", "torch", classification=False),
    Method("lora", "LoRA: low-rank updates of the linear layers (PEFT)", "peft"),
    Method("qlora", "QLoRA: LoRA on the NF4 4-bit base (PEFT + bitsandbytes)", "peft", quantization="4bit"),
    Method("full", "full fine-tuning: every weight trains", "torch", quantization="none", classification=False),
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


# -- the interface -----------------------------------------------------------------------------------

class Adapter:
    """A tuned model as train/eval/chat see it. Subclasses fill in attach/load/save/disabled."""

    method: str = ""
    task: str = "causal-lm"
    #: context positions the method's virtual tokens take (generation must leave room for them)
    reserved_positions: int = 0
    #: the model's logits line up with the batch's tokens (no virtual tokens in the input) and its forward takes
    #: transformers' `logits_to_keep`: training may then run the LM head on the answer positions only
    answer_logits: bool = False

    def __init__(self, model: nn.Module, labels: list[str] | None = None):
        self.model = model  # what to call: forward, generate
        self.labels = labels

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters, in a fixed order (the optimizer state is saved by position)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Inside the block, the yielded model answers as the untuned base."""
        raise NotImplementedError
        yield  # pragma: no cover

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        """Write the method's weight/config files into `folder`; return their names."""
        raise NotImplementedError

    def save(self, folder, *, base_model: str, extra: dict | None = None) -> Path:
        """Save into `folder` (created if needed): the method's own format, then METHOD_FILE last.

        The saved configs name the base as `base_model_reference(base_model)` (a local folder's absolute path),
        so `AutoPeftModelForCausalLM.from_pretrained(folder)` finds it from any working directory; METHOD_FILE
        keeps the name as given too (`base_model_given`), as tasktune_run.json's config.model does."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        reference = base_model_reference(base_model)
        files = self.save_weights(folder, reference, extra or {})
        for name in files:  # libraries write some files 0600 (safetensors): give them the umask's mode
            atomic.settle(folder / name)
        info = {"method": self.method, "task": self.task, "labels": self.labels, "base_model": reference,
                "base_model_given": base_model, "files": sorted(files), "tasktune_version": __version__,
                "extra": extra or {}}
        atomic.write_json(folder / METHOD_FILE, info)
        return folder


def read_method_info(folder) -> dict[str, Any]:
    """METHOD_FILE of a saved adapter; folders from before it existed are P-tuning v2 (PEFT PREFIX_TUNING)."""
    folder = Path(folder)
    path = folder / METHOD_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if (folder / "adapter_config.json").is_file():
        return {"method": "ptuning-v2", "task": "causal-lm", "labels": None}
    raise ConfigError(f"{folder}: neither {METHOD_FILE} nor adapter_config.json; not a tasktune adapter folder")


def folder_bytes(folder, files: list[str]) -> int:
    """Bytes of the named files in `folder` (what a method's checkpoint costs on disk)."""
    return sum((Path(folder) / name).stat().st_size for name in files if (Path(folder) / name).is_file())


# -- ours: P-tuning v2 / prefix ----------------------------------------------------------------------

class PrefixAdapter(Adapter):
    """tuning/prefix.py's prefix; saved in PEFT's PREFIX_TUNING format by tuning/save.py."""

    def __init__(self, model, tuner, method: str):
        super().__init__(model)
        self.tuner, self.method = tuner, method
        self.reserved_positions = tuner.config.pre_seq_len
        self.answer_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.tuner.encoder.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        with self.tuner.disabled():
            yield self.model

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        from tasktune.tuning.save import CONFIG_NAME, ENCODER_NAME, RECORD_NAME, WEIGHTS_NAME, save_adapter

        save_adapter(self.tuner, folder, base_model=base_model, extra=extra)
        return [CONFIG_NAME, WEIGHTS_NAME, RECORD_NAME] + ([ENCODER_NAME] if self.tuner.config.prefix_projection else [])


def _attach_prefix(model, cfg, method: str) -> PrefixAdapter:
    from tasktune.tuning.prefix import PrefixConfig, attach_prefix

    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=cfg.pre_seq_len,
                                              prefix_projection=cfg.prefix_projection or method == "prefix",
                                              prefix_hidden_size=cfg.prefix_hidden_size,
                                              prefix_dropout=cfg.prefix_dropout))
    return PrefixAdapter(model, tuner, method)


def _load_prefix(model, folder: Path, info: dict, is_trainable: bool) -> PrefixAdapter:
    from tasktune.tuning.save import load_adapter

    return PrefixAdapter(model, load_adapter(model, folder, is_trainable=is_trainable), info["method"])


# -- PEFT: prompt, prompt-text, p-tuning, lora, qlora (and prefix tuning for classification) ----------

class PeftAdapter(Adapter):
    """A `peft.PeftModel`; saved with `save_pretrained`, so `PeftModel.from_pretrained(base, folder)` loads it."""

    def __init__(self, peft_model, method: str, task: str, labels: list[str] | None):
        super().__init__(peft_model, labels)
        self.method, self.task = method, task
        config = peft_model.peft_config[peft_model.active_adapter]
        # prompt/p-tuning tokens sit in the input and take positions; a prefix takes cache slots (positions too)
        self.reserved_positions = int(config.num_virtual_tokens or 0) if config.is_prompt_learning else 0

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        pm = self.model
        config = pm.peft_config[pm.active_adapter]
        if not config.is_prompt_learning or hasattr(pm.base_model, "prepare_inputs_for_generation"):
            with pm.disable_adapter():
                yield pm
            return
        # peft 0.21's disable_adapter() fails for prompt learning on models without
        # prepare_inputs_for_generation (sequence classifiers): call the base forward, and the
        # classifier head's original (untrained) copy, ourselves.
        from peft.utils.other import ModulesToSaveWrapper

        wrappers = [m for m in pm.modules() if isinstance(m, ModulesToSaveWrapper)]
        pm.forward = pm.base_model.forward
        for wrapper in wrappers:
            wrapper.enable_adapters(False)
        try:
            yield pm
        finally:
            del pm.forward  # back to the class's forward
            for wrapper in wrappers:
                wrapper.enable_adapters(True)

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        self.model.peft_config[self.model.active_adapter].base_model_name_or_path = base_model
        self.model.save_pretrained(str(folder))
        return ["adapter_config.json", "adapter_model.safetensors"]


def _peft_config(model, cfg, method: str, task: str):
    from peft import (LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit,
                      TaskType)

    task_type = TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM
    tokens = cfg.num_virtual_tokens or cfg.pre_seq_len
    if method in ("ptuning-v2", "prefix"):  # classification only: see attach()
        projection = cfg.prefix_projection or method == "prefix"
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=cfg.pre_seq_len,
                                  prefix_projection=projection, encoder_hidden_size=cfg.prefix_hidden_size)
    if method == "prompt":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=tokens,
                                  prompt_tuning_init=PromptTuningInit.RANDOM)
    if method == "prompt-text":
        if not cfg.prompt_init_text.strip():
            raise ConfigError("--method prompt-text needs a non-empty --prompt-init-text")
        from tasktune.tuning.load import load_tokenizer

        # as peft counts it when it initialises: the text through the tokenizer, special tokens included
        text_tokens = len(load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)(
            cfg.prompt_init_text)["input_ids"])
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=cfg.num_virtual_tokens or text_tokens,
                                  prompt_tuning_init=PromptTuningInit.TEXT,
                                  prompt_tuning_init_text=cfg.prompt_init_text, tokenizer_name_or_path=cfg.model,
                                  tokenizer_kwargs={"trust_remote_code": cfg.trust_remote_code})
    if method == "p-tuning":
        return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=tokens,
                                   encoder_hidden_size=cfg.encoder_hidden_size)
    if method in ("lora", "qlora"):
        targets = cfg.lora_target_modules.strip()
        return LoraConfig(task_type=task_type, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout,
                          target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")])
    raise ConfigError(f"--method {method} is not a PEFT method")  # pragma: no cover


def _attach_peft(model, cfg, method: str, task: str, labels) -> PeftAdapter:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # QLoRA recipe: norms/embeddings to fp32 for stable training; checkpointing stays as train.py set it
        # (tuning/memory.py: none/every-K/full; PEFT's True would turn every-K into full)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = _peft_config(model, cfg, method, task)
    if config.peft_type.value == "PREFIX_TUNING":
        _stop_checkpointing(model)
    peft_model = get_peft_model(model, config)
    return PeftAdapter(peft_model, method, task, labels)


def _stop_checkpointing(model) -> None:
    """PEFT's prefix passes the prefix as a KV cache, which gradient checkpointing cannot recompute with."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            module.gradient_checkpointing = False


def _load_peft(model, folder: Path, info: dict, is_trainable: bool) -> PeftAdapter:
    from peft import PeftModel

    if info["method"] in ("ptuning-v2", "prefix"):  # PEFT prefix (classification): see _stop_checkpointing
        _stop_checkpointing(model)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise ConfigError(f"{folder}: peft could not load this adapter onto the model: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return PeftAdapter(peft_model, info["method"], info.get("task", "causal-lm"), info.get("labels"))


# -- plain torch: BitFit and full fine-tuning ----------------------------------------------------------

def _bias_names(model) -> list[str]:
    return [name for name, _ in model.named_parameters() if name == "bias" or name.endswith(".bias")]


class BitFitAdapter(Adapter):
    """Only the biases train; the originals stay in a CPU copy (biases are tiny), swapped in by disabled()."""

    method = "bitfit"

    def __init__(self, model, names: list[str]):
        super().__init__(model)
        params = dict(model.named_parameters())
        self.names = names
        self.original = {n: params[n].detach().to("cpu", copy=True) for n in names}

    def parameters(self) -> list[nn.Parameter]:
        params = dict(self.model.named_parameters())
        return [params[n] for n in self.names if params[n].requires_grad]

    def _copy_in(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        previous = {}
        with torch.no_grad():
            for name, value in tensors.items():
                previous[name] = params[name].detach().to("cpu", copy=True)
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return previous

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        tuned = self._copy_in(self.original)
        try:
            yield self.model
        finally:
            self._copy_in(tuned)

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        from safetensors.torch import save_file

        params = dict(self.model.named_parameters())
        save_file({n: params[n].detach().to("cpu").contiguous() for n in self.names}, str(folder / BITFIT_FILE),
                  metadata={"format": "pt"})
        return [BITFIT_FILE]


def _attach_bitfit(model) -> BitFitAdapter:
    names = _bias_names(model)
    if not names:
        cfg = model.config
        hints = {k: getattr(cfg, k) for k in ("attention_bias", "mlp_bias", "add_bias_linear", "add_qkv_bias")
                 if hasattr(cfg, k)}
        raise ConfigError(
            f"--method bitfit: {type(model).__name__} has no bias parameters"
            f"{' (' + ', '.join(f'{k}={v}' for k, v in hints.items()) + ')' if hints else ''}, so BitFit has "
            "nothing to train. Use a model with biases (e.g. Qwen2: q/k/v biases; BERT) or another --method.")
    for param in model.parameters():
        param.requires_grad_(False)
    params = dict(model.named_parameters())
    for name in names:
        params[name].data = params[name].data.float()  # train biases in fp32 whatever the base dtype
        params[name].requires_grad_(True)
    return BitFitAdapter(model, names)


def _load_bitfit(model, folder: Path, is_trainable: bool) -> BitFitAdapter:
    tensors = _read_safetensors(folder / BITFIT_FILE)
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ConfigError(f"{folder / BITFIT_FILE}: biases {unknown[:3]} are not in {type(model).__name__}; "
                          "saved for a different base model")
    for param in model.parameters():
        param.requires_grad_(False)
    adapter = BitFitAdapter(model, sorted(tensors))
    adapter._copy_in(tensors)
    for name in adapter.names:
        params[name].requires_grad_(is_trainable)
    return adapter


class FullAdapter(Adapter):
    """Every weight trains; saved whole (safetensors). The base pass swaps in a CPU copy of the base
    weights when it is small enough, else it loads the base again (`reload_base`)."""

    method = "full"

    def __init__(self, model, original: dict[str, torch.Tensor] | None = None,
                 reload_base: Callable[[], nn.Module] | None = None):
        super().__init__(model)
        self.original, self.reload_base = original, reload_base

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        if self.original is not None:
            tuned = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.original)
            try:
                yield self.model
            finally:
                self.model.load_state_dict(tuned)
        elif self.reload_base is not None:
            base = self.reload_base()
            try:
                yield base
            finally:
                del base
        else:
            raise ConfigError("full fine-tuning: no copy of the base weights and no way to reload the base")

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        from safetensors.torch import save_model

        save_model(self.model, str(folder / FULL_FILE), metadata={"format": "pt"})
        return [FULL_FILE]


def _attach_full(model) -> FullAdapter:
    for param in model.parameters():
        param.requires_grad_(True)
    return FullAdapter(model)


def _load_full(model, folder: Path, is_trainable: bool, reload_base) -> FullAdapter:
    from safetensors.torch import load_model

    path = folder / FULL_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; not a folder saved by --method full")
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    original = ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if size <= FULL_COPY_LIMIT_BYTES else None)
    try:
        load_model(model, str(path), strict=True)
    except Exception as exc:  # shape/key mismatch or a corrupt file
        raise ConfigError(f"{path}: does not fit {type(model).__name__}: {str(exc).splitlines()[0]}") from None
    for param in model.parameters():
        param.requires_grad_(is_trainable)
    return FullAdapter(model, original, None if original is not None else reload_base)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConfigError(f"{path}: missing adapter weights")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise ConfigError(f"{path}: unreadable safetensors file (truncated or corrupt?): {exc}") from None


# -- entry points --------------------------------------------------------------------------------------

def attach(model, cfg, *, labels: list[str] | None = None) -> Adapter:
    """Make `model` (freshly loaded, frozen) trainable per `cfg.method` / `cfg.task`; return its Adapter.

    For --task classification the P-tuning v2/prefix methods use PEFT's PrefixTuningConfig(SEQ_CLS):
    our attention-interface prefix needs decoder attention (k_proj, causal masks) and cannot reach BERT-like
    encoders, and PEFT also trains and saves the new classifier head (modules_to_save).
    """
    method = get_method(cfg.method)
    task = getattr(cfg, "task", "causal-lm")
    resolve_quantization(cfg.method, task, None)  # raises for unsupported method/task pairs
    if method.backend == "tasktune" and task == "causal-lm":
        return _attach_prefix(model, cfg, cfg.method)
    if method.backend in ("tasktune", "peft"):
        return _attach_peft(model, cfg, cfg.method, task, labels)
    if cfg.method == "bitfit":
        return _attach_bitfit(model)
    return _attach_full(model)


def load(model, folder, *, is_trainable: bool = False, reload_base: Callable[[], nn.Module] | None = None) -> Adapter:
    """Put the adapter saved in `folder` onto `model`; `reload_base` serves the base pass of big full runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"adapter folder {folder} does not exist")
    info = read_method_info(folder)
    method = get_method(info.get("method", ""))
    task = info.get("task", "causal-lm")
    if method.backend == "tasktune" and task == "causal-lm":
        return _load_prefix(model, folder, info, is_trainable)
    if method.backend in ("tasktune", "peft"):
        return _load_peft(model, folder, info, is_trainable)
    if method.name == "bitfit":
        return _load_bitfit(model, folder, is_trainable)
    return _load_full(model, folder, is_trainable, reload_base)


def base_model_reference(name: str) -> str:
    """How a saved adapter names its base: a local folder as its absolute path (loading then works from any
    working directory), anything else (a hub id) as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


_BASE_KEYS = {"adapter_config.json": "base_model_name_or_path", METHOD_FILE: "base_model"}


def recorded_base(run_dir) -> tuple[str | None, Path]:
    """The base model a saved adapter names (adapter_config.json's base_model_name_or_path, else METHOD_FILE's
    base_model), and the file that names it; None when neither does."""
    folder = Path(run_dir)
    for path in (folder / "adapter_config.json", folder / METHOD_FILE):
        key = _BASE_KEYS[path.name]
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value), path
    return None, folder / "adapter_config.json"


def base_source(given: str, run_dir) -> str:
    """Where to load a run's base model from: the absolute folder its adapter config names, when it exists;
    else the name it was trained with (tasktune_run.json config.model: a hub id, or a path from the current
    directory, used with a warning). A recorded folder that is gone, with no folder under the name given
    either, is a ConfigError naming both."""
    import warnings

    given = str(given)
    recorded, where = recorded_base(run_dir)
    if recorded is None or not Path(recorded).is_absolute():  # a hub id, or a run saved before absolute paths
        return given
    if Path(recorded).is_dir():
        return recorded
    here = Path(given).expanduser()
    if recorded != given and here.is_dir():
        warnings.warn(f"{run_dir}: the base model folder it was trained on, {recorded}, no longer exists; loading "
                      f"{here.resolve()} ({given!r}, the name it was trained with, from the current directory)",
                      stacklevel=2)
        return given
    also = "" if recorded == given else f" and {given!r} (the name given to `tasktune train --model`) is no folder " \
                                        f"from {Path.cwd()} either"
    raise ConfigError(
        f"{run_dir}: its base model folder {recorded} (named in {where}) does not exist any more (moved or "
        f"deleted?){also}; move the model back to {recorded}, or write its new place as "
        f"\"{_BASE_KEYS[where.name]}\" in {where}"
    )


def load_base(cfg, *, quantization: int | None, labels: list[str] | None = None, device_map=None,
              model: str | None = None):
    """The run's frozen base model (causal LM, or a sequence classifier with `labels`) from its TrainConfig;
    `model`: where to load it from instead of `cfg.model` (a run's `base_source`)."""
    from tasktune.tuning.load import load_model

    kwargs: dict[str, Any] = {}
    task = cfg.task
    if task == "classification":
        if not labels:
            raise ConfigError("a classification run needs its label list (none recorded)")
        kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)},
                      ignore_mismatched_sizes=True)  # a checkpoint's own head (other label count) is replaced
    model = load_model(model or cfg.model, quantization_bit=quantization, trust_remote_code=cfg.trust_remote_code,
                       allow_pickle=cfg.allow_pickle, device_map=device_map, task=task, **kwargs)
    return model
