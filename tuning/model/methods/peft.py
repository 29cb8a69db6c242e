"""PEFT's methods: prompt tuning (soft, text), P-tuning, LoRA/QLoRA, and prefix tuning for classification."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from tasktune.errors import ConfigError

from .adapter import Adapter


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


def peft_config(model, cfg, method: str, task: str):
    from peft import (LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit,
                      TaskType)

    task_type = TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM
    tokens = cfg.num_virtual_tokens or cfg.pre_seq_len
    if method in ("ptuning-v2", "prefix"):  # classification only: see attach()
        projection = cfg.prefix_projection or method == "prefix"
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=cfg.pre_seq_len,
                                  prefix_projection=projection, encoder_hidden_size=cfg.prefix_hidden_size)
    if method == "prompt":  # (a --prompt-init-text given with it: tuning/config.py check_method_settings refuses)
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=tokens,
                                  prompt_tuning_init=PromptTuningInit.RANDOM)
    if method == "prompt-text":
        if not cfg.prompt_init_text.strip():
            raise ConfigError("--method prompt-text needs a non-empty --prompt-init-text")
        from tasktune.tuning.model.load import load_tokenizer

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
                          target_modules=targets if targets == "all-linear" else lora_targets(model, targets))
    raise ConfigError(f"--method {method} is not a PEFT method")  # pragma: no cover


def lora_targets(model, given: str) -> list[str]:
    """`--lora-target-modules` as PEFT takes it (module names, matched against the end of each module's path),
    checked against the base: a name no module has was PEFT's NoMatchingPeftModuleError traceback."""
    import torch.nn as nn

    names = [t.strip() for t in given.split(",")]
    modules = list(model.named_modules())
    linear = sorted({path.rsplit(".", 1)[-1] for path, module in modules
                     if isinstance(module, nn.Linear) or type(module).__name__.startswith("Linear")})
    paths = [path for path, _ in modules]
    unknown = [name for name in names if not name or not any(p == name or p.endswith("." + name) for p in paths)]
    if unknown:
        raise ConfigError(f"--lora-target-modules {given!r}: {', '.join(repr(n) for n in unknown)} is not a module of "
                          f"the base; its linear layers: {', '.join(linear)} (or all-linear)")
    return names


def attach_peft(model, cfg, method: str, task: str, labels) -> PeftAdapter:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # QLoRA recipe: norms/embeddings to fp32 for stable training; checkpointing stays as train.py set it
        # (tuning/training/memory.py: none/every-K/full; PEFT's True would turn every-K into full)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft_config(model, cfg, method, task)
    if config.peft_type.value == "PREFIX_TUNING":
        stop_checkpointing(model)
    with _quiet_peft():
        peft_model = get_peft_model(model, config)
    return PeftAdapter(peft_model, method, task, labels)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT's PeftModel reads transformers' deprecated `is_gradient_checkpointing`, so every LoRA/prompt run printed
    a FutureWarning that names neither tasktune nor anything a user can change; that one message alone is dropped."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def stop_checkpointing(model) -> None:
    """PEFT's prefix passes the prefix as a KV cache, which gradient checkpointing cannot recompute with."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            module.gradient_checkpointing = False


def load_peft(model, folder: Path, info: dict, is_trainable: bool) -> PeftAdapter:
    from peft import PeftModel

    from tasktune.tuning.model.tensors import read_tensors

    weights = folder / "adapter_model.safetensors"
    saved = read_tensors(weights)  # NaN/inf, integer tensors: PEFT loads them as found (a NaN LoRA answered, exit 0)
    if info["method"] in ("ptuning-v2", "prefix"):  # PEFT prefix (classification): see stop_checkpointing
        stop_checkpointing(model)
    try:
        with _quiet_peft():
            peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
    except KeyError as exc:  # a prompt-learning file without its tensor
        raise ConfigError(f"{weights}: lacks the tensor {exc} that {folder / 'adapter_config.json'} needs") from None
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(f"{folder}: peft could not load this adapter onto the model: {_load_error(exc)}") from None
    _check_all_used(peft_model, saved, weights)
    return PeftAdapter(peft_model, info["method"], info.get("task", "causal-lm"), info.get("labels"))


def _load_error(exc: BaseException) -> str:
    """PEFT's/torch's error on one line: a state_dict's first size mismatch, not its bare heading ("Error(s) in
    loading state_dict for PeftModelForCausalLM:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line.startswith(("size mismatch", "Missing", "Unexpected"))), None)
    return " ".join(filter(None, (lines[0] if lines else type(exc).__name__, detail)))[:600]


def _check_all_used(peft_model, saved: dict, weights: Path) -> None:
    """Every tensor of the file went into the model, and the model's adapter got every weight it has: PEFT loads
    with strict=False, so an adapter_config.json whose target_modules or layers_to_transform no longer match the
    file (or a file missing tensors) left the adapter's weights at their initial values, with exit 0."""
    from peft import get_peft_model_state_dict

    # what PEFT writes without and with the embedding layers (save_embedding_layers was the saver's choice; never
    # "auto", which asks the hub whether the base's vocabulary changed, at every load)
    least = set(get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    most = set(get_peft_model_state_dict(peft_model, save_embedding_layers=True))
    unused, missing = sorted(set(saved) - most), sorted(least - set(saved))
    if unused or missing:
        parts = [f"{len(unused)} tensor(s) the model has no place for ({', '.join(unused[:3])})"] if unused else []
        if missing:
            parts.append(f"no tensor for {len(missing)} weight(s) of the adapter ({', '.join(missing[:3])})")
        raise ConfigError(f"{weights}: does not fit the adapter its adapter_config.json describes: {'; '.join(parts)}; "
                          "the two files are of different adapters, or one was edited")
