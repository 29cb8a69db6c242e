"""The demo's output reads cleanly (issue 22): progress as a few plain lines when the output is a file, the
side-by-side answers at the end of `make demo`, and no bitsandbytes kernel warning a CPU user cannot act on."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from tasktune.tuning.progress import progress_bar
from tasktune.tuning.evaluation.report import format_side_by_side, main as report_main


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_about_ten_plain_lines_not_a_redraw_per_step():
    out = io.StringIO()
    bar = progress_bar(1000, "train", unit="step", stream=out)
    for step in range(1000):
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}", refresh=False)
        bar.update(1)
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and 10 <= len(lines) <= 12, lines
    assert lines[-1].startswith("train: 1000/1000 (100%) [") and "loss=0.0010" in lines[-1]
    assert all("<" in line for line in lines)  # elapsed<remaining on every line


def test_a_terminal_gets_the_redrawn_bar():
    out = Terminal()
    bar = progress_bar(50, "train", unit="step", stream=out)
    for _ in range(50):
        bar.update(1)
    bar.close()
    assert "\r" in out.getvalue() and "50/50" in out.getvalue()


def test_a_resumed_run_counts_its_lines_from_where_it_resumed():
    out = io.StringIO()
    bar = progress_bar(1000, "train", initial=900, stream=out)
    for _ in range(100):
        bar.update(1)
    bar.close()
    assert 10 <= len(out.getvalue().splitlines()) <= 12


ROWS = [
    {"step": "summary", "content": "步骤#基于函数调用结果进行总结*应到16人", "predict": "[设备检查] 实到10人",
     "label": "[设备检查] 实到10人", "base_predict": "好的", "correct": True, "base_correct": False},
    {"step": "arguments", "content": "步骤#理解*语音#检测在邹城的电笔", "predict": "a", "label": "b",
     "base_predict": "c", "correct": False, "base_correct": False},
    {"step": "arguments", "content": "步骤#理解*语音#检测在[MASK]城的电笔", "predict": "x", "label": "x",
     "base_predict": "y", "correct": True, "base_correct": False},
    {"step": "greet", "content": "步骤#问候*语音#早上好", "predict": "您好", "label": "您好",
     "base_predict": "您好", "correct": True, "base_correct": True},
]


def test_side_by_side_shows_one_record_per_step_a_noised_request_first():
    text = format_side_by_side(ROWS)
    blocks = text.split("\n\n")
    assert [b.split("]")[0] for b in blocks] == ["[summary", "[arguments", "[greet"]
    assert blocks[1].splitlines() == ["[arguments] 步骤#理解*语音#检测在[MASK]城的电笔", "  base  ✗ y", "  tuned ✓ x",
                                      "  label   x"]
    assert "  base  ✓ 您好" in blocks[2]
    assert len(format_side_by_side(ROWS, per_step=2).split("\n\n")) == 4


def test_make_demo_prints_the_side_by_side_of_a_run(tmp_path, capsys):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "predictions.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    assert report_main([str(tmp_path)]) == 0
    assert "[greet] 步骤#问候*语音#早上好" in capsys.readouterr().out


def test_no_bitsandbytes_cpu_kernel_warning_on_import():
    code = "import tasktune.tuning.model.methods, tasktune.tuning.model.save, tasktune.tuning.run, peft"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr, done.stderr


def _capability(env: dict[str, str]) -> str:
    import os

    code = "import tasktune.tuning, torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_cpu_kernels_are_pinned_to_avx2_where_the_cpu_has_it():
    """An AVX-512 machine and an AVX2 one train the same bits (tuning/__init__.py); a user's own choice is kept."""
    import platform

    import pytest

    flags = open("/proc/cpuinfo", encoding="ascii", errors="replace").read() if platform.system() == "Linux" else ""
    if platform.machine() not in ("x86_64", "AMD64") or " avx2" not in flags:
        pytest.skip("the pin applies to x86-64 CPUs with AVX2")
    assert _capability({"ATEN_CPU_CAPABILITY": None}) == "AVX2"
    assert _capability({"ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"


def test_transformers_loading_bar_only_on_a_terminal():
    """`from_pretrained`'s "Loading weights" bar wrote a line of carriage-return redraws into every demo log; it now
    shows on a terminal only, and transformers' own setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    from tasktune.tuning.progress import library_bars_on_terminal_only

    with library_bars_on_terminal_only(io.StringIO()):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    with library_bars_on_terminal_only(Terminal()):
        assert hf_logging.is_progress_bar_enabled()
    code = ("import tasktune; from tasktune.tuning.model.load import load_model; "
            "load_model(str(tasktune.TEMPLATES / 'demo' / 'tiny-glm'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "\r" not in done.stderr, done.stderr
