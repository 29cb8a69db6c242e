"""tasktune.datagen.noise: each op, spans that audit every change, homophones, determinism, utterance only."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pypinyin import Style, lazy_pinyin

from tasktune.datagen import generate
from tasktune.datagen.noise import add_noise, homophone_table, homophones
from tasktune.datagen.spec import NoiseSpec
from datagen_testutil import write_spec


def only(op, rate=1.0, **kw):
    return NoiseSpec(rate=rate, ops={op: 1.0}, **kw)


def restore(noised: str, spans: list[dict]) -> str:
    """Undo the edits from the right, using only the spans' `at`/`after`/`before`."""
    text = noised
    for s in reversed(spans):  # spans come left to right
        text = text[: s["at"]] + s["before"] + text[s["at"] + len(s["after"]):]
    return text


def check_spans(clean: str, noised: str, spans: list[dict]) -> None:
    for s in spans:
        assert clean[s["start"]: s["end"]] == s["before"]
        assert noised[s["at"]: s["at"] + len(s["after"])] == s["after"]
    assert restore(noised, spans) == clean


def test_mask_replaces_every_character_with_the_token():
    noised, spans = add_noise("查济南", random.Random(0), only("mask", mask_token="[MASK]"))
    assert noised == "[MASK]" * 3
    assert [(s["start"], s["end"], s["before"], s["at"]) for s in spans] == [(0, 1, "查", 0), (1, 2, "济", 6), (2, 3, "南", 12)]


def test_delete_removes_characters():
    noised, spans = add_noise("查济南工地", random.Random(0), only("delete", rate=0.5))
    assert len(noised) < 5 and all(s["after"] == "" and s["op"] == "delete" for s in spans)
    check_spans("查济南工地", noised, spans)


def test_noise_never_leaves_an_utterance_empty_or_whitespace_only():
    specs = [only("delete"), only("mask", mask_token=" "),
             NoiseSpec(rate=1.0, ops={"delete": 1, "mask": 1}, mask_token="\u3000")]
    for text in ("查济南", "查 济 南", "a", " 查\t"):
        for spec in specs:
            kept = set()
            for seed in range(8):
                noised, spans = add_noise(text, random.Random(seed), spec)
                assert noised.strip(), (text, spec, noised)  # (was: "" / " ")
                check_spans(text, noised, spans)
                assert (noised, spans) == add_noise(text, random.Random(seed), spec)  # the same for a seed
                kept.add(noised.strip())
            if spec is specs[0]:  # one original character is kept, drawn with the seed's rng
                assert kept <= set(text) and (len(kept) > 1 or len(text.strip()) == 1)



def test_insert_stutters_or_uses_fillers():
    noised, spans = add_noise("查济", random.Random(0), only("insert"))
    assert noised == "查查济济" and [(s["start"], s["end"], s["after"]) for s in spans] == [(1, 1, "查"), (2, 2, "济")]
    noised, _ = add_noise("查济", random.Random(0), only("insert", insert_chars="嗯"))
    assert noised == "查嗯济嗯"


def test_homophone_keeps_the_toneless_pinyin():
    text = "请尝试查看济南工地的人数"
    noised, spans = add_noise(text, random.Random(3), only("homophone"))
    assert len(noised) == len(text) and noised != text
    for s in spans:
        assert s["after"] != s["before"]
        assert lazy_pinyin(s["after"], style=Style.NORMAL) == lazy_pinyin(s["before"], style=Style.NORMAL)
    check_spans(text, noised, spans)


def test_homophone_table_is_deterministic_and_sorted():
    table = homophone_table()
    assert "查" in table["cha"] and list(table["cha"]) == sorted(table["cha"])
    assert "察" in homophones("查") and "查" not in homophones("查")
    assert homophones("q") == ("w",) and homophones("A") == ("S",)
    assert homophones("#") == ()


def test_rate_zero_changes_nothing_and_rate_is_respected():
    text = "检查济南有没有设备异常" * 50
    assert add_noise(text, random.Random(0), only("mask", rate=0.0)) == (text, [])
    _, spans = add_noise(text, random.Random(0), only("delete", rate=0.1))
    assert 0.05 < len(spans) / len(text) < 0.15


def test_same_seed_same_noise():
    spec = NoiseSpec(rate=0.3, ops={"mask": 1, "homophone": 1, "delete": 1, "insert": 1})
    assert add_noise("尝试查济南的人数", random.Random(5), spec) == add_noise("尝试查济南的人数", random.Random(5), spec)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40), seed=st.integers(0, 2**32), rate=st.floats(0, 1),
       weights=st.lists(st.floats(0, 1), min_size=4, max_size=4).filter(lambda w: sum(w) > 0))
def test_any_text_gives_consistent_spans(text, seed, rate, weights):
    spec = NoiseSpec(rate=rate, ops=dict(zip(("mask", "homophone", "delete", "insert"), weights)))
    noised, spans = add_noise(text, random.Random(seed), spec)
    assert isinstance(noised, str)
    check_spans(text, noised, spans)
    assert all(not text[s["start"]: s["end"]].isspace() or s["op"] == "insert" for s in spans)


def test_records_are_noised_only_inside_the_utterance(tmp_path):
    splits = generate(write_spec(tmp_path), seed=1)
    noisy = [r for r in splits.train if r["meta"]["noise"]]
    assert noisy and not any(r["meta"]["noise"] for r in splits.dev)  # dev is clean by default
    for r in noisy:
        prefix = "步骤#问候*语音#" if r["meta"]["step"] == "greet" else "步骤#拆分*语音#"
        assert r["content"].startswith(prefix)
        for s in r["meta"]["noise"]:
            assert s["start"] >= len(prefix) and s["at"] >= len(prefix)
            assert r["content"][s["at"]: s["at"] + len(s["after"])] == s["after"]
    # the summary step has no utterance; answers are never noised
    assert all(not r["meta"]["noise"] for r in splits.train if r["meta"]["step"] == "summary")
    assert {r["summary"] for r in splits.train if r["meta"]["step"] == "greet"} == {"您好"}


def test_noise_per_split_and_unspoken_steps(tmp_path):
    text = open(write_spec(tmp_path)).read().replace("  rate: 0.3\n", "  rate: 0.3\n  splits: [train, dev]\n")
    text = text.replace('    pattern: "步骤#问候*语音#{{ utterance }}"\n', '    pattern: "步骤#问候*语音#{{ utterance }}"\n    spoken: false\n')
    splits = generate(write_spec(tmp_path / "b", text), seed=1)
    assert any(r["meta"]["noise"] for r in splits.dev)
    assert not any(r["meta"]["noise"] for r in splits.train + splits.dev if r["meta"]["step"] == "greet")
