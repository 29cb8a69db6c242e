"""The training loop: frozen base + a tuning method's trainable parameters, accumulation, checkpoints, resume.

Every method (tuning/model/methods/: P-tuning v2, prefix, prompt, P-tuning, BitFit, LoRA, QLoRA, full) comes
through one `Adapter`, so the loop has no per-method branches.

Order of one optimizer step (as nanoGPT's loop reads): set lr -> accumulate micro-batches ->
all-reduce prefix grads (multi-GPU) -> clip -> step -> zero_grad -> log -> checkpoint -> stop.
Data order is a pure function of (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one; RNG and optimizer state come back from the checkpoint.

Longer than 300 lines because the loop itself is one function on purpose (read top to bottom, as nanoGPT's is); its
setup is training/setup.py and its helpers (batches, logging, the loss plot) are small functions below it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from tasktune.errors import ConfigError, TaskTuneError
from tasktune.runlock import raise_if_terminated
from tasktune.tuning.training import checkpoint as ckpt, compiling
from tasktune.tuning.training.setup import prepare
from tasktune.tuning.config import TrainConfig
from tasktune.tuning.data import IGNORE_INDEX
from tasktune.tuning.run import HISTORY_FILE, LOGS_DIR, LOSS_PLOT, RunFolder, environment_info
from tasktune.files import write_json as write_json_atomic
from tasktune.libwrites import library_writes


class TrainingDiverged(TaskTuneError):
    """The loss became NaN/inf."""


@dataclass
class FitResult:
    run_dir: Path
    steps: int
    final_loss: float | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def answer_loss(forward, batch: dict, n_items=None, accum: int = 1) -> torch.Tensor:
    """The causal-LM loss with the LM head run only where a position predicts an answer token (transformers'
    `logits_to_keep` as indices: the columns where any row's next label counts), not over the prompt.

    Equals `forward(**batch).loss / accum`, or `forward(**batch, num_items_in_batch=n_items).loss`; on the demo's
    6-layer tiny model (vocabulary 1.7k, hidden 128) the head is about an eighth of the step's matmul work and
    ~60 % of the positions are prompt (benchmarks/RESULTS.md: 5-10 % less time per step)."""
    import torch.nn.functional as F

    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = forward(**inputs, logits_to_keep=keep).logits
    if logits.shape[1] != keep.numel():
        raise ConfigError(f"{type(forward).__name__}: its forward takes logits_to_keep "
                          "but did not honour it as positions; train with --answer-logits false")
    picked = targets[:, keep]
    total = F.cross_entropy(logits.float().flatten(0, 1), picked.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    if n_items is not None:
        return total / n_items
    return total / (picked != IGNORE_INDEX).sum() / accum  # no answer token: NaN, as transformers' mean gives


# -- data order ----------------------------------------------------------------------------------

def batch_indices(n: int, global_batch: int, seed: int, start: int = 0,
                  lengths: list[int] | None = None, window: int = 16) -> Iterator[list[int]]:
    """Endless stream of global micro-batches: epoch e is a permutation drawn from seed + e.

    `start` skips that many micro-batches (resume). Incomplete tail batches are dropped unless
    the data set is smaller than one batch. With `lengths` (one per example), each run of `window`
    batches of the permutation is sorted by length before it is cut, and the batches are then shuffled:
    a batch holds examples of similar length (less padding), still a random set each epoch.
    """
    if n == 0:
        raise ConfigError("the training set is empty")
    per_epoch = max(1, n // global_batch)
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        if n < global_batch:  # tiny data: repeat the permutation to fill a batch
            order = (order * math.ceil(global_batch / n))[: global_batch]
        elif lengths is not None:
            order = _length_grouped(order[: per_epoch * global_batch], lengths, global_batch, window, seed + epoch)
        for b in range(offset, per_epoch):
            yield order[b * global_batch:(b + 1) * global_batch]
        epoch, offset = epoch + 1, 0


def step_micro_batches(draws: list[list[int]], rank: int, per_device: int,
                       lengths: list[int] | None = None) -> list[list[int]]:
    """This rank's micro-batches for one optimizer step, from the step's `draws` (one global batch per accumulation
    step). With `lengths` (`--group-by-length step`) the step's examples are pooled, sorted by length and cut again
    into as many micro-batches: the step sees the same random examples, each micro-batch pads less."""
    if lengths is not None:
        width = len(draws[0])
        pooled = sorted((i for d in draws for i in d), key=lengths.__getitem__)
        draws = [pooled[k * width:(k + 1) * width] for k in range(len(draws))]
    return [d[rank * per_device:(rank + 1) * per_device] for d in draws]


def _length_grouped(order: list[int], lengths: list[int], batch: int, window: int, seed: int) -> list[int]:
    from tasktune.tuning.data import group_by_length

    batches = group_by_length(order, lengths.__getitem__, batch, window)
    shuffled = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed + 10_000)).tolist()
    return [i for b in shuffled for i in batches[b]]


# -- the loop ------------------------------------------------------------------------------------

def fit(cfg: TrainConfig, *, log=print) -> FitResult:
    """Train per `cfg` (method, task); returns when max_steps are done (or raises with a clear message).

    One process per run folder (a second one is refused, naming the first); SIGTERM saves a checkpoint as
    Ctrl-C does (then `Terminated`, exit 143 from the CLI); see `_run_guard`."""
    with _run_guard(cfg):
        return _fit(cfg, log=log)


@contextlib.contextmanager
def _run_guard(cfg: TrainConfig) -> Iterator[None]:
    """The run folder checked for links out of it, locked (by rank 0 of a launch: one lock per run), and SIGTERM
    raising `Terminated` (a KeyboardInterrupt: the loop's Ctrl-C checkpoint) for the whole run (issue 21)."""
    from tasktune.envvars import launched_rank
    from tasktune.runlock import run_lock, sigterm_as_interrupt

    run_dir = Path(cfg.out)
    ckpt.check_run_folder(run_dir)
    lock = run_lock(run_dir) if launched_rank() == 0 else contextlib.nullcontext()
    with _no_empty_parents(run_dir), lock, sigterm_as_interrupt():
        yield


@contextlib.contextmanager
def _no_empty_parents(run_dir: Path) -> Iterator[None]:
    """A run that fails leaves no empty folders it created above its run folder (`runs/` of `--out runs/R`, when
    the model could not load); the run folder too, if it is empty. A folder holding anything is kept."""
    created = [p for p in [run_dir.absolute(), *run_dir.absolute().parents] if not os.path.lexists(p)]
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _fit(cfg: TrainConfig, *, log=print) -> FitResult:
    from accelerate.utils import gather_object

    run_dir = Path(cfg.out)
    setup = prepare(cfg, log=log)  # data, base, adapter, compile plan, optimizer, resume point (training/setup.py)
    accelerator, main, world = setup.accelerator, setup.main, setup.world
    adapter, params, train_set, collate = setup.adapter, setup.params, setup.train_set, setup.collate
    optimizer, scheduler, plan, forward = setup.optimizer, setup.scheduler, setup.plan, setup.forward
    compile_mode, labels, fingerprint, resume = setup.compile_mode, setup.labels, setup.fingerprint, setup.resume
    step, history = setup.step, setup.history

    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        if resume is None:  # a fresh start (--resume never): the old run's checkpoints must not be resumed later
            moved = ckpt.set_aside_checkpoints(run_dir)
            if moved:
                log(f"starting over: moved the previous run's checkpoints to {moved}")
        ckpt.write_fingerprint(run_dir, fingerprint)
    writer = _tensorboard(run_dir) if main else None
    truncation = setup.truncation
    record = {"config": cfg.to_dict(), "fingerprint": fingerprint, "trainable_parameters": setup.n_trainable,
              "total_parameters": setup.n_total, "labels": labels,
              "truncation": truncation.to_dict() if hasattr(truncation, "to_dict") else str(truncation),
              "environment": environment_info(), "quantization": setup.quant,
              "checkpointing": plan.checkpointing.to_dict(), "compile": compile_mode,
              "base_weights": plan.weights.to_dict() if plan.weights is not None else None}

    def save_to(folder: Path) -> None:
        with library_writes(folder):  # safetensors' error for a full disk: an OSError naming the folder
            adapter.save(folder, base_model=cfg.model,
                         extra={"prompt_template": cfg.prompt_template, "seed": cfg.seed,
                                "data": fingerprint["data"], "step": step})

    def save_checkpoint(rng: dict | None = None, rng_ranks: list | None = None) -> Path:
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng or ckpt.rng_state(), "history": history, "loss_window": list(window)}
        if rng_ranks:
            state["rng_ranks"] = rng_ranks
        return ckpt.write_checkpoint(run_dir, step, save_adapter_fn=save_to, state=state,
                                     keep=cfg.save_total_limit)

    per_device = cfg.per_device_train_batch_size
    accum = cfg.gradient_accumulation_steps
    grouping = cfg.group_by_length
    lengths = _example_lengths(train_set) if grouping != "none" else None
    stream = batch_indices(len(train_set), per_device * world, cfg.seed, start=step * accum,
                           lengths=lengths if grouping == "window" else None)
    step_lengths = lengths if grouping == "step" else None
    # `step` grouping cuts micro-batches of unequal token counts: the loss is then the sum over the step's answer
    # tokens divided by their number (transformers' num_items_in_batch), so the update equals the ungrouped one,
    # and the same on N processes as on one
    label_counts = ([sum(1 for t in row[1:] if t != IGNORE_INDEX) for row in train_set["labels"]]
                    if grouping == "step" and labels is None else None)
    # the LM head on the answer positions only (causal LM, eager step, a method whose logits match its input)
    answer_only = cfg.answer_logits and adapter.answer_logits and labels is None and compile_mode == "off"
    rank = accelerator.process_index
    t0 = time.perf_counter()
    last_good = ckpt.checkpoint_dirs(run_dir)[-1] if ckpt.checkpoint_dirs(run_dir) else None
    progress = _progress(cfg.max_steps, step, disable=not main)
    loss_value = history[-1]["loss"] if history else None
    # the losses of the steps since the last log, logged as their mean (as HF's Trainer does); a resumed run
    # goes on with its checkpoint's window, so its log equals an uninterrupted run's
    window = list(resume.state.get("loss_window", [])) if resume is not None else []
    step_rng = None
    try:
        while step < cfg.max_steps:
            # the RNG as the step begins: a Ctrl-C inside the step saves this, so the resumed run
            # redoes the whole step with the same dropout draws
            step_rng = ckpt.rng_state()
            raise_if_terminated()  # a SIGTERM whose raise a finalizer swallowed still stops here
            total = torch.zeros((), device=accelerator.device)
            if compile_mode in compiling.GRAPH_MODES:
                compiling.materialize_grads(params)
            draws = [next(stream) for _ in range(accum)]
            micro = step_micro_batches(draws, rank, per_device, step_lengths)
            # the step's answer tokens on all ranks (each draws the same global batches), over the rank count: after
            # the mean all-reduce below the gradient is that of the sum over every rank's tokens / their number
            n_items = (torch.tensor(sum(label_counts[i] for ids in draws for i in ids) / world,
                                    device=accelerator.device) if label_counts is not None else None)
            for ids in micro:
                batch = {k: v.to(accelerator.device) for k, v in collate([train_set[i] for i in ids]).items()}
                compiling.step_begin(compile_mode)
                with accelerator.autocast():
                    if answer_only:
                        loss = answer_loss(forward, batch, n_items, accum)
                    elif n_items is not None:
                        loss = forward(**batch, num_items_in_batch=n_items).loss
                    else:
                        loss = forward(**batch).loss / accum
                loss.backward()
                total += loss.detach()
            if world > 1:
                for p in params:  # a plain all-reduce of the trainable grads (small for every method but full)
                    if p.grad is not None:
                        p.grad = accelerator.reduce(p.grad, reduction="mean")
                total = accelerator.reduce(total, reduction="mean")
            loss_value = float(total)
            if not math.isfinite(loss_value):
                optimizer.zero_grad(set_to_none=True)
                if cfg.on_nan == "skip":
                    if main:
                        log(f"step {step + 1}: non-finite loss {loss_value}; step skipped (--on-nan skip)")
                    step += 1
                    scheduler.step()
                    progress.update(1)
                    continue
                raise TrainingDiverged(
                    f"loss became {loss_value} at step {step + 1}; training stopped. Last good checkpoint: "
                    f"{last_good or 'none yet'}. Lower --learning-rate, or pass --on-nan skip to skip such steps.")
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            if not all(torch.isfinite(p).all() for p in params):  # a finite loss can still give an inf update
                raise TrainingDiverged(
                    f"the update of step {step + 1} made the trainable weights non-finite; training stopped. "
                    f"Last good checkpoint: {last_good or 'none yet'}. Lower --learning-rate or set --max-grad-norm.")
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)
            if main:
                plan.after_step()  # the first step compiled the graphs: kept in the compile cache
            window.append(loss_value)
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                mean_loss, window = sum(window) / len(window), []
                entry = {"step": step, "loss": round(mean_loss, 6), "lr": scheduler.get_last_lr()[0],
                         "seconds": round(time.perf_counter() - t0, 2)}
                history.append(entry)
                if main:
                    progress.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("train/learning_rate", entry["lr"], step)
            if step % cfg.save_steps == 0 or step == cfg.max_steps:
                # every rank's RNG (a collective, so on every rank): their dropout streams differ
                rng_ranks = gather_object([ckpt.rng_state()]) if world > 1 else None
                if main:
                    last_good = save_checkpoint(rng_ranks=rng_ranks)
            accelerator.wait_for_everyone()
    except KeyboardInterrupt:
        if main:
            progress.close()
            path = save_checkpoint(step_rng)
            log(f"interrupted: checkpoint saved to {path}; run the same command again to resume")
        raise
    finally:
        progress.close()
        if writer:
            writer.close()

    seconds = time.perf_counter() - t0
    loss_value = history[-1]["loss"] if history else loss_value  # the last logged (window mean) loss
    if main:
        save_to(run_dir)  # the final adapter at the run folder's root (PEFT methods: PeftModel.from_pretrained)
        record.update({"steps": step, "final_loss": loss_value, "train_seconds": round(seconds, 2)})
        RunFolder(run_dir).write_record(record)
        write_json_atomic(run_dir / HISTORY_FILE, history)
        _plot_loss(history, run_dir / LOSS_PLOT)
        log(f"done: {step} steps, final loss {loss_value}, adapter in {run_dir}")
    return FitResult(run_dir=run_dir, steps=step, final_loss=loss_value, seconds=seconds, history=history)


def _example_lengths(train_set) -> list[int]:
    """Token count of every training example: a datasets column, or a ClassificationSet's examples."""
    examples = getattr(train_set, "examples", None)
    rows = train_set["input_ids"] if examples is None else (e["input_ids"] for e in examples)
    return [len(ids) for ids in rows]


def _progress(total: int, initial: int, disable: bool):
    from tasktune.tuning.progress import progress_bar

    return progress_bar(total, "train", unit="step", initial=initial, disable=disable)


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / LOGS_DIR))


def _plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], color="#3465a4")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("tasktune: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from tasktune.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)

