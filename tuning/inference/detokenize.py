"""A row's answer text while it decodes, a few tokens at a time.

Decoding the whole answer again at every token costs O(answer length) per token (at 1,024 tokens ~75-180 us with the
tiny model's fast tokenizer, for every row of every step). `IncrementalText` decodes a short window instead: the
tokens read at its last advance (their text is known) plus the new ones, and adds the window's text beyond
what those known tokens give. The known tokens stay in the window so that a tokenizer whose decode depends on the
token before (a leading space, a byte sequence) spells the new text as the whole decode would; a window whose text
ends in U+FFFD (half of a multi-byte character) waits for the next token. The same offsets as vLLM's
`detokenize_incrementally` and text-generation-inference's `decode_token`, over `tokenizer.decode`, so slow and
fast tokenizers alike take it. (tokenizers' own `DecodeStream` raised "Invalid prefix encountered" on the tiny
model's byte-fallback tokens.)

The text built this way is what streams (the engine holds back a U+FFFD at its end); the engine decodes the whole
answer once at its end, so a finished answer is exactly the tokenizer's decode of its tokens, as eval's.
"""

from __future__ import annotations


class IncrementalText:
    """The text of `tokens` so far (`feed` it the row's growing token list after each new token)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.text = ""
        self._known = 0  # tokens[_known:_read] were read at the last advance: the window's context
        self._read = 0  # tokens[:_read] are in `text`

    def feed(self, tokens: list[int]) -> str:
        """`text` with whatever `tokens` beyond those read so far spell completely."""
        if len(tokens) > self._read:
            known = self._decode(tokens[self._known:self._read])
            window = self._decode(tokens[self._known:])
            if window.startswith(known) and len(window) > len(known) and not window.endswith("\ufffd"):
                self.text += window[len(known):]
                self._known, self._read = self._read, len(tokens)
            elif not window.startswith(known):  # bytes of the window's context joined the new ones: the whole
                self.text = self._decode(tokens)
                self._known, self._read = len(tokens) - 1, len(tokens)
        return self.text

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True) if tokens else ""
