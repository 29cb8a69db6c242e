"""tasktune.datagen.split: each strategy's disjointness, per-step shares, determinism."""

import random

import pytest

from tasktune.datagen.expand import expand
from tasktune.datagen.spec import SplitSpec, load_spec
from tasktune.datagen.split import split
from datagen_testutil import MINI, write_spec

BIG = MINI.replace("n: 40", "n: 200").replace("[济南, 青岛, 烟台, 潍坊, 临沂, 德州]",
                                               "[济南, 青岛, 烟台, 潍坊, 临沂, 德州, 泰安, 威海, 日照, 聊城]")


@pytest.fixture
def examples(tmp_path):
    return expand(load_spec(write_spec(tmp_path, BIG.replace("count: 12", "count: 20"))), random.Random(0))


def test_random_split_is_disjoint_by_text_and_per_step(examples):
    train, dev = split(examples, SplitSpec("random", 0.25), random.Random(0))
    assert len(train) + len(dev) == len(examples)
    assert not {e.key for e in train} & {e.key for e in dev}
    for step in ("arguments", "summary"):
        n_dev = sum(e.step == step for e in dev)
        n_all = sum(e.step == step for e in examples)
        assert abs(n_dev - 0.25 * n_all) <= 1


def test_duplicates_stay_on_one_side(tmp_path):
    text = BIG.replace("    count: 3\n", "    count: 30\n    unique: false\n")
    examples = expand(load_spec(write_spec(tmp_path, text)), random.Random(0))
    train, dev = split(examples, SplitSpec("random", 0.3), random.Random(0))
    assert not {e.key for e in train if e.step == "greet"} & {e.key for e in dev if e.step == "greet"}


def test_template_split_keeps_templates_disjoint(examples):
    warnings = []
    train, dev = split(examples, SplitSpec("template", 0.3), random.Random(2), warnings)
    args_train = {e.template for e in train if e.step == "arguments"}
    args_dev = {e.template for e in dev if e.step == "arguments"}
    assert args_train and args_dev and not args_train & args_dev
    greet_train, greet_dev = ({e.template for e in part if e.step == "greet"} for part in (train, dev))
    assert not greet_train & greet_dev
    # the summary step has one template: it is split by text, with a warning
    assert any("'summary'" in w for w in warnings)
    assert any(e.step == "summary" for e in dev) and any(e.step == "summary" for e in train)


def test_slot_split_holds_out_values(examples):
    train, dev = split(examples, SplitSpec("slot", 0.2, "place"), random.Random(3))
    seen = {e.slots["place"] for e in train if "place" in e.slots}
    held = {e.slots["place"] for e in dev if "place" in e.slots}
    assert held and seen and not seen & held
    assert len(held) == 2  # 20% of 10 places
    assert any(e.step == "summary" for e in dev)  # steps without the slot are split at random


def test_split_is_deterministic(examples):
    a = split(examples, SplitSpec("random", 0.25), random.Random(9))
    b = split(examples, SplitSpec("random", 0.25), random.Random(9))
    assert [[e.key for e in part] for part in a] == [[e.key for e in part] for part in b]
    c = split(examples, SplitSpec("random", 0.25), random.Random(10))
    assert [e.key for e in a[1]] != [e.key for e in c[1]]


def test_train_is_shuffled_across_steps(examples):
    train, _ = split(examples, SplitSpec("random", 0.25), random.Random(0))
    steps = [e.step for e in train]
    assert steps != sorted(steps, key=["greet", "arguments", "summary"].index)


ONE_TEXT = """\
name: one
n: 20
slots: {a: {values: [q]}}
steps: [{name: s1, unique: false, contents: ["hi {{ a }}"], summary: "ok {{ a }}"}]
"""


@pytest.mark.parametrize("seed", range(6))
def test_a_step_of_one_distinct_text_stays_in_train_and_the_share_is_reported(tmp_path, seed):
    """The loop meant to keep one group for training sent the only group to dev (train empty, on every seed),
    silently; now it stays in train, and a dev share far from the one asked is a warning."""
    examples = expand(load_spec(write_spec(tmp_path, ONE_TEXT)), random.Random(seed))
    warnings = []
    train, dev = split(examples, SplitSpec("random", 0.25), random.Random(seed), warnings)
    assert len(train) == 20 and not dev
    assert warnings == ["split: step 's1' has 0 of its 20 records in dev against the 0.25 asked: too few "
                        "distinct texts (or groups) to split finer"]


def test_a_share_near_the_one_asked_is_not_reported(examples):
    warnings = []
    split(examples, SplitSpec("random", 0.25), random.Random(0), warnings)
    assert warnings == []
