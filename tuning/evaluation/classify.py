"""Sequence classification (`--task classification`), the eval half: accuracy and macro-F1 of the base (adapter
off: an untrained head, i.e. chance) and the tuned model, from one loaded model. The data half (records, labels,
token ids) is training/classify_data.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from tasktune.tuning.training.classify_data import LABEL_COLUMN, TEXT_COLUMN, label_ids, read_records


@torch.inference_mode()
def predict(model, tokenizer, texts: list[str], *, batch_size: int = 32, max_length: int = 128) -> list[int]:
    """Arg-max class id of every text."""
    device = next(p for p in model.parameters()).device
    out: list[int] = []
    tokenizer.padding_side = "right"
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out += model(**batch).logits.argmax(-1).tolist()
    return out


def score(predicted: list[int], gold: list[int], labels: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 (percentages), per tuning/evaluation/metrics.py."""
    from tasktune.tuning.evaluation.metrics import accuracy, macro_f1

    # classes = those seen in gold or predictions: a trained label absent from this split does not count as F1 0
    return {"n": len(gold), "accuracy": round(100 * accuracy(predicted, gold), 2),
            "macro_f1": round(100 * macro_f1(predicted, gold), 2)}


def evaluate_classification(run_dir: Path, record, *, data=None, split: str = "dev", limit: int | None = None,
                            batch_size: int = 32, log=print) -> dict[str, Any]:
    """Base and tuned predictions on the split from one loaded classifier; writes RUN/eval/metrics.json,
    predictions.jsonl and report.md. `record`: the run's RunRecord."""
    from tasktune.tuning.model import methods
    from tasktune.tuning.model.load import load_tokenizer
    from tasktune.files import write_json as write_json_atomic, write_text

    cfg = record.config
    source = methods.base_source(cfg.model, run_dir)  # from any directory
    info = methods.check_method_files(Path(run_dir))  # the adapter files are what the records say, before any work
    labels = info.get("labels") or record.labels
    rows = read_records(data or cfg.data, split)[:limit or None]
    gold = label_ids(rows, labels, f"{data or cfg.data} ({split})")
    texts = [r[TEXT_COLUMN] for r in rows]
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code, padding_side="right")
    quant = record.quantization
    torch.manual_seed(cfg.seed)  # the base pass's untrained head is then the same every time
    model = methods.load_base(cfg, model=source, quantization=quant, labels=labels, device_map=methods.device_map(quant))
    model.config.pad_token_id = tokenizer.pad_token_id
    adapter = methods.load(model, run_dir)
    adapter.model.eval()
    kwargs = dict(batch_size=batch_size, max_length=cfg.max_source_length)
    t0 = time.perf_counter()
    with adapter.disabled() as base_model:
        base = predict(base_model, tokenizer, texts, **kwargs)
    tuned = predict(adapter.model, tokenizer, texts, **kwargs)
    seconds = time.perf_counter() - t0
    result = {"base": score(base, gold, labels), "tuned": score(tuned, gold, labels),
              "info": {"run_dir": str(run_dir), "model": cfg.model, "method": info.get("method"),
                       "split": split, "n": len(rows), "labels": labels, "seconds": round(seconds, 2)}}
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", result)
    write_text(out / "predictions.jsonl", (  # whole or absent (a plain open() left half a file on a full disk)
        json.dumps({"text": row[TEXT_COLUMN], "label": str(row[LABEL_COLUMN]), "predict": labels[t],
                    "base_predict": labels[b]}, ensure_ascii=False) + "\n" for row, b, t in zip(rows, base, tuned)))
    table = (f"| | accuracy | macro-F1 |\n|---|---|---|\n"
             f"| base | {result['base']['accuracy']:.2f} | {result['base']['macro_f1']:.2f} |\n"
             f"| tuned | {result['tuned']['accuracy']:.2f} | {result['tuned']['macro_f1']:.2f} |\n")
    write_text(out / "report.md", f"# Classification eval: {run_dir}\n\n{len(rows)} {split} texts, labels: "
                                  f"{', '.join(labels)}\n\n{table}")
    log(table)
    return result
