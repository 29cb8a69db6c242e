"""`tasktune compare`: every tuning method on the same data and step budget -> compare.md + compare.png.

Each method trains and evaluates in its own subprocess (`python -m tuning.evaluation.compare --worker`), so its peak
memory is its own: peak RSS from `resource.getrusage` on CPU (torch allocates outside tracemalloc's
view), `torch.cuda.max_memory_allocated` on a GPU. A method that fails is reported, not fatal.

SIGTERM is handled like Ctrl-C (`tasktune.runlock.sigterm_as_interrupt`): however the parent leaves a method, its
worker is stopped (SIGTERM, a grace period, then SIGKILL) and the method's hidden `.M.spec.json` / `.M.result.json`
and an empty method folder (or one holding only a stale run lock) are removed. A worker whose parent is gone (killed
with SIGKILL) notices within a second and stops itself.

Longer than 300 lines because the worker, its stopping and clean-up, the table and the chart belong to one command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasktune.errors import ConfigError
from tasktune.files import read_text_file, write_json as atomic_write_json
from tasktune.runlock import LOCK_NAME, sigterm_as_interrupt
from tasktune.tuning.config import METHODS

#: Learning rates that work for each method on the same short budget (AdamW, linear decay); the soft-prompt
#: methods want large steps, the methods that move base weights small ones.
DEFAULT_LR = {"ptuning-v2": 2e-2, "prefix": 5e-3, "prompt": 3e-2, "prompt-text": 3e-2, "p-tuning": 1e-2,
              "bitfit": 1e-2, "lora": 2e-3, "qlora": 2e-3, "full": 2e-4}


@dataclass
class CompareConfig:
    model: str
    data: str
    out: str = "runs/compare"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    task: str = "causal-lm"
    steps: int = 30
    """Optimizer steps per method (the shared budget)."""
    batch_size: int = 4
    accumulation: int = 1
    pre_seq_len: int = 16
    """Prefix / virtual-token length for the prefix and prompt methods."""
    limit: int = 30
    """Dev records each method answers (0 = all)."""
    max_new_tokens: int = 48
    quantization_bit: str = "auto"
    seed: int = 42
    learning_rates: dict[str, float] = field(default_factory=dict)
    """Per-method overrides of DEFAULT_LR."""

    def __post_init__(self) -> None:
        if not self.methods:  # `--methods ""` wrote an empty table over compare.md, exit 0
            raise ConfigError(f"compare: --methods names no method; choose from {', '.join(METHODS)}")
        twice = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if twice:  # each method trains into OUT/METHOD: a second one would train over the first
            raise ConfigError(f"compare: --methods names {', '.join(twice)} more than once")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"compare: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        unused = [m for m in self.learning_rates if m not in self.methods]
        if unused:  # `--lr lora=0.1 --methods bitfit` was silently ignored
            raise ConfigError(f"compare: --lr names {', '.join(unused)}, not among --methods "
                              f"({', '.join(self.methods)}); drop it or add the method")
        if self.steps <= 0 or self.batch_size <= 0 or self.accumulation <= 0:
            raise ConfigError("compare: --steps, --batch-size and --accumulation must be positive")


def train_config_for(cfg: CompareConfig, method: str) -> dict[str, Any]:
    """The TrainConfig values of one method's run (everything but the method is shared)."""
    return dict(model=cfg.model, data=cfg.data, out=str(Path(cfg.out) / method), method=method, task=cfg.task,
                pre_seq_len=cfg.pre_seq_len, max_steps=cfg.steps, save_steps=cfg.steps,
                logging_steps=max(1, cfg.steps // 10), per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.accumulation,
                learning_rate=cfg.learning_rates.get(method, DEFAULT_LR[method]),
                quantization_bit=cfg.quantization_bit, seed=cfg.seed, resume="never")


# -- one method, in a subprocess ----------------------------------------------------------------------

def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_worker(spec_path: Path, result_path: Path) -> None:
    """Train + evaluate one method per the spec JSON; write measurements as JSON (errors included)."""
    spec = json.loads(read_text_file(spec_path))
    result: dict[str, Any] = {"method": spec["train"]["method"]}
    try:
        import torch

        from tasktune.tuning.model import methods
        from tasktune.tuning.config import TrainConfig
        from tasktune.tuning.evaluation.eval import EvalConfig, evaluate
        from tasktune.tuning.run import RunFolder
        from tasktune.tuning.training.train import fit

        baseline = _peak_rss_mib()
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        fitted = fit(TrainConfig(**spec["train"]), log=lambda *_: None)
        run = Path(spec["train"]["out"])
        record = RunFolder(run).raw_record()
        info = methods.read_method_info(run)
        result.update(
            trainable=record["trainable_parameters"], total=record.get("total_parameters"),
            checkpoint_bytes=methods.folder_bytes(run, info["files"]),
            peak_mib=round(torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib(), 1),
            peak_delta_mib=None if cuda else round(_peak_rss_mib() - baseline, 1),
            memory_kind="cuda max allocated" if cuda else "peak RSS",
            seconds_per_step=round(fitted.seconds / max(1, fitted.steps), 3),
            first_loss=fitted.history[0]["loss"] if fitted.history else None, final_loss=fitted.final_loss)
        t0 = time.perf_counter()
        out = evaluate(EvalConfig(run_dir=str(run), limit=spec["limit"] or None,
                                  max_new_tokens=spec["max_new_tokens"], batch_size=16), log=lambda *_: None)
        result["eval_seconds"] = round(time.perf_counter() - t0, 1)
        result["base"], result["tuned"] = _headline(out["base"]), _headline(out["tuned"])
    except Exception as exc:  # a failing method is a row of the table, not the end of the comparison
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    atomic_write_json(result_path, result)  # whole or absent: a worker stopped mid-write left half a JSON file


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The dev metrics shown in the table: classification or generation."""
    if "accuracy" in metrics:
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    overall = metrics["overall"]
    keys = ("exact_match", "bleu-4", "rouge-l", "arguments_all")
    return {k: overall[k] for k in keys if k in overall}


# -- all methods ------------------------------------------------------------------------------------------

def compare(cfg: CompareConfig, *, log=print) -> dict[str, Any]:
    """Run every method in turn; write OUT/compare.json, compare.md and compare.png; return the results."""
    out = Path(cfg.out)
    check_out_folder(out)
    check_inputs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with sigterm_as_interrupt():  # SIGTERM takes Ctrl-C's path: the worker stopped, the hidden files removed
        for i, method in enumerate(cfg.methods, 1):
            log(f"[{i}/{len(cfg.methods)}] {method}: {cfg.steps} steps ...")
            result = _run_method(cfg, out, method)
            results.append(result)
            log(f"    {_one_line(result)}")
    from tasktune.files import write_text as write_text_atomic
    from tasktune.tuning.run import environment_info

    summary = {"config": asdict(cfg), "environment": environment_info(), "results": results}
    atomic_write_json(out / "compare.json", summary)
    write_text_atomic(out / "compare.md", format_markdown(cfg, results, summary["environment"]))
    plot(results, out / "compare.png")
    log(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")
    return summary


def check_inputs(cfg: CompareConfig) -> None:
    """ConfigError/DataError naming --model or --data when every method would fail the same way: each was started
    (a subprocess, seconds of imports) and failed, then a table of failures was written, exit 1. A data *file* is
    refused: its dev split is the file itself, so every method was scored on the records it trained on."""
    from tasktune.errors import ConfigError, DataError
    from tasktune.tuning.data import load_records, resolve_split_file
    from tasktune.tuning.model.load import load_config

    data = Path(cfg.data)
    if not str(cfg.data).strip():
        raise ConfigError("--data: empty path; give the data folder with train and dev splits")
    if data.is_file():
        raise ConfigError(f"--data {data}: a file; compare trains on a folder's train split and scores its dev split "
                          "(a file would be both, scoring each method on the records it trained on): give the folder")
    for split in ("train", "dev"):
        try:
            resolve_split_file(data, split)
            if cfg.task == "causal-lm":  # every record as each method's `train` reads it (columns, meta, lengths)
                load_records(data, split)
        except DataError as exc:
            raise DataError(f"--data {exc}") from None
    try:
        _check_lengths(cfg, load_config(cfg.model, trust_remote_code=False))
    except ConfigError as exc:
        if "trust_remote_code" not in str(exc):  # (a model of its own code: each method's run says so)
            raise ConfigError(f"--model: {exc}" if not str(exc).startswith("--") else str(exc)) from None


def _check_lengths(cfg: CompareConfig, config) -> None:
    """--max-new-tokens and --pre-seq-len against the base's context window: each method trained, then its eval
    refused the answer cap (or its train the prefix), and a table of failures was written."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.config import TrainConfig
    from tasktune.tuning.model.generate import context_limit

    limit = context_limit(config)
    prefixed = [m for m in cfg.methods if m in ("ptuning-v2", "prefix", "prompt", "p-tuning")]
    reserve = cfg.pre_seq_len if prefixed else 0
    if limit is None:
        return
    causal = cfg.task == "causal-lm"  # (a classifier reads the source only, and generates nothing)
    lengths = TrainConfig.max_source_length + (TrainConfig.max_target_length if causal else 0)  # (the defaults)
    if lengths + reserve > limit:
        raise ConfigError(f"--pre-seq-len {reserve} ({', '.join(prefixed)}) + the {lengths} positions of a training "
                          f"record is more than {cfg.model}'s {limit}-position context; lower --pre-seq-len")
    if causal and cfg.max_new_tokens + reserve >= limit:
        raise ConfigError(f"--max-new-tokens {cfg.max_new_tokens} leaves no room for a prompt in {cfg.model}'s "
                          f"{limit}-position context (at most {limit - reserve - 1}"
                          + (f" beside --pre-seq-len {reserve} of {', '.join(prefixed)})" if reserve else ")"))


#: What compare writes in OUT (compare's own folder holds nothing else): the report, one run folder per method, the
#: hidden per-method spec/result files while a method runs, and tasktune.files' temporary files of those and of the
#: report (a process killed mid-write leaves one).
_REPORT = ("compare.json", "compare.md", "compare.png")
_HIDDEN = re.compile(r"\.(?:\.?(?:%s)\.(?:spec|result)\.json(?:\..*\.tmp)?|compare\.(?:json|md|png)\..*\.tmp(?:\.png)?)"
                     % "|".join(map(re.escape, METHODS)))


def _written_by_compare(entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry.name in METHODS:
        return entry.is_dir()
    return (entry.name in _REPORT or _HIDDEN.fullmatch(entry.name) is not None) and entry.is_file()


def check_out_folder(out: Path) -> None:
    """ConfigError when OUT holds anything compare did not write (an unrelated folder, a `tasktune train` run
    folder): each method's run folder is deleted and retrained there, and the report would mix into it."""
    if not out.is_dir():
        return  # missing (created), or a file (mkdir names it)
    foreign = sorted(p.name for p in out.iterdir() if not _written_by_compare(p))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"--out {out}: holds files `tasktune compare` did not write ({shown}); use a new or empty "
                          "folder, or the folder of an earlier compare")


def _run_method(cfg: CompareConfig, out: Path, method: str) -> dict[str, Any]:
    """Train + evaluate one method in a worker process; its result row. However this returns or raises, the worker
    is stopped and the method's hidden files are gone."""
    run = out / method
    shutil.rmtree(run, ignore_errors=True)  # same budget from scratch, never a resumed run
    spec = {"train": train_config_for(cfg, method), "limit": cfg.limit, "max_new_tokens": cfg.max_new_tokens}
    spec_path, result_path = out / f".{method}.spec.json", out / f".{method}.result.json"
    proc = None
    try:
        atomic_write_json(spec_path, spec, indent=None)
        result_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        # output to a file, not a pipe: a worker never blocks on (or breaks on) a parent that stopped reading
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen([sys.executable, "-m", "tasktune.tuning.evaluation.compare", "--worker",
                                     str(spec_path), str(result_path)],
                                    stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
            proc.wait()
            if result_path.is_file():
                result = json.loads(read_text_file(result_path))
            else:  # killed (e.g. out of memory) before it could write
                output.seek(0)
                lines = output.read().decode("utf-8", "replace").strip().splitlines()
                result = {"method": method, "error": f"worker died: {(lines or [f'exit code {proc.returncode}'])[-1]}"}
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        return result
    finally:
        if proc is not None:
            stop_worker(proc)
        spec_path.unlink(missing_ok=True)
        result_path.unlink(missing_ok=True)
        _remove_if_empty(run)


def stop_worker(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a worker that still runs: SIGTERM (it then stops as on Ctrl-C, removing its run lock), `grace` seconds,
    then SIGKILL. A second Ctrl-C while waiting kills it at once."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _remove_if_empty(run: Path) -> None:
    """Remove a method folder holding nothing, or only a run lock left by a stopped worker."""
    try:
        if run.is_symlink() or not run.is_dir() or {p.name for p in run.iterdir()} - {LOCK_NAME}:
            return
        (run / LOCK_NAME).unlink(missing_ok=True)
        run.rmdir()
    except OSError:
        pass


def _one_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    return (f"trainable {r['trainable']:,}, checkpoint {_size(r['checkpoint_bytes'])}, "
            f"{r['seconds_per_step']} s/step, loss {r['first_loss']} -> {r['final_loss']:.4f}, tuned {r['tuned']}")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def format_markdown(cfg: CompareConfig, results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    metric_keys: list[str] = []
    for r in results:
        for k in r.get("tuned", {}):
            if k not in metric_keys:
                metric_keys.append(k)
    head = (["method", "trainable params", "% of model", "checkpoint", "peak mem (MiB)", "s/step", "final loss"]
            + [f"dev {k} (base → tuned)" for k in metric_keys])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'].replace('|', '/')} |" + " |" * (len(head) - 2))
            continue
        pct = f"{100 * r['trainable'] / r['total']:.3f}" if r.get("total") else "?"
        mem = f"{r['peak_mib']:.0f}" + (f" (+{r['peak_delta_mib']:.0f})" if r.get("peak_delta_mib") is not None else "")
        cells = [r["method"], f"{r['trainable']:,}", pct, _size(r["checkpoint_bytes"]), mem,
                 f"{r['seconds_per_step']:.3f}", f"{r['final_loss']:.4f}"]
        cells += [f"{r['base'].get(k, float('nan')):.1f} → {r['tuned'].get(k, float('nan')):.1f}"
                  for k in metric_keys]
        lines.append("| " + " | ".join(cells) + " |")
    memory = next((r["memory_kind"] for r in results if "memory_kind" in r), "peak RSS")
    return "\n".join([
        "# tasktune compare", "",
        f"Model `{cfg.model}`, data `{cfg.data}`, task {cfg.task}; every method: {cfg.steps} optimizer steps of "
        f"{cfg.batch_size}×{cfg.accumulation} examples, seed {cfg.seed}, pre_seq_len/virtual tokens "
        f"{cfg.pre_seq_len}; dev metrics on {cfg.limit or 'all'} dev records (greedy, {cfg.max_new_tokens} new "
        f"tokens for generation). Device: {env.get('device')}; torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, peft {env.get('peft')}.", "",
        *lines, "",
        f"Peak memory: {memory} of the method's own process (in brackets: growth over the process after its imports, "
        "i.e. base model + method + training). Checkpoint: the files the method saves (adapter, or biases / whole "
        "model). Learning rates per method: " + ", ".join(
            f"{m} {cfg.learning_rates.get(m, DEFAULT_LR[m]):g}" for m in cfg.methods) + ".", "",
        "![compare](compare.png)", ""])


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    metric = next((k for k in ("accuracy", "arguments_all", "rouge-l") if ok and k in ok[0].get("tuned", {})), None)
    panels = [("trainable parameters", lambda r: r["trainable"], True),
              ("checkpoint (KiB)", lambda r: r["checkpoint_bytes"] / 1024, True),
              ("peak memory (MiB)", lambda r: r["peak_mib"], False),
              ("seconds / step", lambda r: r["seconds_per_step"], False)]
    if metric:
        panels.append((f"dev {metric} (tuned)", lambda r: r["tuned"].get(metric, 0.0), False))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.45 * max(3, len(ok)) + 1.2), dpi=100,
                             sharey=True)
    names = [r["method"] for r in ok]
    for ax, (title, value, log_scale) in zip(axes, panels):
        values = [value(r) for r in ok]
        ax.barh(names, values, color="#3465a4")
        if log_scale and values and min(values) > 0:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("tasktune compare: same data, same step budget", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _stop_when_orphaned(every: float = 1.0) -> None:
    """In a worker: SIGTERM itself once its parent is gone (a parent killed with SIGKILL cannot stop it)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="compare-orphan-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--worker":
        from tasktune.errors import Terminated

        _stop_when_orphaned()
        try:
            with sigterm_as_interrupt():  # the parent's stop (SIGTERM) unwinds the run: its lock file is removed
                run_worker(Path(argv[1]), Path(argv[2]))
        except KeyboardInterrupt as exc:
            return 143 if isinstance(exc, Terminated) else 130
        return 0
    print("usage: python -m tuning.evaluation.compare --worker SPEC.json RESULT.json  (use `tasktune compare`)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
