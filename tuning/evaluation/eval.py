"""`tasktune eval RUN_DIR`: answer the dev set with the base and the tuned model, score, report.

Both answers come from ONE loaded model: the adapter is switched off for the base pass
(`adapter.disabled()`, for every method in tuning/model/methods/) and on for the tuned pass, so nothing but
the adapter differs. Classification runs are scored by evaluation/classify.py (accuracy, macro-F1).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasktune.errors import ConfigError, DataError
from tasktune.files import own_subdir
from tasktune.tuning.run import RECORD_FILE



@dataclass
class EvalConfig:
    run_dir: str
    data: str | None = None          # default: the data folder the run was trained on
    split: str = "dev"
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int | None = None  # default: the run's max_target_length
    examples_in_markdown: int = 50
    trust_remote_code: bool = False  # the user's own grants (tuning/run.py's Trust), never the run record's
    allow_pickle: bool = False

    def __post_init__(self) -> None:  # the CLI flags' ranges (tasktune/flags.py), for API callers too
        from tasktune.flags import BATCH, COUNT, TOKENS, check_types

        check_types(self)
        if self.data is not None and not str(self.data).strip():  # "" fell back to the run's own data unsaid
            raise ConfigError("--data: empty path; give a data folder or file, or leave it out for the run's own")
        if not str(self.split).strip() or any(c in str(self.split) for c in "/\\") or self.split in (".", ".."):
            raise ConfigError(f"--split {self.split!r}: expected a split's name (dev, train, ...), which names "
                              "DATA/NAME.json or .jsonl; give another folder or file with --data")
        COUNT.check("limit", self.limit, optional=True)  # None = all; 0 or negative is refused, never "all"
        BATCH.check("batch_size", self.batch_size)
        TOKENS.check("max_new_tokens", self.max_new_tokens, optional=True)


def load_eval_records(data: str | Path, split: str, limit: int | None, cfg) -> list[dict[str, Any]]:
    """Dev records as plain dicts: prompt, history, reference and the generator's meta (`cfg`: the run's
    TrainConfig, which names the columns)."""
    from tasktune.tuning.data import DataConfig, load_records

    ds = load_records(data, split, DataConfig(prompt_column=cfg.prompt_column, response_column=cfg.response_column,
                                              history_column=cfg.history_column))
    rows = []
    for row in ds:
        meta = row.get("meta")
        if isinstance(meta, str):
            meta = json.loads(meta) if meta else {}
        rows.append({"content": row[cfg.prompt_column], "summary": row[cfg.response_column],
                     "history": row.get(cfg.history_column) or [], "meta": meta or {}})
    if limit:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{data}: the {split} split is empty")
    return rows


def changed_since_training(record) -> dict[str, str]:
    """What differs now from what the run (a RunRecord) was trained on, as recorded: its data files (by sha256,
    those still there) and its base model folder (config and weight headers); a sentence under "data", "model".
    A run folder read from another working directory resolves a relative --data or --model to other files: eval
    took them silently."""
    from tasktune.tuning.run import data_fingerprint
    from tasktune.tuning.training.checkpoint import model_content

    said, recorded = {}, record.fingerprint
    data = recorded.get("data") if isinstance(recorded.get("data"), dict) else {}
    now = data_fingerprint(record.config.data) if Path(record.config.data).exists() else {}
    changed = sorted(name for name, digest in data.items() if name in now and now[name] != digest)
    if changed:
        said["data"] = (f"the data {record.config.data} is not what the run was trained on ({', '.join(changed)} "
                        f"changed since)")
    content = recorded.get("model_content")
    if content and model_content(record.config.model) not in (None, content):
        said["model"] = (f"the base model {record.config.model} has changed since the run was trained (its config "
                         f"or weight files differ)")
    return said


def evaluate(ecfg: EvalConfig, *, log=print) -> dict[str, Any]:
    from tasktune.tuning.evaluation.metrics import compute_metrics
    from tasktune.tuning.evaluation.report import format_metric_table, format_step_summary, write_report
    from tasktune.tuning.inference.assistant import Assistant
    from tasktune.tuning.run import RunFolder, Trust

    run_dir = Path(ecfg.run_dir)
    trust = Trust(ecfg.trust_remote_code, ecfg.allow_pickle)
    record = RunFolder(run_dir).record(trust=trust)
    cfg = record.config
    if ecfg.data is None and not Path(cfg.data).exists():  # said as the record's, not as a flag's "no such file"
        relative = "" if Path(cfg.data).is_absolute() else ", a path relative to the folder training ran in"
        raise ConfigError(f"{run_dir}: the data it was trained on, {cfg.data} (from its {RECORD_FILE}{relative}), "
                          f"is not found from {Path.cwd()}: run eval from that folder, or give --data DIR")
    if cfg.task == "classification":
        from tasktune.tuning.evaluation.classify import evaluate_classification

        return evaluate_classification(run_dir, record, data=ecfg.data, split=ecfg.split, limit=ecfg.limit,
                                       batch_size=ecfg.batch_size, log=log)
    data = ecfg.data or cfg.data
    for kind, change in changed_since_training(record).items():
        if kind == "model" or ecfg.data is None:  # --data: other data on purpose
            log(f"warning: {run_dir}: {change}; these results are not those of what it was trained on")
    records = load_eval_records(data, ecfg.split, ecfg.limit, cfg)

    bot = Assistant.from_run(run_dir, batching="generate", trust=trust)  # the run's base (as trained), adapter on
    out = own_subdir(run_dir, "eval")  # before any generation: a file in its place was found only at the end
    adapter = bot.run.adapter
    # `texts` go to predictions.jsonl as the prompt seen; the ids are what training saw (a chat template's bos once)
    texts, prompts = bot.encode([r["content"] for r in records], history=[r["history"] for r in records])
    max_new = ecfg.max_new_tokens or cfg.max_target_length
    kwargs = dict(batch_size=ecfg.batch_size, max_new_tokens=max_new, progress=True)
    t0 = time.perf_counter()
    base, cut = bot.generate(prompts, base=True, desc="base ", **kwargs)
    t_base = time.perf_counter() - t0
    tuned, _ = bot.generate(prompts, desc="tuned", **kwargs)
    t_tuned = time.perf_counter() - t0 - t_base
    if cut:
        log(f"note: {cut} prompt(s) longer than the model's context were cut to their last tokens")

    base_metrics = compute_metrics(records, base)
    tuned_metrics = compute_metrics(records, tuned)
    info = {"run_dir": str(run_dir), "model": cfg.model, "data": str(data), "split": ecfg.split,
            "n": len(records), "method": adapter.method, "pre_seq_len": adapter.reserved_positions,
            "quantization": record.quantization,
            "max_new_tokens": max_new, "batch_size": ecfg.batch_size, "prompts_cut": cut,
            "seconds_base": round(t_base, 2), "seconds_tuned": round(t_tuned, 2),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    paths = write_report(out, records=records, base_predictions=base,
                         tuned_predictions=tuned, base_metrics=base_metrics, tuned_metrics=tuned_metrics, info=info,
                         max_markdown_examples=ecfg.examples_in_markdown, prompts=texts)
    log(format_metric_table(base_metrics, tuned_metrics))
    log(format_step_summary(base_metrics, tuned_metrics))
    log(f"report: {paths['html']}")
    return {"base": base_metrics, "tuned": tuned_metrics, "info": info, "paths": paths}
