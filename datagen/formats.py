"""Record shapes: an `Example` becomes a ChatGLM record; a ChatGLM record becomes any output format.

Every chatglm, jsonl and alpaca record has a `history` list (`[]` for a single-turn record), so readers that
index the column on every record read them as they are: LLaMA-Factory's loader (dataset_info.json maps the
column) and ChatGLM-6B's `ptuning/main.py --history_column history`, which iterates `examples[history][i]` and
fails on a missing one (see tests/datagen/test_readers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasktune.errors import SpecError

if TYPE_CHECKING:
    from tasktune.datagen.expand import Example

FORMATS = ("chatglm", "jsonl", "alpaca", "sharegpt", "classification")


def check_format(spec: Any, fmt: str) -> None:
    """SpecError, before any record is made, when the spec's steps cannot be written as `fmt`: `classification`
    takes only `label:` steps. (It was found at the first record written, after the whole set was generated, and
    named neither the file nor the line.)"""
    if fmt != "classification":
        return
    for step in spec.steps:
        if step.label is None:
            raise SpecError(f"{step.where}: --format classification writes {{text, label}} records, but step "
                            f"{step.name!r} has a summary, not a `label:`; write this spec with another --format "
                            "(chatglm, jsonl, alpaca, sharegpt), or give every step a label")


def to_chatglm(example: Example) -> dict[str, Any]:
    """The default record: content/summary/history (`[]` for one turn), with `meta` for evaluation and audit."""
    if not (example.arguments is not None or example.noise or example.chain or example.label or example.history):
        # the usual record, built in one go (the same keys in the same order as below)
        return {"content": example.prefix + example.utterance + example.suffix, "summary": example.summary,
                "history": [], "meta": {"step": example.step, "template": example.template, "slots": example.slots, "noise": []}}
    shift = len(example.prefix)
    meta: dict[str, Any] = {"step": example.step, "template": example.template, "slots": example.slots}
    if example.arguments is not None:
        meta["arguments"] = example.arguments
        meta["answer_pattern"] = example.answer_pattern
    meta["noise"] = [{**s, "start": s["start"] + shift, "end": s["end"] + shift, "at": s["at"] + shift}
                     for s in example.noise] if example.noise else []
    if example.chain:
        meta["chain"] = list(example.chain)
    if example.label:
        meta["label"] = True
    record: dict[str, Any] = {"content": example.content, "summary": example.summary,
                              "history": example.history or [], "meta": meta}
    return record


def convert(record: dict[str, Any], fmt: str, meta: bool = True) -> dict[str, Any]:
    """A ChatGLM record in `fmt`; `meta=False` drops the meta block."""
    history = record.get("history") or []
    if fmt in ("chatglm", "jsonl"):
        out = {"content": record["content"], "summary": record["summary"], "history": history}
    elif fmt == "alpaca":
        out = {"instruction": record["content"], "input": "", "output": record["summary"], "history": history}
    elif fmt == "sharegpt":
        turns = [*history, [record["content"], record["summary"]]]
        out = {"conversations": [{"from": who, "value": text} for turn in turns
                                 for who, text in zip(("human", "gpt"), turn)]}
    elif fmt == "classification":
        if not record.get("meta", {}).get("label"):
            raise SpecError(
                f"format 'classification' needs steps that declare `label:`; step {record['meta']['step']!r} has a summary"
            )
        out = {"text": record["content"], "label": record["summary"]}
    else:
        raise SpecError(f"unknown output format {fmt!r} (choose from {', '.join(FORMATS)})")
    if meta and "meta" in record:
        out["meta"] = record["meta"]
    return out
