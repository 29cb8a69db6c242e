"""Tests for tuning/evaluation/metrics.py: every figure is computed by hand in the comments."""

import math
import subprocess
import sys

import pytest

from tasktune.tuning.evaluation.metrics import (
    accuracy,
    aggregate_arguments,
    argument_accuracy,
    bleu4,
    compute_metrics,
    exact_match,
    macro_f1,
    rouge_scores,
    score_pair,
)

PATTERN = (
    "^因为出现地名为(?P<place>.+?), 所以函数一参数为(?P=place); "
    "因为出现人数要求, 所以函数二参数为(?P<check>.+)$"
)
META = {"step": "args", "arguments": {"place": "济南", "check": "人数检测"}, "answer_pattern": PATTERN}
RIGHT = "因为出现地名为济南, 所以函数一参数为济南; 因为出现人数要求, 所以函数二参数为人数检测"
WRONG_PLACE = "因为出现地名为青岛, 所以函数一参数为青岛; 因为出现人数要求, 所以函数二参数为人数检测"


# ---- exact match, BLEU, ROUGE -----------------------------------------------------------------


def test_exact_match_strips_only_the_ends():
    assert exact_match("  abc\n", "abc") == 1.0
    assert exact_match("a bc", "abc") == 0.0


def test_bleu4_brevity_penalty_by_hand():
    # pred "abcd" vs ref "abcde": every n-gram precision is 1, BP = exp(1 - 5/4).
    assert bleu4("abcd", "abcde") == round(math.exp(-0.25) * 100, 4) == 77.8801


def test_bleu4_method3_smoothing_by_hand():
    # pred "abxd" vs ref "abcd": p1 = 3/4, p2 = 1/3 (ab), p3 = 0/2, p4 = 0/1.
    # NIST smoothing (method3) turns the k-th zero precision into 1 / (2^k * count): p3 = 1/4, p4 = 1/4.
    expected = (0.75 * (1 / 3) * 0.25 * 0.25) ** 0.25 * 100
    assert bleu4("abxd", "abcd") == round(expected, 4) == 35.3553


def test_bleu4_of_empty_or_disjoint_is_zero():
    assert bleu4("", "abc") == 0.0
    assert bleu4("xyz", "abc") == 0.0



def test_bleu4_short_identical_answer_is_below_100_as_in_chatglm():
    # A 3-character answer has no 4-gram: p4 = 0/1, smoothed by method3 to 1/2, so BLEU = 0.5^(1/4).
    # ChatGLM-6B and LLaMA-Factory report the same figure; we keep it comparable, quirk included.
    assert bleu4("abc", "abc") == round(0.5**0.25 * 100, 4) == 84.0896


def test_rouge_on_words_by_hand():
    # jieba keeps ASCII words; hyp = [the, cat, sat], ref = [the, cat, sat, down].
    # ROUGE-1: P = 3/3, R = 3/4 -> F = 6/7; ROUGE-2: P = 2/2, R = 2/3 -> F = 0.8; LCS = 3 -> F = 6/7.
    scores = rouge_scores("the cat sat", "the cat sat down")
    assert scores == {"rouge-1": 85.7143, "rouge-2": 80.0, "rouge-l": 85.7143}


def test_rouge_of_empty_side_is_zero_not_an_error():
    zero = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    assert rouge_scores("", "济南") == zero
    assert rouge_scores("济南", "   ") == zero


def test_identical_chinese_scores_100_everywhere():
    assert score_pair(RIGHT + " ", RIGHT) == {
        "exact_match": 100.0,
        "bleu-4": 100.0,
        "rouge-1": 100.0,
        "rouge-2": 100.0,
        "rouge-l": 100.0,
    }


def test_jieba_prints_nothing(tmp_path):
    # A fresh interpreter: jieba's "Building prefix dict ..." chatter comes on first load only. An empty bytecode
    # cache makes Python compile jieba and rouge_chinese as a first import does: on Python 3.12+ their invalid
    # escapes print SyntaxWarnings then (3.11 keeps its DeprecationWarnings silent by default).
    code = "from tuning.evaluation.metrics import rouge_scores; print(rouge_scores('检查济南工地的人数', '济南工地')['rouge-1'])"
    done = subprocess.run([sys.executable, "-X", f"pycache_prefix={tmp_path}", "-c", code],
                          capture_output=True, text=True, check=True)
    assert done.stderr == ""
    assert float(done.stdout) > 0


# ---- argument accuracy ------------------------------------------------------------------------


def test_arguments_all_right():
    assert argument_accuracy(RIGHT, META) == {"place": True, "check": True}


def test_arguments_wrong_place():
    assert argument_accuracy(WRONG_PLACE, META) == {"place": False, "check": True}


def test_arguments_non_matching_answer_is_all_wrong():
    assert argument_accuracy("要查寻济南工地的人数,需要先理解", META) == {"place": False, "check": False}
    # The backreference must repeat the place: 济南 ... 青岛 does not match at all.
    mixed = RIGHT.replace("函数一参数为济南", "函数一参数为青岛")
    assert argument_accuracy(mixed, META) == {"place": False, "check": False}


def test_arguments_bad_or_missing_pattern_is_all_wrong():
    assert argument_accuracy(RIGHT, {**META, "answer_pattern": "(?P<place"}) == {"place": False, "check": False}
    assert argument_accuracy(RIGHT, {"arguments": {"place": "济南"}}) == {"place": False}


def test_arguments_repeated_group_name_must_agree_everywhere():
    pattern = PATTERN.replace("(?P=place)", "(?P<place>.+?)")  # not valid Python re as written
    meta = {**META, "answer_pattern": pattern}
    assert argument_accuracy(RIGHT, meta) == {"place": True, "check": True}
    mixed = RIGHT.replace("函数一参数为济南", "函数一参数为青岛")
    assert argument_accuracy(mixed, meta) == {"place": False, "check": True}


def test_record_without_arguments_gives_none():
    assert argument_accuracy(RIGHT, {"step": "greet"}) is None
    assert argument_accuracy(RIGHT, None) is None


def test_aggregate_arguments():
    results = [{"place": True, "check": True}, {"place": False, "check": True}, None]
    assert aggregate_arguments(results) == {
        "n_arguments": 2,
        "arguments_all": 50.0,
        "argument.check": 100.0,
        "argument.place": 50.0,
    }
    assert aggregate_arguments([None, None]) == {}


# ---- classification ---------------------------------------------------------------------------


def test_accuracy_and_macro_f1_on_a_confusion_example():
    labels = ["a", "b", "b", "c", "c"]
    preds = ["a", "a", "b", "b", "c"]
    assert accuracy(preds, labels) == pytest.approx(3 / 5)
    # a: tp1 fp1 fn0 -> 2/3; b: tp1 fp1 fn1 -> 1/2; c: tp1 fp0 fn1 -> 2/3.
    assert macro_f1(preds, labels) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_macro_f1_counts_a_made_up_class_and_takes_explicit_classes():
    labels = ["a", "a", "b", "b"]
    preds = ["a", "a", "b", "x"]
    # a: 1; b: tp1 fn1 -> 2/3; x: tp0 -> 0.
    assert macro_f1(preds, labels) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert macro_f1(preds, labels, classes=["a", "b"]) == pytest.approx((1 + 2 / 3) / 2)


def test_classification_length_mismatch_raises():
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


# ---- compute_metrics --------------------------------------------------------------------------


def _records():
    return [
        {"content": "你好", "summary": "您好", "meta": {"step": "greet"}},
        {"content": "查济南", "summary": RIGHT, "meta": META},
        {"content": "查青岛", "summary": WRONG_PLACE, "meta": {**META, "arguments": {"place": "青岛", "check": "人数检测"}}},
        {"content": "the cat", "summary": "the cat sat down", "meta": {"step": "summary"}},
    ]


def test_compute_metrics_overall_and_per_step():
    preds = ["您好", RIGHT, RIGHT, "the cat sat"]
    result = compute_metrics(_records(), preds)
    assert list(result) == ["overall", "per_step"]
    assert list(result["per_step"]) == ["args", "greet", "summary"]

    overall = result["overall"]
    assert list(overall)[:6] == ["n", "exact_match", "bleu-4", "rouge-1", "rouge-2", "rouge-l"]
    assert overall["n"] == 4
    assert overall["exact_match"] == 50.0  # records 1 and 2 only
    # per-record ROUGE-1: 100, 100, x, 85.7143 where x is the jieba score of RIGHT vs WRONG_PLACE.
    x = rouge_scores(RIGHT, WRONG_PLACE)["rouge-1"]
    assert overall["rouge-1"] == round((100 + 100 + x + 85.7143) / 4, 4)
    assert overall["n_arguments"] == 2
    assert overall["arguments_all"] == 50.0
    assert overall["argument.place"] == 50.0
    assert overall["argument.check"] == 100.0

    summary = result["per_step"]["summary"]
    assert summary == {
        "n": 1,
        "exact_match": 0.0,
        "bleu-4": bleu4("the cat sat", "the cat sat down"),
        "rouge-1": 85.7143,
        "rouge-2": 80.0,
        "rouge-l": 85.7143,
    }  # no argument keys where no record has arguments
    assert result["per_step"]["args"]["exact_match"] == 50.0


def test_compute_metrics_rounds_to_4_decimals_and_checks_lengths():
    result = compute_metrics(_records()[:3], ["您好", RIGHT, "x"])
    assert result["overall"]["exact_match"] == 66.6667
    with pytest.raises(ValueError):
        compute_metrics(_records(), ["one"])


def test_compute_metrics_record_without_step():
    result = compute_metrics([{"content": "q", "summary": "a"}], ["a"])
    assert result["per_step"] == {"(none)": result["overall"]}


@pytest.mark.timeout(60)
def test_an_answer_pattern_that_backtracks_for_ever_is_stopped_and_said_once():
    """A pattern of nested repeats held `tasktune eval` for ever on an answer it cannot match (re cannot stop a
    match); now that answer's arguments count wrong, with one warning for the pattern."""
    from tasktune.tuning.evaluation import metrics

    meta = {"answer_pattern": "(?P<place>(a|a)+)c", "arguments": {"place": "aaa"}}  # (2^n ways to read a^n)
    assert argument_accuracy("aaac", meta) == {"place": True}  # (the timeout changes nothing where it matches)
    with pytest.warns(RuntimeWarning, match="took over") as said:
        assert argument_accuracy("a" * 40, meta) == {"place": False}
        assert argument_accuracy("a" * 41, meta) == {"place": False}
    assert len([w for w in said if "took over" in str(w.message)]) == 1
    metrics._SLOW.clear()
