"""Evaluation metrics: pure functions of (prediction, reference) strings and dev-record meta.

BLEU-4 and ROUGE follow ChatGLM-6B `ptuning/main.py` and LLaMA-Factory `ComputeSimilarity`, so the
figures are comparable with theirs; the rest (exact match, argument accuracy, classification) is ours.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from tasktune.errors import TaskTuneWarning
from tasktune.tuning.rows import answer_regex, argument_groups

# Per-record text metrics, in report order; values are percentages (0-100).
TEXT_METRICS = ("exact_match", "bleu-4", "rouge-1", "rouge-2", "rouge-l")
ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")
NO_STEP = "(none)"  # step name for records whose meta has no "step"

_tokenizer = None  # a private jieba.Tokenizer, built on first use


@lru_cache(maxsize=None)  # once per module: the warning filters are swapped at the first import only
def _quiet_import(name: str):
    """Import jieba 0.42 / rouge_chinese 1.0.3 without the warnings their old code prints on a first import: invalid
    escape sequences when Python compiles them (DeprecationWarning on 3.11, SyntaxWarning on 3.12+: visible on the
    GPU image, whose wheels are installed without bytecode) and jieba's `import pkg_resources` (a UserWarning
    from setuptools 81+)."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        return importlib.import_module(name)


def _jieba():
    """A private jieba tokenizer on the default dictionary, with jieba's log chatter silenced.

    Private so that another module's `jieba.add_word` cannot change our segmentation; it uses the
    same default dictionary as the global `jieba.cut` that ChatGLM/LLaMA-Factory call, so words agree.
    """
    global _tokenizer
    if _tokenizer is None:
        jieba = _quiet_import("jieba")
        # jieba logs "Building prefix dict ..." at DEBUG on a console handler when it first loads.
        jieba.setLogLevel(logging.WARNING)
        _tokenizer = jieba.Tokenizer()
        _tokenizer.initialize()
    return _tokenizer


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the two strings are equal after stripping whitespace at both ends, else 0.0."""
    return 1.0 if pred.strip() == ref.strip() else 0.0


def bleu4(pred: str, ref: str) -> float:
    """Character-level sentence BLEU-4 with NIST smoothing (method3), x100, rounded to 4 decimals.

    Same call as ChatGLM-6B / LLaMA-Factory: sentence_bleu([list(label)], list(pred), method3).
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not pred or not ref:  # nltk returns 0 here too; skip it and its zero-length edge cases
        return 0.0
    score = sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3)
    return round(float(score) * 100, 4)


def rouge_scores(pred: str, ref: str) -> dict[str, float]:
    """ROUGE-1/2/L F-scores on jieba words, x100, each rounded to 4 decimals.

    As in LLaMA-Factory: both sides are cut with jieba and joined by spaces; if either has no word
    left after splitting on whitespace, all three scores are 0 (rouge_chinese would raise).
    """
    hypothesis = " ".join(_jieba().cut(pred))
    reference = " ".join(_jieba().cut(ref))
    if not hypothesis.split() or not reference.split():
        return {key: 0.0 for key in ROUGE_KEYS}
    scores = _quiet_import("rouge_chinese").Rouge().get_scores(hypothesis, reference)[0]
    return {key: round(scores[key]["f"] * 100, 4) for key in ROUGE_KEYS}


def score_pair(pred: str, ref: str) -> dict[str, float]:
    """All text metrics of one (prediction, reference) pair, as percentages, in TEXT_METRICS order.

    Both strings are stripped first (generation leaves no meaningful edge whitespace).
    """
    pred, ref = pred.strip(), ref.strip()
    return {"exact_match": exact_match(pred, ref) * 100, "bleu-4": bleu4(pred, ref), **rouge_scores(pred, ref)}


# ---- function arguments -----------------------------------------------------------------------

def _compile(pattern: Any) -> re.Pattern[str] | None:
    if not isinstance(pattern, str):
        return None
    try:
        return answer_regex(pattern)
    except re.error:
        return None


#: Seconds one answer pattern may take to match one prediction: a pattern of nested repeats (`(a+)+$`) backtracks
#: for ever on some answers; past this the record's arguments count wrong, with one warning per pattern.
MATCH_SECONDS = 1.0


@lru_cache(maxsize=1024)
def _timed(pattern: str):
    import regex

    return regex.compile(pattern)


def _fullmatch(compiled: re.Pattern[str], text: str):
    """`compiled.fullmatch(text)` through the `regex` module, which can stop a match (`re` cannot)."""
    try:
        return _timed(compiled.pattern).fullmatch(text, timeout=MATCH_SECONDS)
    except TimeoutError:
        if compiled.pattern not in _SLOW:
            _SLOW.add(compiled.pattern)
            warnings.warn(f"meta.answer_pattern {compiled.pattern[:80]!r} took over {MATCH_SECONDS:g} s to match an "
                          "answer (nested repeats backtrack); those answers' arguments count as wrong",
                          TaskTuneWarning, stacklevel=3)
        return None


_SLOW: set[str] = set()


def argument_accuracy(pred: str, meta: Mapping[str, Any] | None) -> dict[str, bool] | None:
    """Per-argument correctness of one prediction, or None when the record has no arguments.

    `meta["answer_pattern"]` must match the whole stripped prediction (`re.fullmatch`); each named
    group (and any renamed repeat `name__2`, ...) must equal `meta["arguments"][name]`. A missing,
    uncompilable or non-matching pattern makes every argument of the record wrong (the data reader,
    `tuning/rows.py`, refuses records with a missing or uncompilable one before any of this runs).
    """
    arguments = (meta or {}).get("arguments")
    if not arguments:
        return None
    compiled = _compile((meta or {}).get("answer_pattern"))
    match = _fullmatch(compiled, pred.strip()) if compiled else None
    if match is None:
        return {name: False for name in arguments}
    groups = match.groupdict()
    result = {}
    for name, expected in arguments.items():
        captured = [groups[key] for key in argument_groups(compiled, name)]
        result[name] = bool(captured) and all(
            value is not None and value.strip() == str(expected).strip() for value in captured
        )
    return result


def aggregate_arguments(results: Sequence[dict[str, bool] | None]) -> dict[str, float | int]:
    """Argument accuracy over records: count, all-right rate and per-name rate (percentages).

    Records without arguments (None) are skipped; an empty dict when none has arguments.
    """
    scored = [r for r in results if r is not None]
    if not scored:
        return {}
    out: dict[str, float | int] = {
        "n_arguments": len(scored),
        "arguments_all": round(_mean([100.0 if all(r.values()) else 0.0 for r in scored]), 4),
    }
    for name in sorted({name for r in scored for name in r}):
        hits = [100.0 if r[name] else 0.0 for r in scored if name in r]
        out[f"argument.{name}"] = round(_mean(hits), 4)
    return out


# ---- classification (issue #5) ----------------------------------------------------------------


def _check_lengths(preds: Sequence[Any], labels: Sequence[Any]) -> None:
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")


def accuracy(preds: Sequence[Any], labels: Sequence[Any]) -> float:
    """Fraction (0-1) of predictions equal to their label; 0.0 for no examples."""
    _check_lengths(preds, labels)
    return _mean([1.0 if p == y else 0.0 for p, y in zip(preds, labels)])


def macro_f1(preds: Sequence[Any], labels: Sequence[Any], classes: Sequence[Any] | None = None) -> float:
    """Unweighted mean of per-class F1 (0-1), like sklearn's `f1_score(average="macro")`.

    `classes` defaults to every value seen in labels or predictions, so a made-up predicted class
    counts as a class with F1 0. A class with no true positives has F1 0.
    """
    _check_lengths(preds, labels)
    if classes is None:
        classes = sorted(set(labels) | set(preds), key=repr)
    f1s = []
    for c in classes:
        tp = sum(1 for p, y in zip(preds, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(preds, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(preds, labels) if p != c and y == c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return _mean(f1s)


# ---- dev-set summary --------------------------------------------------------------------------


def _summarize(pair_scores: list[dict[str, float]], arg_results: list[dict[str, bool] | None]) -> dict:
    summary: dict[str, float | int] = {"n": len(pair_scores)}
    for key in TEXT_METRICS:
        summary[key] = round(_mean([s[key] for s in pair_scores]), 4)
    summary.update(aggregate_arguments(arg_results))
    return summary


def step_of(record: Mapping[str, Any]) -> str:
    """The record's `meta.step`, or NO_STEP."""
    return str((record.get("meta") or {}).get("step") or NO_STEP)


def compute_metrics(
    records: Sequence[Mapping[str, Any]], predictions: Sequence[str], *, label_key: str = "summary"
) -> dict[str, dict]:
    """Metrics of predictions against dev records, overall and per `meta.step`.

    Returns {"overall": {...}, "per_step": {step: {...}}} (steps sorted by name). Each summary holds,
    in this order: n, exact_match, bleu-4, rouge-1, rouge-2, rouge-l (percentages, means over
    records of per-record scores) and, when some record has `meta.arguments`: n_arguments,
    arguments_all, argument.<name> (sorted). Values are rounded to 4 decimals.
    """
    if len(records) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    pair_scores = [score_pair(pred, str(rec.get(label_key, ""))) for rec, pred in zip(records, predictions)]
    arg_results = [argument_accuracy(pred, rec.get("meta")) for rec, pred in zip(records, predictions)]
    steps = [step_of(rec) for rec in records]
    per_step = {}
    for step in sorted(set(steps)):
        idx = [i for i, s in enumerate(steps) if s == step]
        per_step[step] = _summarize([pair_scores[i] for i in idx], [arg_results[i] for i in idx])
    return {"overall": _summarize(pair_scores, arg_results), "per_step": per_step}
