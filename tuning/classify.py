"""Sequence classification (`--task classification`): {text, label} records -> token ids, and its eval.

The generator writes these records with `tasktune data SPEC --format classification`. Labels are the
sorted distinct labels of the train split (saved with the adapter); eval scores accuracy and macro-F1 of
the base (adapter off: an untrained head, i.e. chance) and the tuned model, from one loaded model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasktune.errors import DataError

TEXT_COLUMN = "text"
LABEL_COLUMN = "label"


@dataclass
class ClassificationSet:
    """Tokenized training examples (input_ids, label id) and how many texts were cut."""

    examples: list[dict[str, Any]]
    labels: list[str]
    truncated: int

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]

    def __str__(self) -> str:
        return f"{len(self.examples)} texts, {len(self.labels)} labels, {self.truncated} texts truncated"


def read_records(data, split: str) -> list[dict[str, Any]]:
    """The split's {text, label} records (JSON array or JSONL); a record without them is a DataError."""
    from tasktune.tuning.data import resolve_split_file  # the same folder/file rules as the generation task

    path = resolve_split_file(data, split)
    text = path.read_text(encoding="utf-8")
    try:
        rows = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl"
                else json.loads(text))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty list of {{text, label}} records")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get(TEXT_COLUMN), str) or \
                not isinstance(row.get(LABEL_COLUMN), (str, int)):
            keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path}: record {i}: a classification record needs a string {TEXT_COLUMN!r} and a "
                            f"{LABEL_COLUMN!r} (has: {keys}); write the data with "
                            "`tasktune data SPEC --format classification`")
    return rows


def label_names(records: list[dict[str, Any]]) -> list[str]:
    """The sorted distinct labels (as strings): label id i is the i-th."""
    return sorted({str(r[LABEL_COLUMN]) for r in records})


def label_ids(records: list[dict[str, Any]], labels: list[str], where: str) -> list[int]:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(r[LABEL_COLUMN]) for r in records} - set(index))
    if unknown:
        raise DataError(f"{where}: labels {unknown} are not among the trained labels {labels}")
    return [index[str(r[LABEL_COLUMN])] for r in records]


def tokenize_classification(records, tokenizer, labels: list[str], max_length: int, where: str = "train"):
    """ClassificationSet of {input_ids, label} with texts cut to `max_length` tokens (special tokens included)."""
    ids = tokenizer([r[TEXT_COLUMN] for r in records], add_special_tokens=True)["input_ids"]
    targets = label_ids(records, labels, where)
    truncated = sum(len(x) > max_length for x in ids)
    examples = [{"input_ids": x[:max_length], "label": y} for x, y in zip(ids, targets)]
    return ClassificationSet(examples, labels, truncated)


def make_collator(tokenizer):
    """Right-pads input_ids with the pad id; `labels` is the class id per text."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = [list(f["input_ids"]) + [pad_id] * (width - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "labels": torch.tensor([f["label"] for f in features])}

    return collate


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
    """Accuracy and macro-F1 (percentages), per tuning/metrics.py."""
    from tasktune.tuning.metrics import accuracy, macro_f1

    # classes = those seen in gold or predictions: a trained label absent from this split does not count as F1 0
    return {"n": len(gold), "accuracy": round(100 * accuracy(predicted, gold), 2),
            "macro_f1": round(100 * macro_f1(predicted, gold), 2)}


def evaluate_classification(run_dir: Path, record, *, data=None, split: str = "dev", limit: int | None = None,
                            batch_size: int = 32, log=print) -> dict[str, Any]:
    """Base and tuned predictions on the split from one loaded classifier; writes RUN/eval/metrics.json,
    predictions.jsonl and report.md. `record`: the run's RunRecord."""
    from tasktune.tuning import methods
    from tasktune.tuning.eval import _device_map
    from tasktune.tuning.load import load_tokenizer
    from tasktune.tuning.runinfo import write_json_atomic

    cfg = record.config
    source = methods.base_source(cfg.model, run_dir)  # from any directory
    info = methods.read_method_info(run_dir)
    labels = info.get("labels") or record.labels
    rows = read_records(data or cfg.data, split)[:limit or None]
    gold = label_ids(rows, labels, f"{data or cfg.data} ({split})")
    texts = [r[TEXT_COLUMN] for r in rows]
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code, padding_side="right")
    quant = record.quantization
    torch.manual_seed(cfg.seed)  # the base pass's untrained head is then the same every time
    model = methods.load_base(cfg, model=source, quantization=quant, labels=labels, device_map=_device_map(quant))
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
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for row, b, t in zip(rows, base, tuned):
            fh.write(json.dumps({"text": row[TEXT_COLUMN], "label": str(row[LABEL_COLUMN]),
                                 "predict": labels[t], "base_predict": labels[b]}, ensure_ascii=False) + "\n")
    table = (f"| | accuracy | macro-F1 |\n|---|---|---|\n"
             f"| base | {result['base']['accuracy']:.2f} | {result['base']['macro_f1']:.2f} |\n"
             f"| tuned | {result['tuned']['accuracy']:.2f} | {result['tuned']['macro_f1']:.2f} |\n")
    (out / "report.md").write_text(f"# Classification eval: {run_dir}\n\n{len(rows)} {split} texts, labels: "
                                   f"{', '.join(labels)}\n\n{table}", encoding="utf-8")
    log(table)
    return result
