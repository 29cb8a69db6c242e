"""A fourth probe of `tasktune data`: sets that come out empty, a `slot` split over a slot no template reads, a
spec holding a NUL byte, an empty SPEC argument. Each was exit 0 with empty files, a wrong reason, or a message
without the place at fault."""

from __future__ import annotations

import json
import re

import pytest

from datagen_testutil import write_spec
from tasktune.cli import main
from tasktune.datagen import generate
from tasktune.errors import SpecError

ONE = """\
name: t
n: 5
slots: {a: {values: [x, y]}, b: {values: [p, q]}}
SPLIT
steps: [{name: s1, contents: ["say {{ a }}"], summary: "ok {{a}}", unique: false COUNT}]
"""


def spec(count: str = "", split: str = "", n: int = 5) -> str:
    return ONE.replace("COUNT", count).replace("SPLIT", split).replace("n: 5", f"n: {n}")


# -- every count or share is 0: no records at all --------------------------------------------------------------

@pytest.mark.parametrize("count, field", [(", share: 0", r"\$\.steps\[0\]\.share"),
                                          (", count: 0", r"\$\.steps\[0\]\.count"),
                                          (", share: 0.001", r"\$\.steps\[0\]\.share")])  # of 100: rounds to 0
def test_no_records_at_all_is_refused_naming_the_field(tmp_path, capsys, count, field):
    out = tmp_path / "out"
    # (was: train.json and dev.json written as [], exit 0, with --n 100 too)
    assert main(["data", str(write_spec(tmp_path, spec(count))), "--out", str(out), "--seed", "1", "--n", "100"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(rf"spec\.yaml:5: {field}: every count or share gives 0 of the 100 records", err)
    assert "train.json and dev.json would be empty" in err
    assert not out.exists()


def test_a_step_of_share_0_beside_others_still_works(tmp_path):
    other = "{name: s2, contents: [hi], summary: ok, unique: false}"
    text = ONE.replace("COUNT", ", share: 0").replace("SPLIT", "").replace(
        "unique: false , share: 0}]", f"unique: false, share: 0}}, {other}]")
    splits = generate(write_spec(tmp_path, text), seed=1, n=20)
    assert len(splits.train) + len(splits.dev) == 20
    assert {r["meta"]["step"] for r in splits.train + splits.dev} == {"s2"}


def test_a_plan_of_no_records_raises_a_spec_error_from_python(tmp_path):
    with pytest.raises(SpecError, match=r"\$\.steps\[0\]\.share: every count or share gives 0"):
        generate(write_spec(tmp_path, spec(", share: 0")), seed=1)


# -- an empty dev set: a warning saying which split and how to fill it -----------------------------------------

@pytest.mark.parametrize("n", [1, 5])
def test_an_empty_dev_set_is_a_warning_saying_how_to_fill_it(tmp_path, capsys, n):
    """n: 1, or n: 5 with the default 10% dev: dev.json was [] without a word (and eval then refused it). A warning,
    not an error: train.json is whole and trains; the warning names dev.json, why, and the n that fills it."""
    out = tmp_path / "out"
    assert main(["data", str(write_spec(tmp_path, spec(n=n))), "--out", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert json.loads((out / "dev.json").read_text(encoding="utf-8")) == []
    warning = "split: dev.json is empty (`tasktune eval` needs dev records): split.dev 0.1 of " \
              f"{n} records rounds to none; raise n (or --n) to at least 6, or raise split.dev"
    assert f"warning: {warning}" in printed
    assert warning in json.loads((out / "stats.json").read_text(encoding="utf-8"))["warnings"]
    assert main(["data", str(write_spec(tmp_path, spec(n=n))), "--out", str(out), "--seed", "1", "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert f"warning: {warning}" in quiet.err and "warning" not in quiet.out  # --quiet drops the table, not warnings
    assert main(["data", str(write_spec(tmp_path, spec(n=6))), "--out", str(out), "--seed", "1", "--quiet"]) == 0
    assert json.loads((out / "dev.json").read_text(encoding="utf-8"))  # the n it named fills dev


def test_an_empty_dev_set_of_several_steps_names_each_steps_size(tmp_path):
    """9 records are enough for one dev record, but each step is split on its own, and 0.1 of 3 rounds to none."""
    steps = ", ".join(f'{{name: s{i}, contents: ["say{i} {{{{ a }}}}"], summary: "ok", unique: false}}'
                      for i in (1, 2, 3))
    text = spec(n=9).replace(ONE.splitlines()[-1].replace("COUNT", ""), f"steps: [{steps}]")
    splits = generate(write_spec(tmp_path, text), seed=1)
    assert splits.dev == [] and len(splits.train) == 9
    assert splits.stats["warnings"] == [
        "split: dev.json is empty (`tasktune eval` needs dev records): split.dev 0.1 of each step's records rounds to "
        "none (each step is split on its own: 's1' 3, 's2' 3, 's3' 3); raise n (or --n) so that a step has at least "
        "6, or raise split.dev"]


def test_too_few_distinct_texts_for_dev_keep_their_one_warning(tmp_path):
    text = spec(n=20).replace('"say {{ a }}"', "hi").replace('"ok {{a}}"', "ok")  # one text, 20 times
    splits = generate(write_spec(tmp_path, text), seed=1)
    assert splits.dev == [] and len(splits.train) == 20
    assert splits.stats["warnings"] == ["split: step 's1' has 0 of its 20 records in dev against the 0.1 asked: too "
                                        "few distinct texts (or groups) to split finer"]


# -- a slot split over a slot no template reads ------------------------------------------------------------------

def test_a_slot_split_over_an_unused_slot_says_no_template_reads_it(tmp_path):
    """It said 'slot 'b' has fewer than 2 values', though b has two: no template reads it."""
    splits = generate(write_spec(tmp_path, spec(split="split: {strategy: slot, slot: b, dev: 0.5}", n=20)), seed=1)
    (warning,) = [w for w in splits.stats["warnings"] if "slot 'b'" in w]
    assert "fewer than 2 values" not in warning
    assert "slot 'b' is in no record: no template" in warning and "the records hold 'a'" in warning
    assert warning.endswith("split at random instead")


def test_a_slot_split_over_a_slot_of_one_value_still_says_so(tmp_path):
    text = spec(split="split: {strategy: slot, slot: b, dev: 0.5}", n=20).replace("[p, q]", "[p]").replace(
        '"say {{ a }}"', '"say {{ a }} {{ b }}"')
    splits = generate(write_spec(tmp_path, text), seed=1)
    assert any("slot 'b' has fewer than 2 values" in w for w in splits.stats["warnings"])


# -- the SPEC argument and its bytes -------------------------------------------------------------------------

def test_a_nul_byte_in_a_spec_names_its_line_and_column(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"name: t\nn: 5\nslots: {a: {values: [x,\x00 y]}}\n")
    assert main(["data", str(path), "--out", str(tmp_path / "out"), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:24: invalid YAML: character U+0000 is not allowed in YAML text" in err  # (was: "position 40")
    assert "position" not in err and "Traceback" not in err


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_spec_argument_is_named(tmp_path, capsys, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    assert main(["data", given, "--out", str(tmp_path / "out"), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: SPEC is empty: give a task spec file" in err  # (was: ".: cannot read spec: Is a directory")
    assert not (tmp_path / "out").exists()
