"""CPU smoke tests of the GPU benchmarks (`--tiny`): they run end to end and report sane figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-tiny")
    return _module("benchmodel").build_model_dir("tiny", folder)


def test_parameter_count_matches_built_model_and_6b_dimensions(tiny_dir):
    benchmodel = _module("benchmodel")
    record = json.loads((tiny_dir / benchmodel.RECORD).read_text())
    assert record["parameters"] == benchmodel.count_parameters("tiny")
    assert abs(benchmodel.count_parameters("6b") - 6.24e9) < 0.01e9  # ChatGLM3-6B's size


def test_char_tokenizer_round_trips_prompts_and_fills_vocabulary():
    benchmodel = _module("benchmodel")
    tokenizer = benchmodel.char_tokenizer(4096)
    assert len(tokenizer) == 4096
    prompt = benchmodel.grid_prompts(3)[1]
    ids = tokenizer(prompt)["input_ids"]
    assert len(ids) == len(prompt) and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == prompt
    assert tokenizer.decode([4000, 4001]) == "<x4000><x4001>"  # filler ids decode to distinct text


def test_train_bench_tiny_runs_both_methods(tiny_dir, tmp_path):
    out = tmp_path / "train.json"
    code = _module("train_bench").main(["--tiny", "--model-dir", str(tiny_dir), "--quantization-bit", "none",
                                        "--steps", "1", "--warmup", "0", "--cases", "2x8x8",
                                        "--checkpointing", "full", "--out", str(out)])
    assert code == 0
    runs = json.loads(out.read_text())["runs"]
    assert {r["method"] for r in runs} == {"tasktune", "reference"}
    for row in runs:
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["batch"] == 2 and row["src"] == 8


def test_eval_bench_tiny_batched_matches_loop_with_either_cache(tiny_dir, tmp_path):
    out = tmp_path / "eval.json"
    code = _module("eval_bench").main(["--tiny", "--model-dir", str(tiny_dir), "--quantization-bit", "none",
                                       "--prompts", "5", "--max-new-tokens", "4", "--batch-sizes", "5",
                                       "--caches", "auto,static", "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["one-by-one loop", "generate_batched (auto)", "generate_batched (static)"]
    for row in rows[1:]:  # left-padded prompts of different lengths, prefix attached
        assert "error" not in row, row
        assert row["same_answers"] == 5 and row["speedup"] > 0


def test_tiny_sweep_builds_tunes_and_reports_each_case(tmp_path):
    from tasktune.datagen import generate

    splits = generate(BENCH.parent / "templates/grid/spec.yaml", seed=3)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "dev"):
        (data / f"{name}.json").write_text(json.dumps(list(getattr(splits, name)), ensure_ascii=False))
    small = {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 32,
             "pretrain_steps": 2, "copy_warmup_steps": 1, "round_docs": 0.1}
    cases = [{"name": "ok", "keep": True, "tiny": small,
              "ptune": {"steps": 2, "evals": [1, 2], "pre_seq_len": 4, "warmup": 1}},
             {"name": "bad", "tiny": {**small, "num_heads": 4, "hidden_size": 30}}]  # 30 heads of 7.5: refused
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = tmp_path / "out"
    assert _module("tiny_sweep").main(["--cases", str(tmp_path / "cases.json"), "--data", str(data), "--out", str(out),
                                       "--n-dev", "12", "--spec", str(BENCH.parent / "templates/grid/spec.yaml")]) == 0
    results = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert "ConfigError" in results["bad"]["error"]  # a broken case is reported, the others still run
    evals = results["ok"]["runs"][0]["evals"]
    assert [e["step"] for e in evals] == [1, 2]
    assert (out / "ok" / "KEEP").is_file() and (out / "ok" / "model" / "config.json").is_file()
    assert all(0 <= e["em_task"] <= 1 and sum(int(v.split("/")[1]) for k, v in e.items() if "/" in str(v)) == 12
               for e in evals)


def test_grouping_bench_times_each_case_and_step_grouping_keeps_the_update(tiny_dir, tmp_path, capsys):
    from tests.tuning.runs import write_data

    data = write_data(tmp_path / "data")
    rows_file = tmp_path / "rows.json"
    assert _module("grouping_bench").main(["--model", str(tiny_dir), "--data", str(data), "--cases",
                                           "4x4:none,4x2:step,4x2:step:full", "--steps", "3", "--skip", "1",
                                           "--threads", "1", "--out", str(rows_file)]) == 0
    rows = json.loads(rows_file.read_text())
    assert [(r["global_batch"], r["micro_batch"], r["grouping"]) for r in rows] == \
        [(4, 4, "none"), (4, 2, "step"), (4, 2, "step")]
    assert all(r["s_per_step"] > 0 for r in rows)
    # the same examples, the same update (answer-position logits or the full ones)
    assert abs(rows[0]["final_loss"] - rows[1]["final_loss"]) < 1e-3
    assert abs(rows[1]["final_loss"] - rows[2]["final_loss"]) < 2e-4  # (rounded to 4 places)
    assert "| 4x2:step | 4 | 2 | step |" in capsys.readouterr().out


def test_verdict_probe_scores_only_the_verdict_of_single_round_count_answers():
    import torch

    probe = _module("verdict_probe")

    class CharTokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    class Model:
        def __init__(self, guess=None):
            self.guess = guess  # None: an oracle that knows every next token

        def eval(self):
            return self

        def __call__(self, ids):
            ids = ids[0].tolist()
            targets = ids[1:] + [0] if self.guess is None else [ord(self.guess)] * len(ids)
            logits = torch.zeros(1, len(ids), 0x10000)
            logits[0, torch.arange(len(ids)), torch.tensor(targets)] = 1.0
            return type("Out", (), {"logits": logits})()

    records = [{"summary": "[人数检测] 应到5人, 实到3人, 有人缺勤"},
               {"summary": "[人数检测] 应到5人, 实到5人, 无人缺勤, 正常出工"},
               {"summary": "[人数检测] 应到5人, 实到3人, 有人缺勤", "history": [["q", "a"]]},  # a dialogue: skipped
               {"summary": "[安全检查] 实到3人, 均佩戴安全帽"}]  # not a count answer: skipped
    assert probe.verdict_share(Model(), CharTokenizer(), records) == 1.0
    assert probe.verdict_share(Model("有"), CharTokenizer(), records) == 0.5
    assert probe.verdict_share(Model("人"), CharTokenizer(), records) == 0.0
    assert probe.verdict_share(Model("均"), CharTokenizer(), records) == 0.0  # the safety answer is not counted


def test_ddp_table_reads_steady_speed_and_windowed_peak_memory(tmp_path, capsys):
    ddp = _module("ddp_table")
    history = [{"step": s, "loss": 5.0 - s / 100, "seconds": 9.0 + 0.5 * s} for s in range(1, 41)]
    history[0]["seconds"] = 30.0  # the slow first step: the mean over all steps would be 0.49, after it 0.5
    assert ddp.steady_seconds_per_step(history) == pytest.approx(0.5)
    csv = tmp_path / "mem.csv"
    csv.write_text("2026/11/24 07:40:10.000, 0, 900\n2026/11/24 07:40:12.500, 0, 1200\n"
                   "2026/11/24 07:40:13.000, 1, 1100\n2026/11/24 07:40:13.500, 1, [N/A]\n2026/11/24 07:40:20.000, 0, 5000\n"
                   "bad line\n")
    start = ddp.datetime.strptime("2026/11/24 07:40:11.000", "%Y/%m/%d %H:%M:%S.%f").timestamp()
    assert ddp.peak_memory(csv, start, start + 5) == {0: 1200, 1: 1100}  # 900 before, 5000 after the window
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_history.json").write_text(json.dumps(history))
    (run / "tasktune_run.json").write_text(json.dumps({
        "steps": 40, "train_seconds": 31.0, "fingerprint": {"global_batch": 16},
        "config": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}}))
    assert ddp.main([f"{run}=two", str(tmp_path / "crashed"), "--memory", str(csv),
                     "--windows", f"{start}-{start + 5}"]) == 0
    row, missing = capsys.readouterr().out.splitlines()[-2:]
    assert missing.startswith("| crashed | no finished run")
    assert row.startswith("| two | 2 x 4 x 2 | 40 | 31.0 | 0.500 | 32.0 | 4.9900 | 4.9000 |") and "1200 / 1100" in row


def test_mem_peak_replay_finds_the_peak_and_what_is_live_there():
    replay = _module("mem_peak").replay
    events = [{"action": "alloc", "addr": 1, "size": 100},   # weights: live throughout
              {"action": "alloc", "addr": 2, "size": 50},
              {"action": "free_requested", "addr": 2, "size": 50},  # not freed until completed
              {"action": "alloc", "addr": 3, "size": 30},   # peak: 1 + 2 + 3 = 180
              {"action": "free_completed", "addr": 2, "size": 50},
              {"action": "alloc", "addr": 4, "size": 60},   # 1 + 3 + 4 = 190: the peak
              {"action": "free_completed", "addr": 4, "size": 60},
              {"action": "free_completed", "addr": 9, "size": 999},  # allocated before recording: ignored
              {"action": "alloc", "addr": 5, "size": 20}]
    peak, at, live = replay(events)
    assert (peak, at) == (190, 5)
    assert sorted(live) == [1, 3, 4]


def test_slim_wheel_drops_other_backends_from_archive_and_record(tmp_path):
    import zipfile
    wheel = tmp_path / "bitsandbytes-0.0-py3-none-any.whl"
    names = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cuda130.so",
             "bitsandbytes/libbitsandbytes_cuda118.so", "bitsandbytes/libbitsandbytes_rocm72.so"]
    with zipfile.ZipFile(wheel, "w") as z:
        for name in names:
            z.writestr(name, b"x" * 1000)
        z.writestr("bitsandbytes-0.0.dist-info/RECORD", "".join(f"{n},sha256=a,1000\n" for n in names))
    _module("slim_wheel").slim(str(wheel), {"cuda130"})
    with zipfile.ZipFile(wheel) as z:
        kept = set(z.namelist())
        record = z.read("bitsandbytes-0.0.dist-info/RECORD").decode()
    assert kept == {names[0], names[1], "bitsandbytes-0.0.dist-info/RECORD"}
    assert "cuda118" not in record and "rocm72" not in record and "cuda130" in record
    assert not list(tmp_path.glob("*.part"))
