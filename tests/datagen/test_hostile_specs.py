"""Hostile specs and runs of `tasktune data`: randomness in templates, a SPEC that is not a regular file, slot
names Jinja shadows, an unchecked seed, whitespace-only texts, SIGTERM, a long --out name, lone surrogates, line
separators inside pool values and JSONL records, `fix` of derived slots, noise that would empty an utterance."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datagen_testutil import MINI, write_spec
from tasktune import SCHEMAS
from tasktune.cli import main
from tasktune.datagen import generate
from tasktune.datagen.render import GLOBALS
from tasktune.datagen.spec import RESERVED, load_spec
from tasktune.errors import SpecError

SET = "({'alpha': 1, 'beta': 2}.keys() - [])|list"  # a set: its order follows PYTHONHASHSEED

ONE_STEP = """\
name: t
n: 2
slots:
  x: {values: [a, b]}
SLOT
steps:
  - name: s
    pattern: "语音#{{ utterance }}"
    contents: [CONTENT]
    summary: SUMMARY
"""


def one_step(content: str = '"{{ x }}"', summary: str = '"ok"', slot: str = "") -> str:
    return ONE_STEP.replace("SLOT", slot).replace("CONTENT", content).replace("SUMMARY", summary)


# -- 1. templates whose output would differ between runs with the same seed ------------------------------------

RANDOM = [
    ("random filter in content", one_step(content='"{{ x }}{{ [1, 2]|random }}"'), r"\$\.steps\[0\]\.contents\[0\]"),
    ("lipsum in summary", one_step(summary='"{{ lipsum(1) }}"'), r"\$\.steps\[0\]\.summary"),
    ("set in summary", one_step(summary=f'"{{{{ {SET} }}}}"'), r"\$\.steps\[0\]\.summary"),
    ("set in when", one_step(summary=f"[{{when: \"({SET})[0] == 'alpha'\", text: a}}, {{text: b}}]"),
     r"\$\.steps\[0\]\.summary"),
    ("random filter in when", one_step(summary="[{when: \"[1, 2]|random == 1\", text: a}, {text: b}]"),
     r"\$\.steps\[0\]\.summary\[0\]\.when"),
    ("set in expr", one_step(content='"{{ x }}{{ y }}"', slot=f'  y: {{expr: "{SET}"}}'), r"\$\.slots\.y\.expr"),
]


@pytest.mark.parametrize("name, text, where", RANDOM, ids=[r[0] for r in RANDOM])
def test_randomness_in_a_template_is_refused_naming_it(tmp_path, name, text, where):
    with pytest.raises(SpecError, match=where + r".*(different text on every run|order differs between runs)"):
        generate(write_spec(tmp_path, text), seed=1)


def test_subtraction_of_numbers_still_works():
    from tasktune.datagen.render import Compiled

    assert Compiled("{{ a - 2 }}", "w")({"a": 5}) == "3"
    assert Compiled("[a - 1, a - 2]", "w", "expr")({"a": 5}) == (4, 3)


# -- 2. the SPEC argument: a FIFO, a device, a huge file, a link ----------------------------------------------

def _data(spec: str | Path, out: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tasktune", "data", str(spec), "--out", str(out), "--seed", "1",
                           "--quiet"], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_spec_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "s.yaml")
    done = _data(tmp_path / "s.yaml", tmp_path / "out", timeout=30)  # (it blocked forever)
    assert done.returncode == 2 and "not a regular file" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_spec_is_refused(tmp_path, capsys):
    assert main(["data", "/dev/zero", "--out", str(tmp_path / "out"), "--seed", "1"]) == 2  # (it filled memory)
    assert "/dev/zero: cannot read spec: not a regular file" in capsys.readouterr().err


def test_a_huge_spec_is_refused(tmp_path, capsys):
    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\n# " + "x" * (5 << 20) + "\n", encoding="utf-8")
    assert main(["data", str(spec), "--out", str(tmp_path / "out"), "--seed", "1"]) == 2
    assert re.search(r"big\.yaml: cannot read spec: larger than 4 MiB", capsys.readouterr().err)


def test_a_spec_given_through_a_link_still_works(tmp_path):
    spec = write_spec(tmp_path / "spec")
    (tmp_path / "link.yaml").symlink_to(spec)
    assert main(["data", str(tmp_path / "link.yaml"), "--out", str(tmp_path / "out"), "--seed", "1", "--quiet"]) == 0


# -- 3. slot names that vanish or are shadowed ----------------------------------------------------------------

@pytest.mark.parametrize("key, shown", [("1", "$.slots.1: slot name 1 is not text (int)"),
                                        ("null", "$.slots.null: slot name None is not text"),
                                        ("true", "$.slots.true: slot name True is not text (bool)")])
def test_a_slot_name_that_is_not_text_is_refused(tmp_path, key, shown):
    with pytest.raises(SpecError, match=r"spec\.yaml:5: " + re.escape(shown)):
        load_spec(write_spec(tmp_path, one_step(slot=f"  {key}: {{values: [p, q]}}")))


@pytest.mark.parametrize("name", sorted(RESERVED))
def test_a_slot_named_after_a_jinja_literal_or_global_is_refused(tmp_path, name):
    with pytest.raises(SpecError, match=rf"spec\.yaml:5: \$\.slots\.{name}: slot name '{name}' is reserved"):
        load_spec(write_spec(tmp_path, one_step(slot=f'  "{name}": {{values: [p, q]}}')))


def test_the_schema_reserves_the_same_slot_names():
    schema = json.loads((SCHEMAS / "spec.schema.json").read_text(encoding="utf-8"))
    assert set(schema["properties"]["slots"]["propertyNames"]["not"]["enum"]) == RESERVED | {"utterance"}
    assert GLOBALS <= RESERVED


# -- 4. the spec's seed: an integer 0 .. 2**32 - 1, as --seed --------------------------------------------------

@pytest.mark.parametrize("seed, message", [("-5", "less than the minimum of 0"),
                                           ("1.0", "1.0 is not of type 'integer'"),
                                           ("100000000000000000000000", "greater than the maximum of 4294967295"),
                                           ("true", "True is not of type 'integer'")])
def test_a_seed_out_of_range_is_refused(tmp_path, seed, message):
    with pytest.raises(SpecError, match=r"spec\.yaml:\d+: \$\.seed: .*" + re.escape(message)):
        load_spec(write_spec(tmp_path, MINI + f"seed: {seed}\n"))


def test_the_largest_seed_is_accepted(tmp_path):
    assert load_spec(write_spec(tmp_path, MINI + "seed: 4294967295\n")).seed == 2**32 - 1


# -- 5. whitespace-only prompts and answers -------------------------------------------------------------------

BLANK = [
    ("content", one_step(content='"{% if false %}{{ x }}{% endif %} "').replace("语音#", ""),
     r"\$\.steps\[0\]\.contents\[0\]: template s/0 gives an empty content \(' '\)"),
    ("summary", one_step(summary='"{{ x[:0] }}  "'), r"\$\.steps\[0\]\.summary: template s/0 gives an empty summary"),
    ("summary case", one_step(summary='[{when: "x == \'a\'", text: "\\t"}, {text: ok}]'),
     r"\$\.steps\[0\]\.summary: template s/0 gives an empty summary \('\\t'\)"),
    ("label", one_step().replace('summary: "ok"', 'label: "{{ x[:0] }}\u3000"'),
     r"\$\.steps\[0\]\.label: template s/0 gives an empty label"),
]


@pytest.mark.parametrize("name, text, where", BLANK, ids=[b[0] for b in BLANK])
def test_a_whitespace_only_text_is_refused_naming_the_step_and_template(tmp_path, name, text, where):
    with pytest.raises(SpecError, match=where):
        generate(write_spec(tmp_path, text), seed=1)


# -- 6. SIGTERM: Ctrl-C's clean-up, exit 143 ------------------------------------------------------------------

BIG = """\
name: big
n: 100000
slots:
  x: {range: [1, 999999]}
steps:
  - name: s
    pattern: "语音#{{ utterance }}"
    unique: false
    contents: ["查查{{ x }}号工地的人数情况, 然后告诉我结果"]
    summary: "地名为{{ x }}, 任务为人数检测, 请稍候"
"""


def test_sigterm_while_writing_cleans_up_and_exits_143(tmp_path):
    spec = write_spec(tmp_path / "spec", BIG)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tasktune", "data", str(spec), "--out", str(out), "--seed", "1",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tasktune-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # until the staging folder appears: the files are being written
    assert proc.poll() is None, "finished before the staging folder was seen"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.tasktune-*"))


# -- 7. an --out name as long as a file name may be -----------------------------------------------------------

@pytest.mark.parametrize("name", ["d" * 250, "电" * 85], ids=["250 ASCII", "255 bytes of UTF-8"])
def test_a_long_output_folder_name_works(tmp_path, name):
    spec, out = write_spec(tmp_path / "spec"), tmp_path / name
    assert main(["data", str(spec), "--out", str(out), "--seed", "1", "--quiet"]) == 0
    assert main(["data", str(spec), "--out", str(out), "--seed", "2", "--quiet"]) == 0  # into the existing folder
    assert json.loads((out / "stats.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["spec", name])  # no staging folder left


# -- 8. a lone surrogate in any text of the spec (one walk over the loaded spec, not field by field) ----------

NOISE = 'noise: {rate: 1.0, ops: {OP: 1}, splits: [train, dev]EXTRA}\n'
SURROGATES = [
    ("insert_chars", one_step() + NOISE.replace("OP", "insert").replace("EXTRA", ', insert_chars: "\\ud800"'),
     r"spec\.yaml:11: \$\.noise\.insert_chars: holds invalid Unicode \(a lone surrogate '\\ud800' at character 0\)"),
    ("mask_token", one_step() + NOISE.replace("OP", "mask").replace("EXTRA", ', mask_token: "[\\udc00]"'),
     r"spec\.yaml:11: \$\.noise\.mask_token: .*'\\udc00' at character 1"),
    ("slot value", one_step(slot='  y: {choices: ["\\udfff", b]}'), r"spec\.yaml:5: \$\.slots\.y\.choices\[0\]: "),
    ("step name", one_step().replace("name: s", 'name: "s\\ud83d"'), r"spec\.yaml:7: \$\.steps\[0\]\.name: "),
    ("fix value", one_step(content='{text: "{{ x }}", fix: {x: "\\ud800"}}'), r"\$\.steps\[0\]\.contents\[0\]\.fix\.x"),
    ("name", one_step().replace("name: t", 'name: "t\\ud800"'), r"spec\.yaml:1: \$\.name: "),
    ("key", one_step(slot='  "y\\ud800": {values: [p]}'), r"spec\.yaml:5: \$\.slots\.y.*: the key 'y\\ud800' holds"),
]


@pytest.mark.parametrize("name, text, message", SURROGATES, ids=[s[0] for s in SURROGATES])
def test_a_lone_surrogate_anywhere_in_the_spec_is_refused_naming_its_path(tmp_path, capsys, name, text, message):
    spec = write_spec(tmp_path / "spec", text)
    assert main(["data", str(spec), "--out", str(tmp_path / "out"), "--seed", "1", "--quiet"]) == 2  # (a traceback)
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# -- 9. one value (or record) a line means "\n" only: not U+2028, NEL, form feed... (str.splitlines) ----------

SEPARATORS = "\u2028\u2029\x85\x0c\x0b\x1c\x1d\x1e"


def test_a_pool_file_is_cut_at_newlines_only(tmp_path):
    pool = b"foo\xe2\x80\xa8bar\nqux\xc2\x85zap\nA\x0cB\r\n" + "".join(f"v{c}w\n" for c in SEPARATORS).encode()
    (tmp_path / "sep.txt").write_bytes(pool)  # 3 + 8 lines (was: 22 values)
    spec = load_spec(write_spec(tmp_path, one_step(slot="  y: {file: sep.txt}")))
    assert spec.slots["y"].values == ("foo\u2028bar", "qux\x85zap", "A\x0cB", *(f"v{c}w" for c in SEPARATORS))


def test_jsonl_records_holding_a_line_separator_read_back_as_written(tmp_path):
    from tasktune.tuning.evaluation.report import read_predictions
    from tasktune.tuning.rows import read_rows

    text = one_step(slot='  y: {values: ["a\\u2028b", "c\\x85d\\x0ce"]}', content='"{{ x }}{{ y }}"')
    out = tmp_path / "out"
    assert main(["data", str(write_spec(tmp_path, text.replace("n: 2", "n: 4"))), "--out", str(out), "--seed", "1",
                 "--format", "jsonl", "--quiet"]) == 0
    written = (out / "train.jsonl").read_text(encoding="utf-8")
    assert "\u2028" not in written and "\x85" not in written  # written escaped (test_write.py)
    # a file that holds them raw (json.dumps(ensure_ascii=False) keeps U+2028 as is: another tool's file)
    raw = tmp_path / "raw.jsonl"
    raw.write_text(written.replace("\\u2028", "\u2028").replace("\\u0085", "\x85"), encoding="utf-8")
    assert "\u2028" in raw.read_text(encoding="utf-8")
    for read in (read_rows, read_predictions):  # (was: "invalid JSON", a record cut in two)
        assert [r["content"] for r in read(raw)] == [json.loads(x)["content"] for x in written.split("\n")[:-1]]


def test_a_broken_template_shows_its_line_as_jinja_counts_lines(tmp_path):
    # (the line is shown with U+2028 escaped, as the eighth probe escapes what a terminal would obey)
    with pytest.raises(SpecError, match="template line 2\\): .*\n    b\\\\u2028c {{ x }"):
        generate(write_spec(tmp_path, one_step(content='"a\\nb\\u2028c {{ x }"')), seed=1)


# -- 10. `fix` of a derived slot: the value must be one its expression gives for the draw --------------------

DERIVED = one_step(content="CONTENT", slot='  a: {choices: [p, q]}\n  b: {expr: "a ~ \'1\'"}\n'
                   '  e: {range: [0, 9]}\n  f: {expr: "range(0, e)"}').replace("n: 2", "n: 6")


@pytest.mark.parametrize("fix, message", [
    ("{b: zz}", r"fix\.b: 'zz' is not a value the expression of slot 'b' gives \(a ~ '1'\)"),
    ("{b: p1, a: q}", r"fix\.b: 'p1' is not a value"),  # possible alone, not with the fixed a
    ("{f: 9}", r"fix\.f: 9 is not a value the expression of slot 'f' gives \(range\(0, e\)\)"),
    ('{f: "1"}', r"fix\.f: '1' is not a value"),  # the text "1", never the number
])
def test_a_fixed_value_no_draw_of_the_expression_gives_is_refused(tmp_path, capsys, fix, message):
    spec = write_spec(tmp_path / "spec", DERIVED.replace("CONTENT", f'{{text: "{{{{ b }}}} {{{{ f }}}}", fix: {fix}}}'))
    assert main(["data", str(spec), "--out", str(tmp_path / "out"), "--seed", "1", "--quiet"]) == 2  # (exit 0)
    assert re.search(r"spec\.yaml:\d+: \$\.steps\[0\]\.contents\[0\]\." + message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_fixed_value_of_a_derived_slot_draws_the_slots_it_reads_to_agree(tmp_path):
    text = DERIVED.replace("CONTENT", '{text: "{{ b }} {{ f }} {{ x }}", fix: {b: q1, f: 7}}')
    records = generate(write_spec(tmp_path, text), seed=1).train
    assert records and all(r["meta"]["slots"]["a"] == "q" and r["meta"]["slots"]["e"] > 7 for r in records)


def test_a_fixed_derived_value_in_a_chain_names_the_content_that_fixes_it(tmp_path):
    text = one_step(content='{text: "{{ b }}", fix: {b: zz}}', slot='  a: {choices: [p]}\n  b: {expr: "a ~ \'1\'"}')
    text = text.replace('summary: "ok"', 'summary: "ok"\n    count: 0\n  - {name: t, contents: ["{{ x }}"], '
                        'summary: ok}')
    with pytest.raises(SpecError, match=r"contents\[0\]\.fix\.b: 'zz' is not .* \(in the chain s -> t\)"):
        generate(write_spec(tmp_path, text + "chains: {steps: [s, t], count: 1}\n"), seed=1)


# -- 11. noise never leaves an utterance empty or whitespace-only ---------------------------------------------

def test_noise_that_would_delete_every_character_keeps_one(tmp_path):
    text = one_step(content='"{{ x }} {{ x }}"').replace('"语音#{{ utterance }}"', '"{{ utterance }}"')
    spec = write_spec(tmp_path / "spec", text + NOISE.replace("OP", "delete").replace("EXTRA", ""))
    out = tmp_path / "out"
    assert main(["data", str(spec), "--out", str(out), "--seed", "1", "--quiet"]) == 0
    records = [r for side in ("train", "dev") for r in json.loads((out / f"{side}.json").read_text("utf-8"))]
    assert records and all(len(r["content"].strip()) == 1 for r in records)  # (was: "content": " ")
