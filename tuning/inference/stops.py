"""Stop strings in a row's answer: where one begins, and how much of the text's end a stream must hold back.

A stop string may span several tokens ("所以函数一参数为济南" is five). A stream that sent each token's text as it
came had sent "所以函数一参数为" before the stop was complete, so the streamed answer held the stop's start while
the whole answer (cut before the stop) did not. `sendable` holds back the longest end of the text that is the
start of a stop string: it is sent once the next text shows it is no stop after all, or at the end, so that the
streamed deltas always join to the whole answer, as vLLM's and OpenAI's streams do.
"""

from __future__ import annotations


def stop_at(text: str, stops: tuple[str, ...], sent: str) -> int:
    """Where the earliest stop string begins in a row's `text`, or -1. `sent` (the text sent before) was searched at
    its own step and holds no stop, so a stop can only end in the new text: the search starts the longest stop's
    length - 1 characters before it. Per token that costs the new text plus a stop's length, not the whole answer
    for every stop (the serve layer allows at most 4 stops of 256 characters: serve/protocol.py). When the text
    no longer starts with `sent` (a tokenizer's decode may change earlier text) the whole of it is searched."""
    longest = max(map(len, stops), default=0)
    start = max(0, len(sent) - longest + 1) if text.startswith(sent) else 0
    found = [at for stop in stops if stop and (at := text.find(stop, start)) >= 0]
    return min(found, default=-1)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that is the start (shorter than the whole) of a stop string: the
    characters that the next tokens may still make a stop. Only places where the stop has the text's last
    character are tried (str.rfind), so a token costs a few comparisons per stop, not one per stop character."""
    if not text:
        return 0
    last, longest = text[-1], 0
    for stop in stops:
        k = stop.rfind(last, 0, len(stop) - 1)  # stop[:k + 1] ends with `last`; the whole stop is never held
        while k + 1 > longest:
            if k + 1 <= len(text) and text.endswith(stop[:k + 1]):
                longest = k + 1
                break
            k = stop.rfind(last, 0, k)
    return longest


def sendable(text: str, stops: tuple[str, ...]) -> str:
    """`text` without the end that may still become a stop string (`held_back`)."""
    return text[:len(text) - held_back(text, stops)]


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the earliest stop string (exactly: nothing before the stop is stripped, as OpenAI and vLLM
    return it), and whether there was one."""
    at = stop_at(text, stops, "")
    return (text[:at], True) if at >= 0 else (text, False)
