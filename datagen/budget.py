"""Refuse a `tasktune data` run whose memory estimate exceeds half of this machine's memory, before any work.

`tasktune data` holds every record to split, de-duplicate and count them (benchmarks/RESULTS.md, "tasktune data
memory"), so its peak memory grows about linearly with the record count: `estimate(n)` is a fixed part plus
`PER_RECORD` bytes a record (measured with benchmarks/datagen_scale.py, rounded up). `check(n, what)` raises a
SpecError naming the estimate and the machine's memory (the smaller of physical memory and a cgroup limit) when
the estimate is over half of it: the run would otherwise swap or be killed after minutes of work.
"""

from __future__ import annotations

import os
from pathlib import Path

from tasktune.errors import SpecError

FIXED = 200 << 20  # the interpreter, libraries, the spec's compiled templates
PER_RECORD = 1_800  # bytes of peak memory per record (measured ~1.6 KB at 1M records: RESULTS.md)
GIB = 1 << 30


def total_memory() -> int | None:
    """Bytes of memory this process may use: physical memory, or a smaller cgroup (container) limit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def estimate(n: int) -> int:
    """Estimated peak memory (bytes) of generating and writing `n` records."""
    return FIXED + PER_RECORD * n


def check(n: int, what: str = "--n") -> None:
    """SpecError when `n` records would need more than half of this machine's memory."""
    total = total_memory()
    need = estimate(n)
    if total and need > total // 2:
        raise SpecError(
            f"{what} {n:,}: generating this set needs about {need / GIB:.1f} GiB of memory (~{PER_RECORD:,} bytes "
            f"a record: every record is held to split, de-duplicate and count them), more than half of this "
            f"machine's {total / GIB:.1f} GiB; generate it in parts (several runs with other --seed and --out "
            "values, then concatenate) or on a larger machine")


class TextMemory:
    """The records' text, checked against half of this machine's memory as it is made (`estimate` assumes texts of
    a few hundred characters: a spec whose prompts run to 90,000 characters needs ~100x more a record, and such a run
    filled the machine's memory with `check` passed).

    `add(nbytes)` counts the text of each new (distinct) combination as it is rendered; every STEP bytes,
    `check(made)` projects the bytes so far over the `n` planned records (texts shared by many records count once) and
    raises a SpecError when the projection does not fit. Without a known memory size nothing is checked."""

    STEP = 16 << 20  # bytes of new text between two checks

    def __init__(self, n: int):
        self.n, self.bytes = n, 0
        self.total = total_memory()
        self.next_check = self.STEP if self.total else float("inf")

    def check(self, made: int) -> None:
        self.next_check = self.bytes + self.STEP
        need = estimate(self.n) + self.bytes * self.n // max(made, 1)
        if need > self.total // 2:
            raise SpecError(
                f"n {self.n:,}: the records' texts are long (about {self.bytes // max(made, 1):,} bytes of text a "
                f"record in the first {made:,}), so generating this set needs about {need / GIB:.1f} GiB of memory, "
                f"more than half of this machine's {self.total / GIB:.1f} GiB; shorten the texts, lower n, or "
                "generate it in parts (several runs with other --seed and --out values, then concatenate)")
