"""The engine's incremental answer text (tuning/inference/detokenize.py) against the tokenizer's whole decode."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from tasktune import TEMPLATES
from tasktune.tuning.inference.detokenize import IncrementalText


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TEMPLATES / "demo" / "tiny-glm")


def whole(tokenizer, tokens):
    return tokenizer.decode(tokens, skip_special_tokens=True)


@pytest.mark.parametrize("seed", range(4))
def test_the_text_grows_as_the_whole_decode_and_ends_equal_to_it(tokenizer, seed):
    """Random ids, byte-fallback ones (half characters) among them: after every token the text is a prefix of the
    whole decode so far, and once the tokens spell whole characters it is all of it."""
    rng = random.Random(seed)
    vocab = len(tokenizer)
    tokens, text = [], IncrementalText(tokenizer)
    chinese = tokenizer("应到47人, 实到34人, 有人缺勤")["input_ids"]
    for i in range(300):
        tokens.append(rng.randrange(vocab) if i % 3 else rng.choice(chinese))
        so_far = text.feed(tokens)
        assert whole(tokenizer, tokens).startswith(so_far)
    tokens += chinese  # whole characters after whatever bytes were pending
    for n in range(len(tokens) - len(chinese) + 1, len(tokens) + 1):
        text.feed(tokens[:n])
    expected = whole(tokenizer, tokens)
    if not expected.endswith("\ufffd"):
        assert text.text == expected


def test_a_token_decodes_a_short_window_not_the_whole_answer(tokenizer):
    """The engine decoded each row's whole answer at every token (O(length) a token: ~180 us at 1,024 tokens)."""
    lengths = []

    class Counting:
        def decode(self, tokens, **kw):
            lengths.append(len(tokens))
            return tokenizer.decode(tokens, **kw)

    answer = tokenizer("[人数检测] 应到47人, 实到34人, 有人缺勤。" * 20)["input_ids"]
    text = IncrementalText(Counting())
    for n in range(1, len(answer) + 1):
        text.feed(answer[:n])
    assert len(answer) > 200 and max(lengths) <= 8
    assert text.text == whole(tokenizer, answer)
