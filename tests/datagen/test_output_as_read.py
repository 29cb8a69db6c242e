"""The eighth probe (docs/reliability.md): `tasktune data` output as other tools read it.

Every record's `meta.answer_pattern` reads its own answer's arguments back as eval does
(tuning/evaluation/metrics.py `argument_accuracy`: the stripped answer, fully matched); records whose text no
reader could take are refused where they are made, naming the spec's field.
"""

import random
import re

import pytest
import yaml

from datagen_testutil import write_spec
from tasktune.datagen.expand import expand
from tasktune.datagen.spec import load_spec
from tasktune.errors import SpecError
from tasktune.tuning.evaluation.metrics import argument_accuracy

ARGS_SPEC = """\
name: hostile
n: {n}
slots:
  a: {{values: {a}}}
  b: {{values: ["1", "2"]}}
  c: {{values: {c}}}
steps:
  - name: s
    pattern: "步骤#拆分*语音#{{{{ utterance }}}}"
    contents: ["查{{{{ a }}}}的{{{{ b }}}}和{{{{ c }}}}"]
    summary: "地名为{{{{ a }}}}, 参数为{{{{ b }}}}；{{{{ c }}}}"
    arguments: [a, b]
"""


def _spec(tmp_path, a, c='["w"]', n=None):
    flow = yaml.safe_dump(a, allow_unicode=True, default_flow_style=True, width=1 << 20).strip()  # controls escaped
    n = n or 2 * len(a) * len(yaml.safe_load(c))
    return write_spec(tmp_path, ARGS_SPEC.format(n=n, a=flow, c=c))


def _examples(path, seed=0):
    return expand(load_spec(path), random.Random(seed), None, [])


def _scores_itself(example) -> bool:
    meta = {"arguments": example.arguments, "answer_pattern": example.answer_pattern}
    return all(argument_accuracy(example.summary, meta).values())


HOSTILE_VALUES = ["济南", "x\ny", "t\tab", "ls\u2028ps\u2029e", "bel\x07\x1b[31m", "rlo\u202eevil\u202c",
                  "\u0301lone", "emoji😀𝕏", "re.*+?[](){}|^$\\", "{{ x }}", "#*#", "nul\x01\x7f", "nel\x85end",
                  " lead", "trail ", "a.b", "(x)"]


def test_every_answer_pattern_reads_its_own_answer_back_as_eval_does(tmp_path):
    # a value with a newline (`.` stops at "\n") and a trailing literal space ("；z ", gone once eval strips the
    # answer) made the pattern miss: a perfect answer scored 0 on every argument
    examples = _examples(_spec(tmp_path, HOSTILE_VALUES, c='["w", "z "]'))
    assert len(examples) == 2 * len(HOSTILE_VALUES) * 2
    failed = [(e.summary, e.answer_pattern) for e in examples if not _scores_itself(e)]
    assert not failed


def test_patterns_of_ordinary_values_are_unchanged(tmp_path):
    # the fixes touch only what they need: the usual pattern is as before (the golden files hold it)
    examples = _examples(_spec(tmp_path, ["济南", "a.b"]))
    assert {e.answer_pattern for e in examples} == {"^地名为(?P<a>.+?), 参数为(?P<b>.+?)；w$"}


def test_a_value_holding_the_answers_own_separator_is_refused(tmp_path):
    # 'p, 参数为q' makes the answer '地名为p, 参数为q, 参数为1；w' read two ways: the pattern gave a = 'p'
    message = (r"spec.yaml:\d+: \$.steps\[0\].arguments: the arguments .* cannot be read back from the answer "
               r"'地名为p, 参数为q, 参数为\d；w': a value holds the text")
    with pytest.raises(SpecError, match=message):
        _examples(_spec(tmp_path, ["济南", "p, 参数为q"]))


def test_an_empty_argument_value_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"\$.steps\[0\].arguments: argument 'a' is '' \(empty or only whitespace\)"):
        _examples(_spec(tmp_path, ["济南", ""]))


POOL_SPEC = """\
name: lookalike
n: 2
slots:
  a: {slot}
steps: [{{name: s, contents: ["{{{{ a }}}}"], summary: "{{{{ a }}}}"}}]
"""


@pytest.mark.parametrize("slot, message", [
    (r'{values: ["\u00e9", "e\u0301"]}', r"values 'é' and '.+' are the same text in two Unicode "
                                          r"normal forms \(NFC and NFD: U\+00E9 vs U\+0065 U\+0301\)"),
    ('{values: [" a", "a"]}', r"values ' a' and 'a' differ only in whitespace at the ends"),
    ("{values: [1, 1.0]}", r"values 1 and 1.0 are equal as int and float: the slot kept only the first"),
    ("{values: [0, false]}", r"values 0 and False are equal as int and bool"),
    ('{values: ["1", 1]}', r"values '1' and 1 write the same text"),
    ('{choices: [x, y, " y"]}', r"values 'y' and ' y' differ only in whitespace"),
    ("{file: pool.txt}", r"pool file pool.txt: values 'café' and '.+' are the same text in two Unicode"),
])
def test_values_a_reader_takes_for_one_are_refused(tmp_path, slot, message):
    # each pair made records differing only in invisible bytes (a `slot` split held one out while its twin
    # trained), or lost a value without a word (1, 1.0 and true are one key of the pool's dict)
    path = write_spec(tmp_path, POOL_SPEC.format(slot=slot), pool__txt="caf\u00e9\ncafe\u0301\n")
    with pytest.raises(SpecError, match=r"spec.yaml:4: \$\.slots\.a(\.values|\.choices)?: " + message):
        load_spec(path)


def test_the_same_value_twice_is_still_one_value(tmp_path):
    spec = load_spec(write_spec(tmp_path, POOL_SPEC.format(slot="{values: [a, b, a, 1, 1]}")))
    assert spec.slots["a"].values == ("a", "b", 1)
    spec = load_spec(write_spec(tmp_path, POOL_SPEC.format(slot="{choices: [a, a, b], weights: [1, 1, 2]}")))
    assert spec.slots["a"].values == ("a", "a", "b")


LONG_SPEC = """\
name: long
n: 4
slots: {{a: {{range: [0, 99]}}}}
steps:
  - {{name: s, pattern: "{pattern}", contents: ["{{{{ 'y' * {size} }}}}{{{{ a }}}}"], summary: "{{{{ a }}}}"}}
  - {{name: t, contents: ["{{{{ 'z' * {size} }}}}{{{{ a }}}}"], summary: "{{{{ a }}}}"}}
{chains}"""


@pytest.mark.parametrize("pattern, size, chains, message", [
    ("{{ 'x' * 60000 }}{{ utterance }}", 60000, "",
     r"spec.yaml:5: \$.steps\[0\]: template s/0 gives a prompt of 120,00\d characters \(content 120,00\d\), over the "
     r"100,000 that `tasktune train` and `eval` accept"),
    ("{{ utterance }}", 40000, "chains: {steps: [s, t, s], count: 2}",
     r"spec.yaml:5: \$.steps\[0\]: template s/0 in the chain s -> t -> s gives a prompt of 120,0\d\d characters "
     r"\(content 40,00\d, history 80,0\d\d\)"),
])
def test_a_prompt_too_long_for_train_and_eval_is_refused_where_it_is_made(tmp_path, pattern, size, chains, message):
    # a pattern and a content may each build 100,000 characters, and a chain's turns add up: such records were
    # written with exit 0, then `tasktune train` refused the file ("its prompt is 120,002 characters long")
    from tasktune.datagen import generate

    path = write_spec(tmp_path, LONG_SPEC.format(pattern=pattern, size=size, chains=chains))
    with pytest.raises(SpecError, match=message):
        generate(path, seed=0)


def test_a_format_the_steps_cannot_take_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    # was found at the first record written, after the whole set was generated, naming neither file nor line
    from tasktune.cli import main
    from tasktune.datagen import pipeline

    monkeypatch.setattr(pipeline, "expand", lambda *a, **k: pytest.fail("generated before the format was checked"))
    spec = write_spec(tmp_path / "spec", POOL_SPEC.format(slot="{values: [a, b]}"))
    assert main(["data", str(spec), "--out", str(tmp_path / "out"), "--format", "classification"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: \S+spec.yaml:5: \$.steps\[0\]: --format classification writes \{text, label\} "
                     r"records, but step 's' has a summary", err), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("slot, where, fix", [
    ("{range: [9223372036854775800, 9223372036854775830]}", "range", "give a pool of the values as text"),
    ("{values: [1, 9007199254740993]}", "values", "quote it to make it text"),
    ("{choices: [1, -9007199254740993]}", "choices", "quote it to make it text"),
])
def test_an_integer_json_readers_would_round_is_refused(tmp_path, slot, where, fix):
    # meta.slots held 9223372036854775800, which `datasets` (pyarrow) read as the float 9.223372036854776e18
    with pytest.raises(SpecError, match=rf"spec.yaml:4: \$.slots.a.{where}: -?9\d+ is beyond ±9,007,199,254,740,991 "
                                        rf"\(2\*\*53 - 1\).*; {fix}"):
        load_spec(write_spec(tmp_path, POOL_SPEC.format(slot=slot)))
    assert load_spec(write_spec(tmp_path, POOL_SPEC.format(slot="{range: [9007199254740990, 9007199254740991]}")))


@pytest.mark.parametrize("slots, pattern, message", [
    # each value was read as the generator's own marker: a second utterance, or "no case holds"
    (r'{a: {values: [b, "\0utterance\0"]}}', "{{ a }}#{{ utterance }}", r"spec.yaml:3: \$.slots.a.values\[1\]: "),
    (r'{a: {values: [b, "x\0no case\0"]}}', "{{ utterance }}", r"spec.yaml:3: \$.slots.a.values\[1\]: "),
    ("{a: {file: pool.txt}}", "{{ utterance }}", r"spec.yaml:3: \$.slots.a: pool file \S+pool.txt, line 2: "),
])
def test_a_nul_in_spec_text_is_refused(tmp_path, slots, pattern, message):
    text = f'name: e\nn: 2\nslots: {slots}\nsteps: [{{name: s, pattern: "{pattern}", contents: ["x{{{{ a }}}}"], ' \
           'summary: "{{ a }}"}]\n'
    path = write_spec(tmp_path, text, pool__txt="a\nb\x00c\n")
    with pytest.raises(SpecError, match=message + r"holds a NUL character \(U\+0000\)"):
        load_spec(path)


def test_the_printed_table_and_errors_escape_what_a_terminal_would_obey(tmp_path):
    # `tasktune data` printed slot values raw: an ANSI sequence (clear screen, set the title), BEL, a bidi override
    # (text shown reversed), U+2028 and newlines (a table row split in two)
    from tasktune.datagen import generate
    from tasktune.datagen.stats import format_table
    from tasktune.datagen.terminal import printable

    hostile = ["bel\x07\x1b[2J", "rlo\u202eevil", "ls\u2028x", "nl\ny\tz"]  # (the table shows the 4 most common)
    table = format_table(generate(_spec(tmp_path, hostile, n=8), seed=0).stats)
    for raw, shown in [("\x1b[2J", "\\x1b[2J"), ("\u202e", "\\u202e"), ("\u2028", "\\u2028"), ("nl\n", "nl\\n"),
                       ("\t", "\\t"), ("\x07", "\\x07")]:
        assert raw not in table and shown in table, (raw, table)
    assert all(c.isprintable() for c in table.replace("\n", ""))
    assert printable("ok 😀 é") == "ok 😀 é"  # printable text (astral, combining) is shown as it is
    with pytest.raises(SpecError) as caught:
        _examples(write_spec(tmp_path, 'name: e\nsteps: [{name: s, contents: ["x{{ a \\x1b[2J"], summary: y}]\n'))
    assert "\x1b" not in str(caught.value) and "x{{ a \\x1b[2J" in str(caught.value)


WEIGHTS_SPEC = """\
name: e
n: 20
slots: {{a: {{choices: [x, y], weights: [{w1}, {w1}]}}, b: {{range: [0, 999]}}}}
steps:
  - {{name: s, summary: "{{{{ a }}}}",
     contents: [{{text: "p{{{{ a }}}}{{{{ b }}}}", weight: {w2}}}, {{text: "q{{{{ a }}}}{{{{ b }}}}", weight: {w2}}}]}}
noise: {{rate: 0.5, ops: {{mask: {w3}, delete: {w3}}}}}
"""


@pytest.mark.parametrize("w1, w2, w3, message", [
    ("1e308", "1", "1", r"spec.yaml:3: \$.slots.a.weights: the weights add up"),
    ("1", "1e308", "1", r"spec.yaml:6: \$.steps\[0\].contents: the contents' weights add up"),
    ("1", "1", "1e308", r"spec.yaml:7: \$.noise.ops: the op probabilities add up"),
])
def test_weights_whose_total_overflows_are_refused(tmp_path, w1, w2, w3, message):
    # the running total the draws bisect became inf: every draw took the last choice / template / op, exit 0
    path = write_spec(tmp_path, WEIGHTS_SPEC.format(w1=w1, w2=w2, w3=w3))
    with pytest.raises(SpecError, match=message + r" to more than the largest float \(1e\+308, 1e\+308\), so draws "
                                                  r"would take only the last"):
        load_spec(path)
    assert load_spec(write_spec(tmp_path, WEIGHTS_SPEC.format(w1="1e307", w2="1e307", w3="1e307")))


@pytest.mark.parametrize("where, pattern, content, summary", [
    (r"\$.steps\[0\].pattern", '{{ "\\x00utterance\\x00" }}#{{ utterance }}', "x{{ a }}", "{{ a }}"),
    (r"\$.steps\[0\].contents\[0\]", "{{ utterance }}", 'x{{ a }}{{ "\\x00" }}', "{{ a }}"),
    (r"\$.steps\[0\].summary", "{{ utterance }}", "x{{ a }}", '{{ a }}{{ "%c" % 0 }}'),
])
def test_a_nul_a_template_makes_is_refused_naming_the_template(tmp_path, where, pattern, content, summary):
    # a pattern printing "\x00utterance\x00" was "the pattern uses {{ utterance }} more than once"; a content or
    # summary holding a NUL was written (the markers are now unguessable and NUL is refused in what is written)
    text = f"name: e\nn: 2\nslots: {{a: {{values: [p, q]}}}}\nsteps: [{{name: s, pattern: '{pattern}', " \
           f"contents: ['{content}'], summary: '{summary}'}}]\n"
    with pytest.raises(SpecError, match=rf"spec.yaml:4: {where}: template s/0 gives a \w+ holding a NUL character"):
        _examples(write_spec(tmp_path, text))
