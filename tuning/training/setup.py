"""A training run's setup, before its first step: data, base model, adapter, compile/checkpointing plan, optimizer
and the resume point, as one typed record (`TrainingSetup`) that the loop in training/train.py reads.

Order matters and is kept here: the data first (a bad data folder fails before a slow model load), then the resume
check (the fingerprint of data, base and settings), then the base, the memory/compile/weights plan chosen before the
adapter goes on, and last the optimizer and scheduler, restored from the checkpoint when resuming.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tasktune.errors import ConfigError
from tasktune.tuning.config import TrainConfig
from tasktune.tuning.run import data_fingerprint
from tasktune.tuning.training import checkpoint as ckpt


@dataclass
class TrainingSetup:
    """Everything the loop needs, built by `prepare`."""

    accelerator: Any
    main: bool  # this process logs and writes the run folder (rank 0)
    world: int  # data-parallel processes
    quant: int | None  # the base's quantization bits (None: unquantized)
    tokenizer: Any
    train_set: Any
    collate: Callable
    truncation: Any  # the data's truncation report
    labels: list[str] | None  # classification labels (None: causal LM)
    fingerprint: dict[str, Any]
    resume: Any  # ckpt.ResumePoint or None
    adapter: Any
    plan: Any  # compiling.Plan: checkpointing, compile mode and base weights
    params: list
    n_trainable: int
    n_total: int
    compile_mode: str
    forward: Callable
    optimizer: Any
    scheduler: Any
    step: int
    history: list


def prepare(cfg: TrainConfig, *, log=print) -> TrainingSetup:
    from accelerate import Accelerator
    from transformers import get_scheduler

    from tasktune.tuning.model import methods
    from tasktune.tuning.model.load import check_vocabulary, load_config, load_tokenizer
    from tasktune.tuning.training import compiling, memory

    run_dir = Path(cfg.out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    use_bf16 = cfg.bf16 == "true" or (cfg.bf16 == "auto" and torch.cuda.is_available()
                                       and torch.cuda.is_bf16_supported())
    _refuse_sharded_launch()
    # cpu=True lets torchrun/accelerate launch run data-parallel on CPUs over gloo (CI has no GPU)
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    world = accelerator.num_processes
    torch.manual_seed(cfg.seed)
    quant = methods.resolve_quantization(cfg.method, cfg.task, cfg.quantization, cfg.quantization_bit)

    # data first: a bad data folder should fail before a slow model load
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, padding_side="right")
    train_set, collate, truncation, labels = _training_data(cfg, tokenizer)
    top_id = _top_token_id(train_set, tokenizer)  # past the base's embedding: an IndexError at the first step
    check_vocabulary(cfg.model, tokenizer, load_config(cfg.model, trust_remote_code=cfg.trust_remote_code), top_id)
    if main:
        log(f"train examples: {len(train_set)}; {truncation}")

    fingerprint = {"model": cfg.model, "method": cfg.method, "task": cfg.task, "pre_seq_len": cfg.pre_seq_len,
                   "prefix_projection": cfg.prefix_projection, "data": data_fingerprint(cfg.data),
                   "seed": cfg.seed, "global_batch": cfg.per_device_train_batch_size * world
                   * cfg.gradient_accumulation_steps}
    if labels is not None:
        fingerprint["labels"] = labels
    _resume_settings(cfg, fingerprint, None)
    resume = ckpt.find_resume_point(run_dir, cfg.resume, fingerprint)
    _resume_settings(cfg, fingerprint, resume)

    model = methods.load_base(cfg, quantization=quant, labels=labels,
                              device_map={"": accelerator.device} if quant else None)
    check_vocabulary(cfg.model, tokenizer, model.config, top_id, model)
    if labels is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoder classifiers pool at the last non-pad token
    if not quant:
        model.to(accelerator.device)
    # --gradient-checkpointing (tuning/training/memory.py) and --compile (tuning/training/compiling.py), chosen together before the
    # first step: graphs keep more memory, and a warm compile cache lets `--compile auto` use graphs in short runs
    plan = compiling.plan(cfg, model, device=accelerator.device, processes=world, element_bytes=2 if use_bf16 else 4,
                          quant=quant, log=log if main else None)
    if plan.weights is not None and plan.weights.mode == "bf16":  # --train-weights (tuning/training/base_weights.py)
        from tasktune.tuning.model.dequantize import dequantize_4bit_linears

        dequantize_4bit_linears(model)
    memory.apply(model, plan.checkpointing.mode)
    model.config.use_cache = False
    if resume:
        adapter = methods.load(model, resume.path, is_trainable=True)
    else:
        adapter = methods.attach(model, cfg, labels=labels)
    check_context(cfg, model.config, adapter.reserved_positions)
    if not quant:
        adapter.model.to(accelerator.device)  # what the method added (prefix encoder, PEFT modules)
    adapter.model.train()
    params = adapter.parameters()
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in adapter.model.parameters())  # the prefix encoder is registered on the model
    if main:
        log(f"{cfg.method}: trainable parameters: {n_trainable:,} of {n_total:,} "
            f"({100 * n_trainable / n_total:.4f}%)")
    # --compile: torch.compile (and CUDA graphs) for the host-bound step; fixed-width batches (tuning/training/compiling.py)
    compile_mode, forward, collate = compiling.prepare(cfg, adapter.model, collate, tokenizer, processes=world,
                                                       log=log if main else None, plan=plan)

    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps)
    step, history = 0, []
    if resume:
        optimizer.load_state_dict(resume.state["optimizer"])
        scheduler.load_state_dict(resume.state["scheduler"])
        ckpt.set_rng_state(ckpt.rng_state_for_rank(resume.state, accelerator.process_index, world))
        step, history = resume.step, list(resume.state.get("history", []))
        if main:
            log(f"resuming from {resume.path} at step {step}")

    return TrainingSetup(accelerator=accelerator, main=main, world=world, quant=quant, tokenizer=tokenizer,
                         train_set=train_set, collate=collate, truncation=truncation, labels=labels,
                         fingerprint=fingerprint, resume=resume, adapter=adapter, plan=plan, params=params,
                         n_trainable=n_trainable, n_total=n_total, compile_mode=compile_mode, forward=forward,
                         optimizer=optimizer, scheduler=scheduler, step=step, history=history)


def _resume_settings(cfg: TrainConfig, fingerprint: dict, resume) -> None:
    """Add the base model's content hash and the run's hyperparameters to `fingerprint` (before the resume
    check); with `resume`, refuse changed hyperparameters unless --allow-config-change, and keep the changes
    (with the step they apply from) in the fingerprint, which the run record holds."""
    if resume is None:
        fingerprint.update(model_content=ckpt.model_content(cfg.model),
                           hyperparameters=ckpt.hyperparameters(cfg.to_dict()))
        return
    changes = ckpt.changed_hyperparameters(resume.path, fingerprint)
    if changes and not cfg.allow_config_change:
        ckpt.refuse_config_change(resume.path, changes)
    fingerprint[ckpt.CONFIG_CHANGES] = ckpt.saved_config_changes(resume.path) + (
        [{"from_step": resume.step, "changed": changes}] if changes else [])


def _refuse_sharded_launch() -> None:
    """An `accelerate launch` with an FSDP or DeepSpeed config: refuse, since fit() shards nothing.

    The loop never hands the model to accelerator.prepare(), so those settings would be ignored
    silently and every process would hold a whole copy of the base (docs/multi-gpu.md).
    """
    for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(var, "false").lower() in ("1", "true", "yes"):
            raise ConfigError(
                f"this launch asks for {name} ({var}=true), but tasktune train does not shard the base model: "
                "every process holds a full copy and only the trainable parameters' gradients are all-reduced. "
                "Launch plain data-parallel instead (torchrun --nproc-per-node N, or accelerate launch --multi_gpu "
                "with no FSDP/DeepSpeed config); a base too large for one GPU in 16-bit can train 4-bit "
                "(--quantization-bit 4). See docs/multi-gpu.md.")


def _training_data(cfg: TrainConfig, tokenizer):
    """(examples, collate, truncation report, labels or None) for cfg.task."""
    if cfg.task == "classification":
        from tasktune.tuning.training import classify_data as classify

        records = classify.read_records(cfg.data, "train")
        labels = classify.label_names(records)
        train_set = classify.tokenize_classification(records, tokenizer, labels, cfg.max_source_length)
        return train_set, classify.make_collator(tokenizer), train_set, labels
    from tasktune.tuning.data import DataConfig, load_records, make_collator, tokenize_dataset

    data_cfg = DataConfig(prompt_column=cfg.prompt_column, response_column=cfg.response_column,
                          history_column=cfg.history_column, max_source_length=cfg.max_source_length,
                          max_target_length=cfg.max_target_length, prompt_template=cfg.prompt_template)
    records = load_records(cfg.data, "train", data_cfg)
    train_set, truncation = tokenize_dataset(records, tokenizer, data_cfg)
    return train_set, make_collator(tokenizer), truncation, None


def _top_token_id(train_set, tokenizer) -> int:
    """The largest token id the training batches hold: the examples' and the pad token's."""
    examples = getattr(train_set, "examples", None)
    rows = train_set["input_ids"] if examples is None else (e["input_ids"] for e in examples)
    top = max((max(ids, default=-1) for ids in rows), default=-1)
    return max(top, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else -1)


def check_context(cfg, model_config, reserved: int) -> None:
    """The longest record must fit the base's positions: the method's reserved ones (a prefix, virtual tokens),
    the source and, for causal-lm, the target. Past `max_position_embeddings` a base was never trained (a 5,600-
    token --prompt-init-text ran minutes a step on a 1,024-position model); a ConfigError naming the flags."""
    from tasktune.tuning.model.generate import context_limit

    context = context_limit(model_config)  # max_position_embeddings, seq_length or GPT-2's n_positions
    target = cfg.max_target_length if cfg.task == "causal-lm" else 0
    need = reserved + cfg.max_source_length + target
    if isinstance(context, int) and need > context:
        parts = [f"--max-source-length {cfg.max_source_length}"]
        if target:
            parts.append(f"--max-target-length {target}")
        if reserved:
            parts.append(f"{reserved} positions of the {cfg.method} adapter (--pre-seq-len, --num-virtual-tokens or "
                         f"the --prompt-init-text's tokens)")
        raise ConfigError(f"{' + '.join(parts)} = {need} positions, more than the base's {context} "
                          f"(the context window in {cfg.model}'s config); lower them")
