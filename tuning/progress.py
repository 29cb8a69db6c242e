"""Progress bars for the long steps (train, eval, tiny-model): tqdm with an ETA on a terminal; a few plain lines
when the output is a file or a CI log (no carriage-return redraws: a 1,000-step run writes ~10 lines, not 1,000).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import IO

#: Plain lines written over a whole run when the output is not a terminal.
PLAIN_LINES = 10
#: The plain lines' format: where, how far, elapsed < remaining, rate, the postfix (e.g. the loss).
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class PlainLines:
    """A file for tqdm that turns each redraw ("\\r" + status) into one line; a redraw at the same count as the
    last line (tqdm's closing redraw) is dropped."""

    def __init__(self, stream: IO[str]):
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        where = line.split(" [", 1)[0]  # "desc: n/total (p%)"
        if line and where != self.last:
            self.stream.write(line + "\n")
            self.last = where

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(total: int, desc: str, *, unit: str = "it", initial: int = 0, disable: bool = False,
                 stream: IO[str] | None = None, lines: int = PLAIN_LINES):
    """A tqdm bar over `total` items. On a terminal: redrawn in place with an ETA. Otherwise: a line every
    ~1/`lines` of the work (and at the end), each with the elapsed and remaining time. Call
    `set_postfix(..., refresh=False)` in loops, so that a postfix change does not print a line by itself."""
    from tqdm import tqdm
    from tqdm.auto import tqdm as auto_tqdm

    stream = stream if stream is not None else sys.stderr
    if is_terminal(stream):
        return auto_tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=stream,
                    dynamic_ncols=True)
    every = max(1, (total - initial) // max(1, lines))
    # miniters fixed, mininterval 0: a line each `every` items; maxinterval inf: tqdm's monitor thread never
    # lowers miniters to redraw a slow bar
    return tqdm(total=total, initial=initial, desc=desc.strip(), unit=unit, disable=disable, file=PlainLines(stream),
                miniters=every, mininterval=0, maxinterval=float("inf"), bar_format=PLAIN_FORMAT)


@contextmanager
def transformers_bars_off(off: bool = True):
    """Inside: transformers' own progress bars off where `off`; its setting comes back afterwards."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    if off:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def library_bars_on_terminal_only(stream: IO[str] | None = None):
    """Inside: transformers' own bars (the one-line "Loading weights" of `from_pretrained`) only when `stream` (stderr)
    is a terminal; in a file or a CI log such a bar is a line of carriage-return redraws that says nothing."""
    return transformers_bars_off(not is_terminal(stream if stream is not None else sys.stderr))
