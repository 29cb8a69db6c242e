"""tasktune.datagen.expand: counts, uniqueness, fixed slots, answer patterns, chains, label steps, spec errors."""

import random
import re
from collections import Counter

import pytest

from tasktune.datagen.expand import expand, plan_counts
from tasktune.datagen.spec import load_spec
from datagen_testutil import MINI, write_spec
from tasktune import TEMPLATES
from tasktune.errors import SpecError


def run(tmp_path, text=MINI, n=None, seed=0):
    warnings = []
    examples = expand(load_spec(write_spec(tmp_path, text)), random.Random(seed), n, warnings)
    return examples, warnings


def test_counts_absolute_share_and_rest(tmp_path):
    spec = load_spec(write_spec(tmp_path, MINI.replace("    count: 12\n", "    share: 0.5\n")))
    assert plan_counts(spec, 40) == ({"greet": 3, "arguments": 20, "summary": 17}, 0)
    assert plan_counts(spec, 100) == ({"greet": 3, "arguments": 50, "summary": 47}, 0)


def test_counts_above_n_are_impossible(tmp_path):
    with pytest.raises(SpecError, match="impossible counts: steps and chains ask for 15 records but n is 10"):
        run(tmp_path, n=10)


def test_counts_below_n_with_no_step_to_take_the_rest_are_a_warning(tmp_path):
    """Every step with a count summing under n: fewer records than n were written without a word. Now a warning
    naming n, what the counts ask for and the fix; a step without count/share still takes the rest silently."""
    text = MINI.replace('    contents: [""]\n', '    contents: [""]\n    count: 5\n')
    examples, warnings = run(tmp_path, text, n=40)
    assert len(examples) == 20
    assert [w for w in warnings if "are not made" in w] == [
        f"{tmp_path / 'spec.yaml'}: n is 40 but every step has a count or share and they ask for "
        "20 records: the other 20 are not made (leave one step without count/share to take the rest, or lower n)"]
    examples, warnings = run(tmp_path, n=40)
    assert len(examples) == 40 and not any("are not made" in w for w in warnings)
    # the chains are named only where the spec has them
    _, warnings = run(tmp_path, text + "chains: {steps: [greet, arguments], count: 5}\n", n=40)
    assert [w for w in warnings if "are not made" in w and "with the chains, they ask for 25 records" in w]


def test_more_unique_than_combinations_is_an_error(tmp_path):
    # 2 templates x 6 places = 12 combinations
    with pytest.raises(SpecError, match=r"\$\.steps\[1\]: impossible counts: 13 unique .* at most 12"):
        run(tmp_path, MINI.replace("count: 12", "count: 13"))


def test_all_combinations_are_reached_and_unique(tmp_path):
    examples, warnings = run(tmp_path)
    args = [e for e in examples if e.step == "arguments"]
    assert len(args) == 12 and len({e.content for e in args}) == 12 and not warnings


def test_stalled_unknown_combinations_warn(tmp_path):
    # summary texts depend on a derived slot: the bound is unknown, so sampling stalls and warns
    examples, warnings = run(tmp_path, MINI.replace("expected: {range: [1, 20]}", "expected: {range: [1, 2]}"), n=40)
    assert any("only" in w and "summary" in w for w in warnings)
    summaries = [e for e in examples if e.step == "summary"]
    assert len({(e.content, e.summary) for e in summaries}) == len(summaries) < 25


def test_unique_false_repeats(tmp_path):
    examples, _ = run(tmp_path, MINI.replace("    count: 3\n", "    count: 30\n    unique: false\n"), n=60)
    greet = [e for e in examples if e.step == "greet"]
    assert len(greet) == 30 and len({e.content for e in greet}) == 3


def test_content_templates_fix_slot_values(tmp_path):
    examples, _ = run(tmp_path)
    for e in examples:
        if e.template == "arguments/0":
            assert e.slots["check"] == "人数检测" and e.summary.endswith("人数检测")
        if e.template == "arguments/1":
            assert e.slots["check"] == "安全检查"


def test_frame_and_utterance_are_separate_parts(tmp_path):
    examples, _ = run(tmp_path)
    e = next(e for e in examples if e.step == "arguments")
    assert e.prefix == "步骤#拆分*语音#" and e.suffix == "" and e.utterance.startswith(("查查", "检查"))
    assert e.content == e.prefix + e.utterance + e.suffix


def test_summary_cases_branch_on_slots(tmp_path):
    examples, _ = run(tmp_path)
    for e in (e for e in examples if e.step == "summary"):
        expected, present = e.slots["expected"], e.slots["present"]
        assert e.summary == ("无人缺勤" if present == expected else f"缺勤{expected - present}人")
        assert f"应到{expected}人*实到{present}人" in e.content


def test_answer_pattern_recovers_the_arguments(tmp_path):
    examples, _ = run(tmp_path)
    for e in (e for e in examples if e.step == "arguments"):
        match = re.match(e.answer_pattern, e.summary)
        assert match and match.groupdict() == {k: str(v) for k, v in e.arguments.items()}
        assert not re.match(e.answer_pattern, e.summary.replace("地名为", "地点为"))


def test_answer_pattern_with_a_computed_argument_falls_back_to_values(tmp_path):
    text = MINI.replace('summary: "地名为{{ place }}, 任务为{{ check }}"',
                        'summary: "地名为{{ place }}, 任务为{{ check }}, 共{{ place | length }}字"')
    examples, _ = run(tmp_path, text)
    e = next(e for e in examples if e.step == "arguments")
    assert re.match(e.answer_pattern, e.summary).group("place") == e.slots["place"]


def test_argument_missing_from_the_answer_is_an_error(tmp_path):
    with pytest.raises(SpecError, match="argument 'check' does not appear in the answer"):
        run(tmp_path, MINI.replace('summary: "地名为{{ place }}, 任务为{{ check }}"', 'summary: "地名为{{ place }}"'))


def test_no_matching_case_is_an_error(tmp_path):
    text = MINI.replace('      - {text: "缺勤{{ expected - present }}人"}', '      - {when: "false", text: x}')
    with pytest.raises(SpecError, match="no case holds"):
        run(tmp_path, text)


def test_case_without_when_must_be_last(tmp_path):
    text = MINI.replace('      - {when: "present == expected", text: 无人缺勤}', '      - {text: 无人缺勤}')
    with pytest.raises(SpecError, match="only the last summary case may lack"):
        run(tmp_path, text)


def test_undefined_variable_in_a_template_names_it(tmp_path):
    with pytest.raises(SpecError, match=r"contents\[0\]: undefined variable 'plcae'"):
        run(tmp_path, MINI.replace("查查{{ place }}的人数", "查查{{ plcae }}的人数"))


def test_pattern_may_use_utterance_only_once(tmp_path):
    with pytest.raises(SpecError, match="more than once"):
        run(tmp_path, MINI.replace("步骤#拆分*语音#{{ utterance }}", "{{ utterance }}#{{ utterance }}"))


def test_a_pattern_without_the_utterance_refuses_contents_it_has_no_place_for(tmp_path):
    """`pattern: fixed` with contents glued them to its end ("fixedhi x"), silently. A step whose contents are
    empty (the summary step of MINI) needs no utterance in its pattern."""
    with pytest.raises(SpecError, match=r"steps\[1\].pattern: the pattern has no \{\{ utterance \}\}"):
        run(tmp_path, MINI.replace("步骤#拆分*语音#{{ utterance }}", "步骤#拆分"))


def test_chains_carry_history_and_shared_slots(tmp_path):
    examples, _ = run(tmp_path, MINI + "chains: {steps: [greet, arguments], count: 5}\n")
    chains = [e for e in examples if e.chain]
    assert len(chains) == 5
    for e in chains:
        assert e.chain == ("greet", "arguments") and e.step == "arguments"
        assert len(e.history) == 1 and e.history[0][0].startswith("步骤#问候*语音#") and e.history[0][1] == "您好"


def test_label_steps(tmp_path):
    text = """\
    name: intent
    n: 12
    slots:
      place: {values: [a, b, c]}
      check: {choices: [人数检测, 安全检查]}
    steps:
      - name: intent
        label: "{{ check }}"
        contents:
          - {text: "查{{ place }}人数", fix: {check: 人数检测}}
          - {text: "查{{ place }}安全", fix: {check: 安全检查}}
    """
    examples, _ = run(tmp_path, text, n=6)
    assert Counter(e.summary for e in examples) == {"人数检测": 3, "安全检查": 3}
    assert all(e.label and e.content == e.utterance for e in examples)


def test_grid_spec_default_expands_every_answer_branch():
    warnings = []
    examples = expand(load_spec(TEMPLATES / "grid" / "spec.yaml"), random.Random(42), None, warnings)
    assert len(examples) == 3000 and not warnings
    summaries = {re.sub(r"\d+", "#", e.summary) for e in examples if e.step == "summary"}
    assert summaries == {
        "[人数检测] 应到#人, 实到#人, 无工单出工, 可能存在非法进入", "[人数检测] 应到#人, 实到#人, 无人缺勤, 正常出工",
        "[人数检测] 应到#人, 实到#人, 有人缺勤", "[人数检测] 应到#人, 实到#人, 人数异常, 可能存在非法进入",
        "[安全检查] 现场无人施工", "[安全检查] 实到#人, 均佩戴安全帽", "[安全检查] 实到#人, #人佩戴安全帽, 存在安全隐患",
        "[设备检查] 现场无人施工", "[设备检查] 实到#人, 均正常携带设备", "[设备检查] 实到#人, #人未携带设备",
    }
    # every number of an answer is in its prompt
    for e in examples:
        for number in re.findall(r"\d+", e.summary):
            assert number in re.findall(r"\d+", e.content), (e.content, e.summary)
