"""The base model's context window at startup: what of `--max-tokens` and the runs' prompt cuts it can hold, and
the width of the engine's slots.

A run's text positions start at its P (its prefix's keys/values take positions 0..P-1, as in training:
tuning/inference/engine.py `_positions`); the base model's rows have no prefix. So prefix + prompt + answer must fit
the window. Each request is held to it in serve/service.py (`Service.sampling`: 400 `context_length_exceeded`);
here the server-wide values are fitted once. A `--max-tokens` that no request could use (more than the window less
a one-token prompt) is lowered to what fits, with one warning line, rather than refused: its default (1,024) is
nobody's choice for this model, and GPT-2's 1,024 positions or a small test base would not start with it.
`--max-prompt-tokens` needs no fitting: it refuses prompts before they are cut to the run's max_source_length, and
only the cut prompt takes positions.
"""

from __future__ import annotations

from typing import Callable, Iterable

from tasktune.errors import ConfigError
from tasktune.tuning.inference.bank import ServedRun


DEFAULT_MAX_TOKENS = 1024
"""--max-tokens when not given (then lowered to the window without a word: the user set nothing to warn about)"""


def fit_window(context: int | None, runs: Iterable[ServedRun], max_tokens: int | None,
               warn: Callable[[str], None]) -> tuple[int, int]:
    """(--max-tokens as the window allows it, the slots' text width: ChildConfig.slot_width, to which the engine
    adds the widest prefix). The slots then hold at most the window (plus the one spare column the engine's
    check keeps: a row needs fewer columns than the slot has). A run whose prefix leaves no room for a prompt and
    an answer is a ConfigError; one whose max_source_length leaves none for an answer has its prompts cut further
    (`Service.encode`), said by `warn`. `context` None: the base's config names no window, nothing is fitted."""
    runs = list(runs)
    given = max_tokens is not None
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    longest = max(r.max_source_length for r in runs)
    if context is None:
        return max_tokens, longest + max_tokens + 1
    for run in runs:
        if run.pre_seq_len + 2 > context:
            raise ConfigError(f"run {run.name}: its prefix takes {run.pre_seq_len} of the base model's "
                              f"{context} positions, leaving none for a prompt and an answer")
        if run.pre_seq_len + run.max_source_length >= context:
            warn(f"tasktune serve: run {run.name}: its prefix ({run.pre_seq_len}) + max_source_length "
                 f"({run.max_source_length}) leave no room for an answer in the base model's {context} positions; "
                 f"its prompts are cut to their last {context - run.pre_seq_len - 1} tokens")
    if max_tokens > context - 1 and given:
        warn(f"tasktune serve: --max-tokens {max_tokens} does not fit the base model's context window of "
             f"{context} positions; requests may ask for at most {context - 1} tokens (prompt + max_tokens, and a "
             f"run's prefix, must fit the window)")
    max_tokens = min(max_tokens, context - 1)
    prefix = max(r.pre_seq_len for r in runs)
    return max_tokens, min(longest + max_tokens, context - prefix) + 1


def overflow_message(context: str, requested: str, reduce: str = "the messages",
                     why: str = "the prompt is too long") -> str:
    """The message of a 400 `context_length_exceeded`, in the words clients classify it by. With openai-python 3.x,
    str(error) holds the message alone (no longer the body with its `code`), so clients look for phrases:
    LangChain (Python) raises its ContextOverflowError for "prompt is too long" (its SummarizationMiddleware then
    retries an overflowing summary call with the middle of the history cut out); LangChain.js for "maximum context
    length"; LiteLLM its ContextWindowExceededError, which `context_window_fallbacks` route on, for either. The
    first sentence is OpenAI's, which vLLM keeps. The --max-prompt-tokens and 80,000-character refusals said
    neither phrase (a plain BadRequestError to all three), the window's only the second (LangChain missed it).
    A 5xx must not use them: LiteLLM matches them whatever the status."""
    return f"This model's maximum context length is {context}. However, {requested}: {why}. Please reduce the " \
           f"length of {reduce}."
