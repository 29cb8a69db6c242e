"""The eighth probe (docs/reliability.md): counts, shares and splits at their edges (tiny n, shares that round up,
a held-out slot that takes a whole step)."""

import pytest

from datagen_testutil import write_spec
from tasktune.datagen.expand import plan_counts
from tasktune.datagen.spec import load_spec
from tasktune.errors import SpecError

STEP = '{{name: {name}, contents: ["{{{{ a }}}}"], summary: "{{{{ a }}}}"{extra}}}'


def _spec(tmp_path, *steps, chains=""):
    listed = ", ".join(STEP.format(name=name, extra=extra) for name, extra in steps)
    text = f"name: e\nn: 10\nslots: {{a: {{range: [0, 99]}}}}\nsteps: [{listed}]\n{chains}"
    return load_spec(write_spec(tmp_path, text))


def test_shares_that_fit_n_are_never_refused_for_their_rounding(tmp_path):
    # 0.5 and 0.5 of 3 rounded to 2 + 2: "impossible counts: steps and chains ask for 4 records but n is 3"
    spec = _spec(tmp_path, ("s", ", share: 0.5"), ("t", ", share: 0.5"))
    assert plan_counts(spec, 3) == ({"s": 1, "t": 2}, 0)
    spec = _spec(tmp_path, ("s", ", share: 0.3"), ("t", ", share: 0.3"), ("u", ""))
    assert plan_counts(spec, 5) == ({"s": 1, "t": 2, "u": 2}, 0)
    spec = _spec(tmp_path, ("s", ", share: 0.45"), ("t", ""), chains="chains: {steps: [s, t], share: 0.55}\n")
    assert plan_counts(spec, 3) == ({"s": 1, "t": 0}, 2)


def test_a_share_whose_rounding_fits_is_as_before(tmp_path):
    spec = _spec(tmp_path, ("s", ", share: 0.25"), ("t", ", share: 0.25"), ("u", ""))
    assert plan_counts(spec, 10) == ({"s": 2, "t": 2, "u": 6}, 0)  # round(2.5) is 2, as it was
    assert plan_counts(spec, 24) == ({"s": 6, "t": 6, "u": 12}, 0)


def test_shares_over_one_are_refused_at_any_n(tmp_path):
    spec = _spec(tmp_path, ("s", ", share: 0.6"), ("t", ", share: 0.5"))
    for n in (3, 10, 1000):  # (at n 3 the rounding alone would have fitted)
        with pytest.raises(SpecError, match=r"spec.yaml:4: \$.steps\[0\].share: impossible counts: the shares add "
                                            r"up to 1.1, more than all of n \(\$.steps\[0\].share 0.6, "
                                            r"\$.steps\[1\].share 0.5\)"):
            plan_counts(spec, n)


def test_counts_over_n_name_the_fields_that_ask(tmp_path):
    # was "spec.yaml: impossible counts: steps and chains ask for 13 records but n is 10": no line, no field
    spec = _spec(tmp_path, ("s", ", count: 5"), ("t", ", share: 0.2"), chains="chains: {steps: [s, t], count: 6}\n")
    with pytest.raises(SpecError, match=r"spec.yaml:4: \$.steps\[0\].count: impossible counts: steps and chains ask "
                                        r"for 13 records but n is 10 \(\$.steps\[0\].count 5, \$.steps\[1\].share "
                                        r"0.2 \(2\), \$.chains.count 6\); lower them, or raise n \(or --n\)"):
        plan_counts(spec, 10)


def test_a_step_the_slot_split_sends_wholly_to_dev_is_a_warning(tmp_path):
    # step s fixes a = x; when x was held out, s had 10 records in dev and none in train with no word (the
    # "far off" warning allowed up to 1.5 x the share: never at dev 0.5)
    from tasktune.datagen import generate

    text = """\
name: e
n: 20
slots: {a: {values: [x, y]}, b: {range: [0, 99]}}
steps:
  - {name: s, contents: [{text: "{{ a }}{{ b }}", fix: {a: x}}], summary: "{{ a }}{{ b }}"}
  - {name: t, contents: ["t{{ a }}{{ b }}"], summary: "{{ a }}{{ b }}"}
split: {strategy: slot, slot: a, dev: 0.5}
"""
    path = write_spec(tmp_path, text)
    for seed in range(6):
        splits = generate(path, seed=seed)
        trained = {r["meta"]["step"] for r in splits.train}
        warned = [w for w in splits.stats["warnings"] if "none to train on" in w]
        if "s" in trained:
            assert not warned
        else:
            assert warned == ["split: step 's' has all of its 10 records in dev and none to train on: each holds a "
                              "held-out value of slot 'a' ('x'), e.g. a content's `fix`; the model never learns this "
                              "step (give it other values, or split another slot)"]
    assert any("s" not in {r["meta"]["step"] for r in generate(path, seed=seed).train} for seed in range(6))


@pytest.mark.parametrize("chains", ["", "chains: {steps: [s, s], count: 5000}\n"])
def test_long_texts_are_refused_before_they_fill_memory(tmp_path, monkeypatch, chains):
    # budget.check counts ~1,800 bytes a record; 5,000 records of 90,000 characters (~180 KB of text each) passed it
    # and filled 521 MiB of a "1 GiB" machine. Now the text made so far is projected over n as records are made.
    import resource

    from tasktune.datagen import budget, generate

    monkeypatch.setattr(budget, "total_memory", lambda: 1 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = ", count: 0" if chains else ""  # (with chains: every record a dialogue)
    text = ("name: e\nn: 5000\nslots: {a: {range: [0, 99999]}}\n"
            f"steps: [{{name: s, contents: [\"{{{{ 'y' * 90000 }}}}{{{{ a }}}}\"], summary: \"{{{{ a }}}}\"{count}}}]\n"
            + chains)
    with pytest.raises(SpecError, match=r"n 5,000: the records' texts are long \(about 1\d\d,\d{3} bytes of text a "
                                        r"record in the first \d+\), so generating this set needs about 1.0 GiB"):
        generate(write_spec(tmp_path, text), seed=0)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 << 10  # KiB: stopped within ~16 MiB


@pytest.mark.parametrize("strategy", ["random", "template"])
def test_a_record_two_steps_make_never_straddles_the_split(tmp_path, strategy):
    # steps s and t make the same (content, answer) records; each step was split on its own, so 10 of 12 dev
    # records were also in train (seed 3): a dev score on records trained on
    from tasktune.datagen import generate

    text = """\
name: e
n: 40
slots: {a: {range: [0, 19]}}
steps:
  - {name: s, contents: ["查{{ a }}", "问{{ a }}"], summary: "{{ a }}"}
  - {name: t, contents: ["查{{ a }}", "问{{ a }}"], summary: "{{ a }}"}
split: {strategy: STRATEGY, dev: 0.3}
""".replace("STRATEGY", strategy)
    path = write_spec(tmp_path, text)
    for seed in range(4):
        splits = generate(path, seed=seed)
        train = {(r["content"], r["summary"]) for r in splits.train}
        dev = {(r["content"], r["summary"]) for r in splits.dev}
        assert train and dev and not train & dev
        assert any("step 't' makes" in w and "as an earlier step's" in w for w in splits.stats["warnings"])
