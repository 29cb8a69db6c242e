"""Sequence classification (`--task classification`), the training half: {text, label} records -> token ids.

The generator writes these records with `tasktune data SPEC --format classification`. Labels are the
sorted distinct labels of the train split (saved with the adapter). The eval half is evaluation/classify.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from tasktune import files
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
        rows = ([json.loads(line) for line in files.text_lines(text) if line.strip()] if path.suffix == ".jsonl"
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
