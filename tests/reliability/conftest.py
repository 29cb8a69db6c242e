"""Fixtures for the reliability tests: one tiny GLM model folder and one small data folder per session."""

from __future__ import annotations

import pytest

from tests.tuning.conftest import build_tiny_model_dir
from tests.tuning.runs import write_data


@pytest.fixture(scope="session")
def tiny_glm(tmp_path_factory):
    """A saved 2-layer GLM (safetensors) + tokenizer."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-glm-rel"), "glm")


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """train.json (21 records) / dev.json in the ChatGLM format."""
    return write_data(tmp_path_factory.mktemp("rel-data"))
