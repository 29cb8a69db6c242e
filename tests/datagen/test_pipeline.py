"""tasktune.datagen.pipeline.generate (datagen.generate): determinism, n, progress, and the built-in specs."""

import json

import pytest

from tasktune.datagen import Splits, generate, load_spec, write_splits
from tasktune import TEMPLATES
from datagen_testutil import write_spec


def test_generate_accepts_a_path_or_a_spec(tmp_path):
    path = write_spec(tmp_path)
    a = generate(path, seed=1)
    b = generate(load_spec(path), seed=1)
    assert isinstance(a, Splits) and a.train == b.train and a.dev == b.dev and a.stats == b.stats
    assert generate(str(path), seed=2).train != a.train


def test_n_and_progress(tmp_path):
    seen = []
    splits = generate(write_spec(tmp_path), seed=1, n=30, progress=seen.append)
    assert len(splits.train) + len(splits.dev) == 30 == sum(seen)


@pytest.mark.parametrize("spec, n_dev_share", [("grid/spec.yaml", 0.1), ("smarthome/spec.yaml", None),
                                               ("grid/intent.yaml", 0.25)])
def test_builtin_specs_generate_cleanly(spec, n_dev_share):
    loaded = load_spec(TEMPLATES / spec)
    splits = generate(loaded, seed=loaded.seed)
    total = len(splits.train) + len(splits.dev)
    assert total == loaded.n and not splits.stats["warnings"]
    if n_dev_share:
        assert abs(len(splits.dev) / total - n_dev_share) < 0.05
    assert splits.stats["noise"]["train"]["edits"] > 0 and splits.stats["noise"]["dev"]["edits"] == 0


def test_smarthome_holds_out_rooms():
    splits = generate(TEMPLATES / "smarthome" / "spec.yaml", seed=7)
    rooms = lambda part: {r["meta"]["slots"]["room"] for r in part if "room" in r["meta"]["slots"]}  # noqa: E731
    assert rooms(splits.dev) and not rooms(splits.train) & rooms(splits.dev)


def test_intent_spec_writes_classification(tmp_path):
    write_splits(generate(TEMPLATES / "grid" / "intent.yaml", seed=42), tmp_path, "classification")
    train = json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))
    assert {r["label"] for r in train} == {"人数检测", "安全检查", "设备检查"}
    assert not (tmp_path / "dataset_info.json").exists()
