"""Tests for tuning/evaluation/report.py: the files exist, agree with metrics.json, and escape answers."""

import json
import re

import pytest

from tasktune.tuning.evaluation.metrics import compute_metrics
from tasktune.tuning.evaluation.report import format_metric_table, write_report

PATTERN = (
    "^因为出现地名为(?P<place>.+?), 所以函数一参数为(?P=place); "
    "因为出现人数要求, 所以函数二参数为(?P<check>.+)$"
)
GREETING = "您好,我是电网大模型的语言核心,用于拆解执行行为库并向您汇报结果"
JINAN = "因为出现地名为济南, 所以函数一参数为济南; 因为出现人数要求, 所以函数二参数为人数检测"
QINGDAO = JINAN.replace("济南", "青岛")
SCRIPT = "<script>alert('x')</script> a|b"
INFO = {"model": "models/tiny-glm", "adapter": "runs/t/adapter", "data": "data/grid/dev.json", "date": "2025-01-02"}


def _meta(place):
    return {"step": "args", "arguments": {"place": place, "check": "人数检测"}, "answer_pattern": PATTERN}


RECORDS = [
    {"content": "步骤#问候*语音#你好", "summary": GREETING, "meta": {"step": "greet"}},
    {"content": "步骤#理解并基于输入拆分函数参数*语音#尝试查寻济南工地的人数", "summary": JINAN, "meta": _meta("济南")},
    {
        "content": "步骤#理解并基于输入拆分函数参数*语音#查查在青岛工地人数嘛",
        "summary": QINGDAO,
        "history": [["你好", GREETING]],
        "meta": _meta("青岛"),
    },
    {"content": "步骤#基于函数调用结果进行总结*任务类型#人数检查", "summary": "[人数检测] 应到47人, 实到34人, 有人缺勤",
     "meta": {"step": "summary"}},
]
BASE = ["您好,我是 ChatGLM-6B", "要查寻济南工地的人数,需要先理解", SCRIPT, "[人数检测] 应到47人, 实到34人, 有人缺勤"]
TUNED = [GREETING, JINAN, JINAN, "[人数检测] 应到47人, 实到30人, 有人缺勤"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "eval"
    base_metrics = compute_metrics(RECORDS, BASE)
    tuned_metrics = compute_metrics(RECORDS, TUNED)
    paths = write_report(
        out,
        records=RECORDS,
        base_predictions=BASE,
        tuned_predictions=TUNED,
        base_metrics=base_metrics,
        tuned_metrics=tuned_metrics,
        info=INFO,
        max_markdown_examples=2,
        prompts=[f"<seen>{r['content']}" for r in RECORDS],  # as eval passes the formatted prompts
    )
    return paths, base_metrics, tuned_metrics


def _md_tables(md):
    """{heading: {metric: (base, tuned, delta)}} for every 4-column metric table in the markdown."""
    tables, heading = {}, None
    for line in md.splitlines():
        if line.startswith("#"):
            heading = line.strip("# ").strip()
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("metric",) and not cells[0].startswith("-"):
            tables.setdefault(heading, {})[cells[0]] = tuple(cells[1:])
    return tables


def _as_numbers(cells):
    return tuple(float(c) if c else None for c in cells)


def _expected_rows(base, tuned, delta):
    return {k: (base[k], tuned[k], delta.get(k)) for k in base}


def test_files_exist_and_nothing_else(report):
    paths, _, _ = report
    assert set(paths) == {"md", "html", "metrics", "predictions"}
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    folder = paths["md"].parent
    assert folder.name == "eval"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths.values())  # no temp files


def test_metrics_json_holds_what_was_passed(report):
    paths, base_metrics, tuned_metrics = report
    saved = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    assert saved["base"] == base_metrics
    assert saved["tuned"] == tuned_metrics
    assert saved["info"] == INFO
    assert saved["delta"]["overall"]["exact_match"] == round(
        tuned_metrics["overall"]["exact_match"] - base_metrics["overall"]["exact_match"], 4
    )


def test_markdown_tables_show_the_json_numbers(report):
    paths, _, _ = report
    saved = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    tables = _md_tables(paths["md"].read_text(encoding="utf-8"))
    overall = next(v for k, v in tables.items() if k.startswith("Metrics"))
    shown = {name: _as_numbers(cells) for name, cells in overall.items()}
    assert shown == _expected_rows(saved["base"]["overall"], saved["tuned"]["overall"], saved["delta"]["overall"])
    for step, base_step in saved["base"]["per_step"].items():
        shown = {name: _as_numbers(cells) for name, cells in tables[f"step `{step}`"].items()}
        expected = _expected_rows(base_step, saved["tuned"]["per_step"][step], saved["delta"]["per_step"][step])
        assert shown == expected


def test_html_tables_show_the_json_numbers(report):
    paths, _, _ = report
    saved = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    html = paths["html"].read_text(encoding="utf-8")
    overall_table = html[html.index('id="overall"') : html.index("</table>", html.index('id="overall"'))]
    rows = re.findall(r"<tr><td>([^<]+)</td><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td></tr>",
                      overall_table)
    shown = {name: _as_numbers(cells) for name, *cells in rows}
    assert shown == _expected_rows(saved["base"]["overall"], saved["tuned"]["overall"], saved["delta"]["overall"])
    cells = '<td class="num">25.0000</td><td class="num">50.0000</td><td class="num up">+25.0000</td>'
    assert f"<tr><td>exact_match</td>{cells}</tr>" in overall_table  # 1 of 4 right -> 2 of 4
    for key, value in INFO.items():
        assert f"<dt>{key}</dt><dd>{value}</dd>" in html


def test_html_escapes_answers_and_has_no_scripts_or_external_assets(report):
    paths, _, _ = report
    html = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; a|b" in html
    assert "http://" not in html and "https://" not in html and "<link" not in html
    md = paths["md"].read_text(encoding="utf-8")
    assert "<script" not in md  # not among the first 2 examples, and escaped anyway


def test_html_marks_right_and_wrong_and_shows_all_examples(report):
    paths, _, _ = report
    html = paths["html"].read_text(encoding="utf-8")
    rows = html[html.index('<table class="examples">') :].split("<tr>")[2:]  # skip the header row
    assert len(rows) == len(RECORDS)
    # base is right only on record 4; tuned on records 1-2.
    assert [r.count('class="right"') for r in rows] == [1, 1, 0, 1]
    assert [r.count('class="wrong"') for r in rows] == [1, 1, 2, 1]
    assert "place ✗" in rows[2] and "check ✓" in rows[2]  # tuned said 济南 for 青岛
    assert "你好" in rows[2]  # history shown


def test_markdown_shows_first_n_examples_and_says_so(report):
    paths, _, _ = report
    md = paths["md"].read_text(encoding="utf-8")
    assert "The first 2 of 4 examples; report.html shows all of them." in md
    assert re.findall(r"^### (\d+)\. step", md, flags=re.M) == ["1", "2"]
    assert "### 1. step `greet`: base ✗, tuned ✓" in md
    assert "步骤#问候\\*语音#你好" in md  # markdown emphasis characters escaped


def test_markdown_cell_escaping(tmp_path):
    records = [{"content": "q", "summary": "a", "meta": {"step": "s"}}]
    metrics = compute_metrics(records, ["a"])
    paths = write_report(tmp_path, records=records, base_predictions=[SCRIPT + "\nline2"],
                         tuned_predictions=["a"], base_metrics=metrics, tuned_metrics=metrics, info={})
    md = paths["md"].read_text(encoding="utf-8")
    assert "| base | &lt;script&gt;alert('x')&lt;/script&gt; a\\|b<br>line2 | ✗ |" in md
    assert "All 1 examples." in md


def test_predictions_jsonl(report):
    paths, _, _ = report
    text = paths["predictions"].read_text(encoding="utf-8")
    assert "济南" in text  # ensure_ascii=False
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == len(RECORDS)
    assert list(rows[0]) == ["prompt", "content", "predict", "label", "base_predict", "step", "correct",
                             "base_correct"]
    assert [r["prompt"] for r in rows] == [f"<seen>{r['content']}" for r in RECORDS]  # the prompt the model saw
    assert [r["content"] for r in rows] == [r["content"] for r in RECORDS]
    assert [r["predict"] for r in rows] == TUNED
    assert [r["base_predict"] for r in rows] == BASE
    assert [r["label"] for r in rows] == [r["summary"] for r in RECORDS]
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert [r["base_correct"] for r in rows] == [False, False, False, True]
    assert [r["step"] for r in rows] == ["greet", "args", "args", "summary"]


def test_report_is_deterministic(report, tmp_path):
    paths, base_metrics, tuned_metrics = report
    again = write_report(tmp_path, records=RECORDS, base_predictions=BASE, tuned_predictions=TUNED,
                         base_metrics=base_metrics, tuned_metrics=tuned_metrics, info=INFO, max_markdown_examples=2,
                         prompts=[f"<seen>{r['content']}" for r in RECORDS])
    for key, path in paths.items():
        assert again[key].read_bytes() == path.read_bytes()


def test_mismatched_predictions_raise(tmp_path):
    metrics = compute_metrics(RECORDS, BASE)
    with pytest.raises(ValueError):
        write_report(tmp_path, records=RECORDS, base_predictions=BASE[:2], tuned_predictions=TUNED,
                     base_metrics=metrics, tuned_metrics=metrics, info={})


def test_format_metric_table(report):
    _, base_metrics, tuned_metrics = report
    table = format_metric_table(base_metrics, tuned_metrics)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "delta"]
    assert set(lines[1]) <= {"-", " "}
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows) == list(base_metrics["overall"])
    assert rows["exact_match"] == ["25.0000", "50.0000", "+25.0000"]
    assert rows["n"] == ["4", "4"]
    assert len({len(line) for line in lines[1:] if not line.startswith("n")}) == 1  # right-aligned columns
    with_steps = format_metric_table(base_metrics, tuned_metrics, per_step=True)
    assert "args/argument.place" in with_steps and "greet/exact_match" in with_steps
