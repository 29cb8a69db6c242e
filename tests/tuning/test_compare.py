"""`tasktune compare`: every method in its own process, one table row each, a chart; failures are rows too."""

import json

import pytest

from tasktune.errors import ConfigError
from tests.tuning.runs import write_data
from tasktune.tuning.evaluation.compare import CompareConfig, compare, format_markdown, train_config_for


def test_compare_writes_table_and_chart(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "data")
    out = tmp_path / "cmp"
    # llama has no biases: bitfit fails, and the comparison goes on
    cfg = CompareConfig(model=str(tiny_model_dir("llama")), data=str(data), out=str(out),
                        methods=["ptuning-v2", "lora", "bitfit"], steps=2, batch_size=2, pre_seq_len=4, limit=2,
                        max_new_tokens=4, quantization_bit="none")
    summary = compare(cfg, log=lambda *_: None)
    rows = {r["method"]: r for r in summary["results"]}
    assert "no bias parameters" in rows["bitfit"]["error"]
    for method in ("ptuning-v2", "lora"):
        r = rows[method]
        assert "error" not in r, r
        assert r["trainable"] > 0 and r["checkpoint_bytes"] > 0 and r["peak_mib"] > 0 and r["seconds_per_step"] > 0
        assert {"exact_match", "rouge-l"} <= set(r["tuned"])
    assert rows["ptuning-v2"]["trainable"] == 4 * 2 * 2 * 2 * 16  # P x layers x (k,v) x kv heads x head_dim
    table = (out / "compare.md").read_text()
    assert table.count("\n| ptuning-v2 |") == 1 and "| bitfit | failed:" in table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "compare.json").read_text())["results"] == summary["results"]


def test_every_method_gets_the_same_budget():
    cfg = CompareConfig(model="m", data="d", out="o", steps=7, learning_rates={"lora": 1e-3})
    runs = [train_config_for(cfg, m) for m in cfg.methods]
    assert {r["max_steps"] for r in runs} == {7} and {r["resume"] for r in runs} == {"never"}
    assert len({r["out"] for r in runs}) == len(runs)
    assert train_config_for(cfg, "lora")["learning_rate"] == 1e-3


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown method"):
        CompareConfig(model="m", data="d", methods=["lora", "adapterdrop"])


@pytest.mark.parametrize("methods, says", [([], "names no method"), (["lora", "lora"], "lora more than once")])
def test_no_method_or_one_twice_is_refused(methods, says):
    """`--methods ""` wrote an empty table over compare.md (exit 0); `lora,lora` trained into one folder twice."""
    with pytest.raises(ConfigError, match=says):
        CompareConfig(model="m", data="d", out="o", methods=methods)


def test_markdown_for_classification_metrics():
    cfg = CompareConfig(model="m", data="d", methods=["lora"], task="classification")
    row = {"method": "lora", "trainable": 10, "total": 1000, "checkpoint_bytes": 2048, "peak_mib": 300.0,
           "peak_delta_mib": 50.0, "memory_kind": "peak RSS", "seconds_per_step": 0.5, "final_loss": 0.1,
           "base": {"accuracy": 33.3, "macro_f1": 20.0}, "tuned": {"accuracy": 90.0, "macro_f1": 89.5}}
    text = format_markdown(cfg, [row], {"device": "cpu"})
    assert "| lora | 10 | 1.000 | 2.0 KiB | 300 (+50) | 0.500 | 0.1000 | 33.3 → 90.0 | 20.0 → 89.5 |" in text


def test_the_cli_exits_non_zero_when_a_method_failed(tiny_model_dir, tmp_path, capsys):
    """A table of failures was exit 0 (llama has no biases: bitfit fails in its own process)."""
    from tasktune.cli import main

    code = main(["compare", "--model", str(tiny_model_dir("llama")), "--data", str(write_data(tmp_path / "data")),
                 "--out", str(tmp_path / "cmp"), "--methods", "bitfit", "--steps", "1", "--quantization-bit", "none"])
    assert code == 1 and "1 of 1 method(s) failed: bitfit" in capsys.readouterr().err
    assert "| bitfit | failed:" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.parametrize("model, data, says", [
    ("nosuch", "data", "--model: model path {tmp}/nosuch does not exist"),
    ("", "data", "--model: empty model name"),
    ("glm", "nosuch", "--data {tmp}/nosuch: no such data file"),
    ("glm", "", "--data: empty path"),
    ("glm", "data/train.json", "--data {tmp}/data/train.json: a file; compare trains on a folder's train split"),
    ("glm", "nodev", "--data {tmp}/nodev: no dev.json or dev.jsonl in this folder"),
    ("glm", "badrecord", "--data {tmp}/badrecord/train.json: record 0: column 'summary' is empty"),
    ("glm", "data --max-new-tokens 600", "--max-new-tokens 600 leaves no room for a prompt in {model}'s 512-position "
                                         "context (at most 511)"),  # refused by each method's eval, after training
    ("glm", "data --methods ptuning-v2 --pre-seq-len 4096", "--pre-seq-len 4096 (ptuning-v2) + the 128 positions of a "
                                                            "training record is more than {model}'s 512-position"),
])
def test_inputs_every_method_would_fail_on_are_refused_before_any_work(tiny_model_dir, tmp_path, capsys, model, data,
                                                                      says):
    """A seventh probe: a missing --model or --data started every method (a subprocess each), wrote a table of
    failures, exit 1; a data *file* scored each method on the very records it trained on (its dev split is itself)."""
    from tasktune.cli import main

    write_data(tmp_path / "data")
    write_data(tmp_path / "nodev").joinpath("dev.json").unlink()
    bad = write_data(tmp_path / "badrecord") / "train.json"
    bad.write_text(json.dumps([{"content": "q", "summary": " "}]), encoding="utf-8")
    model = str(tiny_model_dir("glm")) if model == "glm" else (str(tmp_path / model) if model else "")
    data, *flags = data.split(" ") if data else [""]
    code = main(["compare", "--model", model, "--data", str(tmp_path / data) if data else "",
                 "--out", str(tmp_path / "cmp"), "--methods", "bitfit", "--steps", "1", *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tasktune")]  # (not the
    assert code == 2 and len(err) == 1 and says.format(tmp=tmp_path, model=model) in err[0], err  # tiny model's bars)
    assert not (tmp_path / "cmp").exists()


def test_a_rate_for_a_method_not_compared_is_refused():
    """`--lr lora=0.1 --methods bitfit` was silently ignored."""
    with pytest.raises(ConfigError, match=r"--lr names lora, not among --methods \(bitfit\)"):
        CompareConfig(model="m", data="d", out="o", methods=["bitfit"], learning_rates={"lora": 0.1})


def test_a_method_given_two_rates_is_refused(tmp_path, capsys):
    """`--lr bitfit=0.1 --lr bitfit=0.2` silently kept 0.2."""
    from tasktune.cli import main

    code = main(["compare", "--model", "m", "--data", "d", "--out", str(tmp_path / "cmp"), "--methods", "bitfit",
                 "--lr", "bitfit=0.1", "--lr", "bitfit=0.2"])
    err = capsys.readouterr().err
    assert code == 2 and "--lr: method 'bitfit' given more than once" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cmp").exists()


def test_an_out_folder_holding_other_files_is_refused(tmp_path, capsys):
    """`compare --out run` (a trained run folder, or any unrelated folder) mixed compare's files into it and
    deleted/retrained method folders there; `tiny-model` refuses the same."""
    from tasktune.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "tasktune_adapter.json").write_text("{}")
    code = main(["compare", "--model", "m", "--data", "d", "--out", str(run), "--methods", "bitfit"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--out {run}: holds files `tasktune compare` did not write (checkpoints, tasktune_adapter.json)" in err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "tasktune_adapter.json"]


def test_an_earlier_compare_folder_is_accepted_and_a_look_alike_is_not(tmp_path):
    from tasktune.tuning.evaluation.compare import check_out_folder

    out = tmp_path / "cmp"
    (out / "lora").mkdir(parents=True)
    for name in ("compare.json", "compare.md", "compare.png", ".bitfit.spec.json", ".lora.result.json"):
        (out / name).write_text("x")
    check_out_folder(out)  # an earlier (or interrupted) compare's folder
    check_out_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_out_folder(tmp_path / "empty")
    (out / "bitfit").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"did not write \(bitfit, notes.txt\)"):
        check_out_folder(out)


def test_the_context_check_counts_what_the_task_reads():
    """compare refused classification settings train accepts: it counted --max-target-length (and the answer cap),
    which a classifier never uses."""
    from types import SimpleNamespace

    from tasktune.tuning.evaluation.compare import _check_lengths

    base = SimpleNamespace(max_position_embeddings=150)  # the defaults' 64 + 64 positions, + a prefix of 32
    for task, refused in (("classification", False), ("causal-lm", True)):
        cfg = CompareConfig(model="m", data="d", out="o", methods=["ptuning-v2"], task=task, pre_seq_len=32)
        if refused:
            with pytest.raises(ConfigError, match="--pre-seq-len 32 .* 150-position context"):
                _check_lengths(cfg, base)
        else:
            _check_lengths(cfg, base)
