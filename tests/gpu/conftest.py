"""GPU-only tests: every test here is marked `gpu` and skipped on machines without CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if Path(item.fspath).is_relative_to(here):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_tiny_dir(tmp_path_factory):
    """A 2-layer GQA GLM with clear-cut greedy choices (tests/tuning/conftest.py's builder), saved once."""
    spec = importlib.util.spec_from_file_location("tuning_conftest", Path(__file__).parents[1] / "tuning" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_model_dir(tmp_path_factory.mktemp("gpu-tiny-glm"), "glm")
