"""Where a base model comes from, and a damaged one (a fifth probe, docs/reliability.md): a hub id with the hub out of
reach fails at once, a cached one loads offline; a damaged config.json or tokenizer is one line naming the file, and
`tasktune train` writes nothing (no run folder, no `runs/` above it) when the base cannot load."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import time

import pytest
from safetensors.torch import load_file, save_file

from tasktune.cli import main
from tasktune.errors import ConfigError
from tasktune.tuning.model import hub
from tasktune.tuning.model.load import load_model, load_tokenizer
from tests.tuning.runs import write_data


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """Point huggingface_hub at an endpoint (online mode) with an empty cache; returns the setter."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub._connect_error.cache_clear()

    def point(url: str) -> str:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        return url

    yield point
    hub._connect_error.cache_clear()


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: connection refused


def _train(model, data, out, *extra) -> int:
    return main(["train", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "1",
                 "--pre-seq-len", "4", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1",
                 "--quantization-bit", "none", *extra])


@pytest.mark.parametrize("endpoint", [_closed_port(), "https://nosuch.invalid"], ids=["closed port", "no such host"])
@pytest.mark.parametrize("name", ["models/nosuch", "tiny-glmm", "someorg/nonexistent-model"])
def test_unreachable_hub_fails_at_once(hub_at, endpoint, name, tmp_path, monkeypatch, capsys, caplog):
    url = hub_at(endpoint)
    monkeypatch.chdir(tmp_path)
    data = write_data(tmp_path / "data")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert _train(name, data, "runs/R") == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"tasktune train: error: --model {name}: no such local folder" in err
    assert f"the Hugging Face hub ({url}) cannot be reached" in err and "HF_HUB_OFFLINE=1" in err
    assert "Retrying" not in err + caplog.text
    assert not (tmp_path / "runs").exists()  # nothing written, not even the empty folder above the run


def _fake_cache(root, source):
    """A Hugging Face cache holding `source` as the hub model org/tiny (refs/main -> snapshot abc123)."""
    repo = root / "models--org--tiny"
    shutil.copytree(source, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub out of reach"])
def test_a_cached_hub_model_loads_without_the_hub(hub_at, tiny_model_dir, tmp_path, monkeypatch, offline):
    from huggingface_hub import constants

    hub_at(_closed_port())
    _fake_cache(tmp_path / "hf-cache", tiny_model_dir("glm"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    tokenizer = load_tokenizer("org/tiny")
    model = load_model("org/tiny")
    assert time.monotonic() - start < 10
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert constants.HF_HUB_OFFLINE is offline  # restored after the cache-only load


def test_offline_and_not_cached_names_the_cache(hub_at, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"--model org/other: no such local folder .* not in the local Hugging "
                                          r"Face cache .*HF_HUB_OFFLINE is set"):
        load_model("org/other")


def test_empty_model_name():
    with pytest.raises(ConfigError, match="empty model name"):
        load_model("")
    with pytest.raises(ConfigError, match="empty model name"):
        load_tokenizer(" ")


def _edit_config(folder, change):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(change(config)))


def _hidden_size_text(folder):
    _edit_config(folder, lambda c: {**c, "hidden_size": str(c["hidden_size"])})


def _json_list(folder):
    (folder / "config.json").write_text("[1, 2]")


def _no_config(folder):
    (folder / "config.json").unlink()


def _small_vocab(folder):  # the config edited, the weights as they were
    _edit_config(folder, lambda c: {**c, "vocab_size": 100})


def _small_embedding(folder):  # weights and config agree, both smaller than the tokenizer
    weights = load_file(str(folder / "model.safetensors"))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[key] = weights[key][:100].contiguous()
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _edit_config(folder, lambda c: {**c, "vocab_size": 100})


def _large_vocab(folder):  # larger than the tokenizer (fine) but not the weights' shape
    _edit_config(folder, lambda c: {**c, "vocab_size": c["vocab_size"] + 50})


SMALL_VOCAB = r"M/config.json: vocab_size 100 is smaller than the tokenizer's \d+ tokens \(the data holds token id \d+"


@pytest.mark.parametrize("damage, message", [
    (_hidden_size_text, r"M/config.json: Validation error for field 'hidden_size': .*expected int, got str"),
    (_json_list, r"M/config.json: holds a JSON list, not an object"),
    (_no_config, r"M/config.json: missing; a model folder needs its config.json"),
    (_small_vocab, SMALL_VOCAB),
    (_small_embedding, SMALL_VOCAB),
    (_large_vocab, r"M: its weights do not have the shapes M/config.json gives"),
], ids=["hidden_size text", "JSON list", "missing", "vocab_size edited", "small embedding", "weights mismatch"])
def test_a_damaged_config_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch, capsys, damage,
                                                         message):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir("glm"), tmp_path / "M")
    damage(tmp_path / "M")
    data = write_data(tmp_path / "data")
    assert _train("M", data, "runs/R") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tasktune train: error: ")
    assert re.search(message, err[-1]), err[-1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("damage, message", [
    ("tokenizer.json", r"M/tokenizer.json: not valid JSON \(Expecting value: line 1 column 1"),
    ("no tokenizer", r"M has no tokenizer files \(looked for tokenizer.json, tokenizer.model"),
    ("empty folder", r"M has no tokenizer files"),
])
def test_a_damaged_tokenizer_names_the_file(tiny_model_dir, tmp_path, monkeypatch, damage, message):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir("glm"), tmp_path / "M")
    if damage == "tokenizer.json":
        (tmp_path / "M" / "tokenizer.json").write_text("not json")
    else:
        for path in (tmp_path / "M").iterdir():
            if damage == "empty folder" or path.name.startswith(("tokenizer", "special_tokens")):
                path.unlink()
    with pytest.raises(ConfigError, match=message):
        load_tokenizer("M")
