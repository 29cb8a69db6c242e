"""Helpers for the datagen tests: write a small spec (and pool files) into a temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

MINI = """\
name: mini
n: 40
slots:
  place: {values: [济南, 青岛, 烟台, 潍坊, 临沂, 德州]}
  check: {choices: [人数检测, 安全检查]}
  expected: {range: [1, 20]}
  present: {expr: "[expected] if expected % 2 == 0 else range(0, expected)"}
steps:
  - name: greet
    pattern: "步骤#问候*语音#{{ utterance }}"
    count: 3
    contents: [你好, 您好, 你是谁]
    summary: 您好
  - name: arguments
    pattern: "步骤#拆分*语音#{{ utterance }}"
    arguments: [place, check]
    count: 12
    contents:
      - {text: "查查{{ place }}的人数", fix: {check: 人数检测}}
      - {text: "检查{{ place }}的安全", fix: {check: 安全检查}}
    summary: "地名为{{ place }}, 任务为{{ check }}"
  - name: summary
    pattern: "步骤#总结*应到{{ expected }}人*实到{{ present }}人"
    contents: [""]
    summary:
      - {when: "present == expected", text: 无人缺勤}
      - {text: "缺勤{{ expected - present }}人"}
noise:
  rate: 0.3
  ops: {mask: 1, homophone: 1, delete: 1, insert: 1}
split: {strategy: random, dev: 0.25}
"""


def write_spec(folder: Path, text: str = MINI, name: str = "spec.yaml", **files: str) -> Path:
    """Write `text` as folder/name (plus any extra files given as name=content); return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    for file, content in files.items():
        (folder / file.replace("__", ".")).write_text(content, encoding="utf-8")
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path
