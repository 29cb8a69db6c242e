"""tasktune.datagen.stats: counts add up, noise rate, lengths, table."""

from tasktune.datagen import generate
from tasktune.datagen.stats import format_table
from datagen_testutil import write_spec


def test_stats_count_everything(tmp_path):
    splits = generate(write_spec(tmp_path), seed=4)
    s = splits.stats
    assert s["records"] == {"train": len(splits.train), "dev": len(splits.dev)}
    assert sum(c["train"] + c["dev"] for c in s["steps"].values()) == 40
    assert sum(c["train"] for c in s["templates"].values()) == len(splits.train)
    assert sum(s["slot_values"]["place"].values()) == sum("place" in r["meta"]["slots"] for r in splits.train + splits.dev)
    edits = sum(len(r["meta"]["noise"]) for r in splits.train)
    assert s["noise"]["train"]["edits"] == edits > 0 and s["noise"]["dev"]["edits"] == 0
    assert 0.15 < s["noise"]["train"]["rate"] < 0.45  # the spec asks for 0.3
    assert s["length"]["content"]["max"] == max(len(r["content"]) for r in splits.train + splits.dev)
    assert 0 < s["unique_ratio"] <= 1 and s["seed"] == 4


def test_table_mentions_steps_noise_and_lengths(tmp_path):
    table = format_table(generate(write_spec(tmp_path), seed=4).stats)
    for word in ("seed 4", "arguments", "summary", "noise train", "length content", "unique ratio", "place"):
        assert word in table
