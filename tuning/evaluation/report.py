"""Write the eval report of a run: report.md, report.html, metrics.json and predictions.jsonl.

Numbers come from `tuning.evaluation.metrics.compute_metrics`; the tables show them exactly as metrics.json
holds them (4 decimals). Templates live in templates/report/ and render in a Jinja sandbox.

Longer than 300 lines because the report is written in four formats (md, html, json, jsonl) from one set of rows,
and the side-by-side picker shares those rows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from tasktune import TEMPLATES
from tasktune import files as atomic
from tasktune.tuning.evaluation.metrics import argument_accuracy, exact_match, step_of

REPORT_TEMPLATES = TEMPLATES / "report"
FILE_NAMES = {
    "md": "report.md",
    "html": "report.html",
    "metrics": "metrics.json",
    "predictions": "predictions.jsonl",
}
COUNT_KEYS = ("n", "n_arguments")  # integer counts: no delta


# ---- numbers --------------------------------------------------------------------------------


def _split(metrics: Mapping[str, Any]) -> tuple[dict, dict]:
    """(overall, per_step) of a compute_metrics result; a flat dict counts as overall only."""
    if "overall" in metrics:
        return dict(metrics["overall"]), dict(metrics.get("per_step", {}))
    return dict(metrics), {}


def _delta_of(base: Mapping[str, Any], tuned: Mapping[str, Any]) -> dict[str, float]:
    return {
        key: round(tuned[key] - base[key], 4)
        for key in tuned
        if key in base and key not in COUNT_KEYS
        and all(isinstance(m[key], (int, float)) for m in (base, tuned))
    }


def compute_delta(base_metrics: Mapping[str, Any], tuned_metrics: Mapping[str, Any]) -> dict:
    """tuned - base for every shared metric, in the shape of compute_metrics' result."""
    base, base_steps = _split(base_metrics)
    tuned, tuned_steps = _split(tuned_metrics)
    return {
        "overall": _delta_of(base, tuned),
        "per_step": {s: _delta_of(base_steps[s], tuned_steps[s]) for s in tuned_steps if s in base_steps},
    }


def format_value(value: Any) -> str:
    """A metric value as the tables show it: counts as integers, scores with 4 decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _format_delta(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def _metric_rows(base: Mapping[str, Any], tuned: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows (name, base, tuned, delta, sign) for the union of keys, base's order first."""
    delta = _delta_of(base, tuned)
    keys = list(base) + [k for k in tuned if k not in base]
    rows = []
    for key in keys:
        d = delta.get(key)
        rows.append(
            {
                "name": key,
                "base": format_value(base.get(key)),
                "tuned": format_value(tuned.get(key)),
                "delta": _format_delta(d),
                "sign": "" if not d else ("up" if d > 0 else "down"),
            }
        )
    return rows


def _step_tables(base_metrics: Mapping[str, Any], tuned_metrics: Mapping[str, Any]) -> list[dict]:
    _, base_steps = _split(base_metrics)
    _, tuned_steps = _split(tuned_metrics)
    steps = list(base_steps) + [s for s in tuned_steps if s not in base_steps]
    return [
        {"step": s, "rows": _metric_rows(base_steps.get(s, {}), tuned_steps.get(s, {}))} for s in steps
    ]


def format_metric_table(
    base_metrics: Mapping[str, Any], tuned_metrics: Mapping[str, Any], *, per_step: bool = False
) -> str:
    """A plain-text table (metric | base | tuned | delta) for the terminal.

    Overall rows only, unless `per_step`, which adds the rows of each step as `step/metric`.
    """
    base, _ = _split(base_metrics)
    tuned, _ = _split(tuned_metrics)
    rows = [("metric", "base", "tuned", "delta")]
    rows += [(r["name"], r["base"], r["tuned"], r["delta"]) for r in _metric_rows(base, tuned)]
    if per_step:
        for table in _step_tables(base_metrics, tuned_metrics):
            rows += [(f"{table['step']}/{r['name']}", r["base"], r["tuned"], r["delta"]) for r in table["rows"]]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_step_summary(base_metrics: Mapping[str, Any], tuned_metrics: Mapping[str, Any]) -> str:
    """One line per step: n, exact match and (where the step has arguments) all-arguments-right, base -> tuned."""
    base_steps = base_metrics.get("per_step", {})
    tuned_steps = tuned_metrics.get("per_step", {})
    lines = [f"{'step':<14}{'n':>6}  {'exact match (base -> tuned)':>28}  {'arguments right':>22}"]
    for step in sorted(set(base_steps) | set(tuned_steps)):
        b, t = base_steps.get(step, {}), tuned_steps.get(step, {})
        em = f"{format_value(b.get('exact_match'))} -> {format_value(t.get('exact_match'))}"
        args = (f"{format_value(b.get('arguments_all'))} -> {format_value(t.get('arguments_all'))}"
                if "arguments_all" in t or "arguments_all" in b else "")
        lines.append(f"{step:<14}{format_value(t.get('n', b.get('n'))):>6}  {em:>28}  {args:>22}")
    return "\n".join(lines)


# ---- examples -------------------------------------------------------------------------------


def _history_of(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    turns = []
    for turn in record.get("history") or []:
        if isinstance(turn, (list, tuple)) and len(turn) == 2:
            turns.append((str(turn[0]), str(turn[1])))
    return turns


def _answer(pred: str, record: Mapping[str, Any], label: str) -> dict[str, Any]:
    args = argument_accuracy(pred, record.get("meta"))
    return {
        "text": pred,
        "correct": exact_match(pred, label) == 1.0,
        "arguments": None if args is None else [{"name": k, "ok": v} for k, v in args.items()],
    }


def build_examples(
    records: Sequence[Mapping[str, Any]],
    base_predictions: Sequence[str],
    tuned_predictions: Sequence[str],
    *,
    label_key: str = "summary",
) -> list[dict[str, Any]]:
    """One view per dev record: prompt, history, step, base/tuned answers with right/wrong flags."""
    if not len(records) == len(base_predictions) == len(tuned_predictions):
        raise ValueError(
            f"{len(records)} records, {len(base_predictions)} base and "
            f"{len(tuned_predictions)} tuned predictions"
        )
    examples = []
    for i, (rec, base, tuned) in enumerate(zip(records, base_predictions, tuned_predictions), start=1):
        label = str(rec.get(label_key, ""))
        examples.append(
            {
                "index": i,
                "step": step_of(rec),
                "prompt": str(rec.get("content", "")),
                "history": _history_of(rec),
                "label": label,
                "base": _answer(base, rec, label),
                "tuned": _answer(tuned, rec, label),
            }
        )
    return examples


# ---- rendering ------------------------------------------------------------------------------


_MD_SPECIAL = re.compile(r"[\\`*_\[\]|~]")


def _md_cell(text: Any) -> str:
    """Text that stays inside one markdown table cell and shows literally (no raw HTML)."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\g<0>", text)  # `*`, `_`, `|`... shown as themselves
    text = text.replace("\r\n", "\n").replace("\n", "<br>")
    return text if text.strip() else "&nbsp;"


def _environment(*, html: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(REPORT_TEMPLATES)),
        autoescape=html,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md_cell"] = _md_cell
    return env


def render_reports(context: Mapping[str, Any]) -> tuple[str, str]:
    """(markdown, html) text of the report for a context built by write_report."""
    md = _environment(html=False).get_template("report.md.j2").render(**context)
    html = _environment(html=True).get_template("report.html.j2").render(**context)
    return md, html


def _write_atomic(path: Path, text: str) -> None:
    """Readers never see half a file; the file gets the umask's mode (`tasktune.files`)."""
    atomic.write_text(path, text)


def _prediction_lines(examples: Sequence[Mapping[str, Any]], prompts: Sequence[str] | None) -> str:
    """One JSON line per example: `prompt` is the text the model saw (the formatted prompt: frame, earlier
    turns), `content` the record's own prompt column."""
    lines = []
    for i, ex in enumerate(examples):
        row = {
            "prompt": prompts[i] if prompts is not None else ex["prompt"],
            "content": ex["prompt"],
            "predict": ex["tuned"]["text"],
            "label": ex["label"],
            "base_predict": ex["base"]["text"],
            "step": ex["step"],
            "correct": ex["tuned"]["correct"],
            "base_correct": ex["base"]["correct"],
        }
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    records: Sequence[Mapping[str, Any]],
    base_predictions: Sequence[str],
    tuned_predictions: Sequence[str],
    base_metrics: Mapping[str, Any],
    tuned_metrics: Mapping[str, Any],
    info: Mapping[str, Any],
    max_markdown_examples: int = 50,
    label_key: str = "summary",
    prompts: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write report.md, report.html, metrics.json and predictions.jsonl into `out_dir` (RUN_DIR/eval).

    `prompts`: the formatted prompt text the model answered, one per record (predictions.jsonl's `prompt`;
    without it, the record's content).

    `info` (model, adapter, data, date, ...) is shown in the header in the given order and saved
    as is; pass the date in so that the output is deterministic. The markdown shows the first
    `max_markdown_examples` examples, the HTML all of them. Returns {"md", "html", "metrics",
    "predictions"} -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = build_examples(records, base_predictions, tuned_predictions, label_key=label_key)
    base_overall, _ = _split(base_metrics)
    tuned_overall, _ = _split(tuned_metrics)
    shown = examples[: max(0, max_markdown_examples)]
    context = {
        "info": [(str(k), str(v)) for k, v in info.items()],
        "overall": _metric_rows(base_overall, tuned_overall),
        "steps": _step_tables(base_metrics, tuned_metrics),
        "examples": examples,
        "md_examples": shown,
        "n_examples": len(examples),
        "counts": {
            "base_right": sum(ex["base"]["correct"] for ex in examples),
            "tuned_right": sum(ex["tuned"]["correct"] for ex in examples),
            "fixed": sum(ex["tuned"]["correct"] and not ex["base"]["correct"] for ex in examples),
            "broken": sum(ex["base"]["correct"] and not ex["tuned"]["correct"] for ex in examples),
        },
    }
    md, html = render_reports(context)
    metrics = {
        "base": base_metrics,
        "tuned": tuned_metrics,
        "delta": compute_delta(base_metrics, tuned_metrics),
        "info": dict(info),
    }
    paths = {key: out / name for key, name in FILE_NAMES.items()}
    _write_atomic(paths["md"], md)
    _write_atomic(paths["html"], html)
    _write_atomic(paths["metrics"], json.dumps(metrics, ensure_ascii=False, indent=2, default=str) + "\n")
    _write_atomic(paths["predictions"], _prediction_lines(examples, prompts))
    return paths


# ---- side by side on the terminal (make demo) ---------------------------------------------------


def read_predictions(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a predictions.jsonl written by write_report."""
    return [json.loads(line) for line in atomic.text_lines(Path(path).read_text(encoding="utf-8")) if line.strip()]


def pick_side_by_side(rows: Sequence[Mapping[str, Any]], per_step: int = 1,
                      prefer: str = "[MASK]") -> list[Mapping[str, Any]]:
    """`per_step` rows of each step, steps in order of first appearance: rows whose prompt holds `prefer` (the
    grid spec's speech-noise mask) first, then the rest in file order. Deterministic: no sampling."""
    steps: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        steps.setdefault(str(row.get("step", "")), []).append(row)
    picked = []
    for group in steps.values():
        ranked = sorted(group, key=lambda r: prefer not in str(r.get("content", "")))  # stable: file order kept
        picked += ranked[:per_step]
    return picked


def format_side_by_side(rows: Sequence[Mapping[str, Any]], per_step: int = 1) -> str:
    """Base vs tuned answers for a few predictions.jsonl rows, one block per row, each answer marked right
    (✓) or wrong (✗) by exact match against the label."""
    lines = []
    for row in pick_side_by_side(rows, per_step):
        mark = {True: "✓", False: "✗"}
        lines += [f"[{row.get('step', '')}] {row.get('content', '')}",
                  f"  base  {mark[bool(row.get('base_correct'))]} {row.get('base_predict', '')}",
                  f"  tuned {mark[bool(row.get('correct'))]} {row.get('predict', '')}",
                  f"  label   {row.get('label', '')}", ""]
    return "\n".join(lines).rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tasktune.tuning.evaluation.report RUN [N]`: print N answers per step (default 1) of RUN/eval, base vs tuned
    (the end of `make demo`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tasktune.tuning.evaluation.report", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder after `tasktune eval`")
    parser.add_argument("per_step", type=int, nargs="?", default=1, help="answers shown per step (default: 1)")
    args = parser.parse_args(argv)
    path = args.run_dir / "eval" / FILE_NAMES["predictions"]
    if not path.is_file():
        parser.error(f"{path}: no such file; run `tasktune eval {args.run_dir}` first")
    print(f"base vs tuned, {args.per_step} per step ({path}; all of them in report.html):\n")
    print(format_side_by_side(read_predictions(path), args.per_step))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
