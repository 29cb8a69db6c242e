"""The data files as other tools read them, unchanged: ChatGLM's P-tuning scripts and LLaMA-Factory's columns.

ChatGLM's scripts are not on PyPI, so their column handling is reproduced here line for line:

- ChatGLM-6B, github.com/THUDM/ChatGLM-6B commit 401bf3a (2024-06-27), `ptuning/main.py`: lines 99-104 load the
  files with `datasets.load_dataset(<extension>, data_files=...)`; `preprocess_function_eval` (lines 158-172) and
  `preprocess_function_train` (lines 186-205) index `examples[history_column][i]` for every record and
  iterate it (`for turn_idx, (old_query, response) in enumerate(history)`; the eval path first takes its
  `len`), building `[Round {i}]\\n问：{q}\\n答：{a}\\n` per earlier turn, then
  `[Round {n}]\\n问：{query}\\n答：`. Its `train_chat.sh` passes `--history_column history`.
- ChatGLM2-6B, github.com/THUDM/ChatGLM2-6B commit cb8e8b4 (2024-06-27), `ptuning/main.py` lines 163-164 and
  191-192: `history = examples[history_column][i] if history_column is not None else None`, then
  `tokenizer.build_prompt(query, history)`, which (tokenization_chatglm.py of the THUDM/chatglm2-6b model)
  turns None into [] and builds `[Round {i+1}]\\n\\n问：{q}\\n\\n答：{a}\\n\\n` turns, then
  `[Round {n+1}]\\n\\n问：{query}\\n\\n答：`.
- ChatGLM3 ships no column-based P-tuning script: its `finetune_demo/finetune_hf.py` reads a `conversations`
  list of {role, content}; ChatGLM3 users of the ptuning scripts run ChatGLM2-6B's `main.py` (after adding
  ChatGLM2's `build_prompt` to ChatGLM3's tokenizer), which is the ChatGLM2 path here.

`datasets` turns a key that some records lack into None in the batch, which is what broke ChatGLM-6B (TypeError
on `len(None)` / `enumerate(None)`); the last test shows the reproduction fails on such a file.
LLaMA-Factory's real loader runs in benchmarks/llamafactory_check.py (it needs a venv of its own; the slow test
below runs it when TASKTUNE_LF_PYTHON names that venv's python).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tasktune
from tasktune.datagen.formats import FORMATS

datasets = pytest.importorskip("datasets")

SPECS = ("grid", "smarthome")


def chatglm6b_prompts(examples: dict, prompt_column: str, response_column: str, history_column: str | None,
                      *, train: bool) -> list[str]:
    """ChatGLM-6B ptuning/main.py preprocess_function_train (train) / _eval: the prompt of each record."""
    prompts = []
    for i in range(len(examples[prompt_column])):
        if examples[prompt_column][i] and examples[response_column][i]:
            query = examples[prompt_column][i]
            if history_column is None or (not train and len(examples[history_column][i]) == 0):
                prompt = query
            else:
                prompt = ""
                history = examples[history_column][i]
                for turn_idx, (old_query, response) in enumerate(history):
                    prompt += "[Round {}]\n问：{}\n答：{}\n".format(turn_idx, old_query, response)
                prompt += "[Round {}]\n问：{}\n答：".format(len(history), query)
            prompts.append(prompt)
    return prompts


def chatglm2_build_prompt(query, history=None):
    """THUDM/chatglm2-6b tokenization_chatglm.py ChatGLMTokenizer.build_prompt."""
    if history is None:
        history = []
    prompt = ""
    for i, (old_query, response) in enumerate(history):
        prompt += "[Round {}]\n\n问：{}\n\n答：{}\n\n".format(i + 1, old_query, response)
    prompt += "[Round {}]\n\n问：{}\n\n答：".format(len(history) + 1, query)
    return prompt


def chatglm2_prompts(examples: dict, prompt_column: str, response_column: str, history_column: str | None) -> list:
    """ChatGLM2-6B ptuning/main.py preprocess_function_train/_eval (the same prompt for both)."""
    prompts = []
    for i in range(len(examples[prompt_column])):
        if examples[prompt_column][i] and examples[response_column][i]:
            query = examples[prompt_column][i]
            history = examples[history_column][i] if history_column is not None else None
            prompts.append(chatglm2_build_prompt(query, history))
    return prompts


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Each built-in spec's full data set (spec's own n) in every format: {(spec, fmt): folder}."""
    root = tmp_path_factory.mktemp("readers")
    out = {}
    for spec in SPECS:
        for fmt in FORMATS:
            if fmt == "classification":
                continue
            out[spec, fmt] = root / f"{spec}-{fmt}"
            tasktune.generate_data(spec, out[spec, fmt], seed=5, fmt=fmt)
    return out


def load_as_chatglm_does(folder: Path, tmp_path: Path):
    """ChatGLM main.py lines 99-104: `load_dataset(extension, data_files=...)`; the `json` builder reads both
    JSON arrays and JSON lines (main.py takes the builder name from the file's extension, so a `.jsonl` file is
    passed as `--train_file` only after renaming it to `.json`)."""
    ext = "jsonl" if (folder / "train.jsonl").exists() else "json"
    files = {"train": str(folder / f"train.{ext}"), "validation": str(folder / f"dev.{ext}")}
    return datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("fmt", ["chatglm", "jsonl"])
def test_chatglm_ptuning_scripts_read_every_record_with_its_history(data, spec, fmt, tmp_path):
    raw = load_as_chatglm_does(data[spec, fmt], tmp_path)
    for split in ("train", "validation"):
        rows = raw[split]
        assert {"content", "summary", "history"} <= set(rows.column_names)
        batch = rows[:]  # what `map(batched=True)` hands the preprocess functions
        n = len(rows)
        for history_column in ("history", None):
            train6 = chatglm6b_prompts(batch, "content", "summary", history_column, train=True)
            eval6 = chatglm6b_prompts(batch, "content", "summary", history_column, train=False)
            glm2 = chatglm2_prompts(batch, "content", "summary", history_column)
            assert len(train6) == len(eval6) == len(glm2) == n  # no record dropped, none raised
        # with --history_column history, a dialogue's earlier turns are in its prompt
        train6 = chatglm6b_prompts(batch, "content", "summary", "history", train=True)
        glm2 = chatglm2_prompts(batch, "content", "summary", "history")
        for content, history, p6, p2 in zip(batch["content"], batch["history"], train6, glm2):
            assert p6.endswith(f"[Round {len(history)}]\n问：{content}\n答：")
            assert p2.endswith(f"[Round {len(history) + 1}]\n\n问：{content}\n\n答：")
            for query, answer in history:
                assert f"问：{query}\n答：{answer}\n" in p6 and f"问：{query}\n\n答：{answer}\n\n" in p2
    dialogues = sum(bool(h) for h in raw["train"]["history"])
    assert (dialogues > 0) == (spec == "grid")  # grid has whole-dialogue chains, smarthome none


def test_the_reproduction_fails_on_records_without_history(tmp_path):
    """What ChatGLM-6B did with the old files (history only on dialogue records): a TypeError."""
    records = [{"content": "q1", "summary": "a1", "history": [["q0", "a0"]]}, {"content": "q2", "summary": "a2"}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    batch = datasets.load_dataset("json", data_files={"train": str(path)}, cache_dir=str(tmp_path / "c"))["train"][:]
    assert batch["history"][1] is None
    with pytest.raises(TypeError):
        chatglm6b_prompts(batch, "content", "summary", "history", train=True)
    with pytest.raises(TypeError):
        chatglm6b_prompts(batch, "content", "summary", "history", train=False)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("fmt", ["chatglm", "jsonl", "alpaca", "sharegpt"])
def test_dataset_info_maps_only_columns_every_record_has(data, spec, fmt):
    folder = data[spec, fmt]
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {f"{spec}_train", f"{spec}_dev"}
    for entry in info.values():
        text = (folder / entry["file_name"]).read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else json.loads(text)
        assert records
        for column in entry["columns"].values():
            missing = [i for i, r in enumerate(records) if column not in r]
            assert not missing, f"{entry['file_name']}: column {column!r} mapped but absent from records {missing[:5]}"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TASKTUNE_LF_PYTHON"), reason="set TASKTUNE_LF_PYTHON to a python with "
                    "`llamafactory` installed (a venv of its own: it pins other transformers/peft versions)")
def test_llamafactory_loader_reads_every_spec_and_format():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "llamafactory_check.py"
    proc = subprocess.run([sys.executable, str(script), "--lf-python", os.environ["TASKTUNE_LF_PYTHON"]],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count(" ok: ") == len(SPECS) * 4, proc.stdout
