"""benchmarks/serve_agreement.py on CPU: two tiny P-tuning v2 runs of one base (P = 4 and 6), every prompt answered by
the server's engine (rows of both runs in one batch) and by eval's generation path: identical in fp32; and the
comparison can fail (the negative control serves each run's prompts with the other run's prefix)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_agreement.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_serve_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """Two prefix runs (P = 4 and 6) on one tiny GLM base (as tests/serve/conftest.py's, one training step each)."""
    from tasktune.tuning.training.train import fit
    from tests.tuning.conftest import build_tiny_model_dir
    from tests.tuning.runs import fast_config, write_data

    root = tmp_path_factory.mktemp("agree")
    model = build_tiny_model_dir(root / "model", "glm")
    data = write_data(root / "data")
    runs = []
    for name, p, seed in (("grid", 4, 7), ("grid2", 6, 11)):
        runs.append(root / name)
        # one step: the two prefixes differ by their seeds already; the test is about agreement, not quality
        fit(fast_config(model, data, runs[-1], pre_seq_len=p, max_steps=1, gradient_accumulation_steps=1,
                        learning_rate=3e-1, seed=seed, save_steps=1), log=lambda *_: None)
    return runs


def _run(module, runs, tmp_path, *extra) -> dict:
    out = tmp_path / "agree.json"
    code = module.main([*map(str, runs), "--max-new-tokens", "12", "--max-batch-size", "8", "--out", str(out),
                        *extra])
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("decode", ["auto", "slots"])  # auto: the dynamic batch on the CPU; slots: the GPU's way
def test_engine_answers_equal_eval_in_fp32_and_the_table_says_so(two_runs, tmp_path, capsys, decode):
    module = _module()
    results = _run(module, two_runs, tmp_path, "--ignore-eos", "--decode", decode)
    assert results["engine"]["decode"] == ("dynamic" if decode == "auto" else "slots")
    rows = results["rows"]
    assert len(rows) == 12 and {r["run"] for r in rows} == {"grid", "grid2"}  # 6 dev prompts per run
    assert results["engine"]["max_rows_in_a_step"] == 8  # both runs' rows decoded together
    assert all(r["same_prompt"] and not r["error"] for r in rows)
    assert all(len(r["eval_tokens"]) == len(r["engine_tokens"]) == 12 for r in rows)  # eos ignored on both sides
    assert [r for r in rows if not r["identical"]] == []
    assert results["summary"] == {"prompts": 12, "identical": 12, "differing": 0, "near_tie": 0, "not_near_tie": 0}
    text = capsys.readouterr().out
    assert "| all: grid, grid2 | 12 | 12 (100.0 %) | 0 (0.0 %) | 0 | 0 |" in text
    assert "quantization none" in text and "float32" in text
    # the answers are not trivially equal: the two prefixes answer the same prompt differently
    first = {r["run"]: r["eval_tokens"] for r in rows if r["index"] == 0}
    assert first["grid"] != first["grid2"]


def test_wrong_prefix_control_is_reported_differing_with_margins(two_runs, tmp_path, capsys):
    module = _module()
    results = _run(module, two_runs, tmp_path, "--control", "wrong-prefix")
    differing = [r for r in results["rows"] if not r["identical"]]
    assert len(differing) >= 6, results["summary"]
    for r in differing:
        assert r["position"] is not None and r["margin"] >= 0 and 0 <= r["prob_margin"] <= 1
        assert r["eval_tokens"][:r["position"]] == r["engine_tokens"][:r["position"]]
        if r["eval_token"] is not None and r["engine_token"] is not None:
            assert r["eval_token"] != r["engine_token"]
            assert r["tf_top1_is_eval"]  # fp32: teacher forcing reproduces eval's own choice
            assert r["eval_minus_engine_logit"] >= r["margin"] - 1e-6 >= -1e-6
        assert r["logits_dtype"] == "torch.float32"
    s = results["summary"]
    assert s["near_tie"] + s["not_near_tie"] == s["differing"] == len(differing)
    text = capsys.readouterr().out
    assert "CONTROL wrong-prefix" in text
    if s["not_near_tie"]:
        assert "| run | prompt | position | margin |" in text


def test_trim_and_first_difference():
    module = _module()
    assert module.trim([5, 2, 7, 2], eos=2, ignore_eos=False) == [5, 2]
    assert module.trim([5, 2, 7], eos=2, ignore_eos=True) == [5, 2, 7]
    assert module.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert module.first_difference([1, 2, 3], [1, 4, 3]) == 1
    assert module.first_difference([1, 2], [1, 2, 2]) == 2
