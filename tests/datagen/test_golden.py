"""Golden test: a tiny spec and seed give exactly the committed files (regenerate: UPDATE_GOLDEN=1)."""

import os
import shutil
from pathlib import Path

from tasktune.datagen import generate, write_splits

GOLDEN = Path(__file__).parent / "golden"
FILES = ("train.json", "dev.json", "dataset_info.json", "stats.json")


def test_golden_output(tmp_path):
    out = tmp_path / "out"
    write_splits(generate(GOLDEN / "spec.yaml", seed=3), out)
    if os.environ.get("UPDATE_GOLDEN"):
        for name in FILES:
            shutil.copy(out / name, GOLDEN / "expected" / name)
    for name in FILES:
        assert (out / name).read_bytes() == (GOLDEN / "expected" / name).read_bytes(), name
