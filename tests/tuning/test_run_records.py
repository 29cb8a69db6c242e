"""A run folder's records agree with each other and with its adapter files, or eval/chat refuse it (exit 2) naming
the file and field. Each record has one owner: tasktune_run.json (the run's settings; tuning/run.py),
tasktune_method.json (which method saved the adapter; tuning/model/methods/), tasktune_adapter.json (how a prefix was
saved; tuning/model/save.py). An edited `method` or `task` was evaluated as P-tuning v2 with exit 0, and a bad
`config.prompt_template` was refused without naming tasktune_run.json."""

from __future__ import annotations

import json
import shutil

import pytest

from tasktune.cli import main
from tests.tuning.runs import fast_config, write_data
from tasktune.tuning.training.train import fit


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    run = root / "run"
    fit(fast_config(tiny_model_dir("glm"), write_data(root / "data"), run, max_steps=2, save_steps=2),
        log=lambda *_: None)
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def edit(path, change) -> None:
    record = json.loads(path.read_text(encoding="utf-8"))
    change(record)
    path.write_text(json.dumps(record), encoding="utf-8")


def refused(run, capsys) -> str:
    assert main(["eval", str(run), "--limit", "1", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (run / "eval").exists()
    return err


@pytest.mark.parametrize("key, value", [("method", "lora"), ("method", "prompt"), ("method", "prefix"),
                                        ("method", "bitfit"), ("task", "classification")])
def test_a_method_record_that_disagrees_with_the_run_record_is_refused(run, capsys, key, value):
    edit(run / "tasktune_method.json", lambda r: r.update({key: value}))
    err = refused(run, capsys)
    assert f"{run}/tasktune_method.json: {key} is {value!r} but {run}/tasktune_run.json has config.{key} " in err
    assert "the run folder's records disagree" in err


@pytest.mark.parametrize("method, says", [
    ("lora", "method is 'lora', whose adapter has peft_type LORA, but {run}/adapter_config.json has peft_type "
             "'PREFIX_TUNING'"),
    ("prompt", "method is 'prompt', whose adapter has peft_type PROMPT_TUNING"),
    ("prefix", "method is 'prefix', whose prefix goes through an MLP (prefix_projection), but "
               "{run}/adapter_config.json has prefix_projection False"),
    ("full", "method is 'full', whose weights are tasktune_full.safetensors, which {run} lacks"),
])
def test_records_edited_alike_must_still_describe_the_adapter_files(run, capsys, method, says):
    """Both records say the same other method: the adapter files (PEFT's peft_type, a method's own weight file)
    decide; the prefix loaded through PEFT's LoRA/prompt family, or as `prefix`, with exit 0."""
    edit(run / "tasktune_method.json", lambda r: r.update(method=method))
    edit(run / "tasktune_run.json", lambda r: r["config"].update(method=method))
    err = refused(run, capsys)
    assert f"{run}/tasktune_method.json: {says.format(run=run)}" in err
    assert "the records disagree with the adapter files" in err


def test_a_task_edited_in_both_records_must_match_the_adapters_task_type(run, capsys):
    edit(run / "tasktune_method.json", lambda r: r.update(task="classification"))
    edit(run / "tasktune_run.json", lambda r: r["config"].update(task="classification"))
    assert main(["eval", str(run), "--limit", "1"]) == 2
    assert (f"{run}/tasktune_method.json: task is 'classification', whose adapter has task_type SEQ_CLS, but "
            f"{run}/adapter_config.json has task_type 'CAUSAL_LM'") in capsys.readouterr().err


def test_a_file_the_method_record_lists_must_be_there(run, capsys):
    (run / "tasktune_adapter.json").unlink()
    assert f"{run}/tasktune_method.json: files lists tasktune_adapter.json, which {run} lacks" in refused(run, capsys)


def test_an_edited_adapter_shape_is_refused_naming_the_field(run, capsys):
    edit(run / "tasktune_adapter.json", lambda r: r["shape"].update(num_layers=7))
    err = refused(run, capsys)
    assert f"{run}/tasktune_adapter.json: shape.num_layers is 7 but adapter_config.json's num_layers is 2" in err


@pytest.mark.parametrize("template, said", [("/etc/passwd", "expected auto"), ("nosuch.jinja", "no such .jinja file")])
def test_a_bad_prompt_template_in_the_run_record_names_the_record(run, capsys, template, said):
    edit(run / "tasktune_run.json", lambda r: r["config"].update(prompt_template=template))
    assert main(["chat", str(run)]) == 2  # (refused before the model loads or stdin is read)
    err = capsys.readouterr().err
    assert f"{run}/tasktune_run.json: config.prompt_template: prompt template {template!r}: {said}" in err


def test_the_untouched_run_still_evaluates(run):
    assert main(["eval", str(run), "--limit", "1", "--max-new-tokens", "1"]) == 0


@pytest.mark.parametrize("key, value, says", [
    ("fingerprint", [1], "fingerprint: expected an object or null, got list [1]"),  # AttributeError traceback
    ("quantization", "x", "quantization: expected 4, 8 or null"),  # loaded unquantised without a word
    ("quantization", 3, "quantization: expected 4, 8 or null"),  # refused without naming the file
    ("labels", "abc", "labels: expected a list of label names or null"),
    ("steps", "x", "steps: expected an integer or null, got str 'x'"),
])
def test_the_run_records_own_fields_are_checked(run, capsys, key, value, says):
    """A seventh probe: the record's top-level fields readers act on, of the shapes training writes."""
    edit(run / "tasktune_run.json", lambda r: r.update({key: value}))
    err = refused(run, capsys)
    assert f"{run}/tasktune_run.json: {says}" in err, err
