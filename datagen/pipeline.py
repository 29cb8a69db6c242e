"""The generation pipeline: expand -> split -> noise -> ChatGLM records -> validate -> stats."""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable

from tasktune.datagen.expand import expand
from tasktune.datagen.formats import to_chatglm
from tasktune.datagen.noise import apply_noise
from tasktune.datagen.render import MAX_TEXT
from tasktune.datagen.spec import TaskSpec, load_spec
from tasktune.datagen.split import split
from tasktune.datagen.stats import StatsCounter
from tasktune.datagen.validate import validate_records
from tasktune.errors import SpecError


@dataclass
class Splits:
    """Train and dev ChatGLM records (with `meta`), validated, plus the dataset statistics."""

    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def generate(spec_or_path: TaskSpec | str | Path, *, seed: int, n: int | None = None,
             progress: Callable[[int], Any] | None = None) -> Splits:
    """Expand, split, noise and validate a spec. Same spec + seed + n gives identical records.

    `progress(k)` (optional) is called as examples are made, e.g. a tqdm bar's `update`.
    """
    spec = spec_or_path if isinstance(spec_or_path, TaskSpec) else load_spec(spec_or_path)
    collecting = gc.isenabled()
    gc.disable()  # ~25% faster: many small objects, few cycles (collected once gc is back on)
    try:
        return _generate(spec, seed, n, progress)
    finally:
        if collecting:
            gc.enable()


_CONTENT = itemgetter("content")
_CHUNK = 256  # examples made into records, checked and counted at a time: while they are in the CPU's cache


def _check_prompt_lengths(records: list[dict[str, Any]], spec: TaskSpec) -> None:
    """SpecError for a record whose prompt (content after its history) is longer than `tasktune train` and `eval`
    accept (tuning/templating.py `check_prompt_text`: render.MAX_TEXT characters): a pattern and a content may each
    build that much, and a chain's turns add up, so such records were written with exit 0 and refused when read."""
    for record in records:
        content, history = len(record["content"]), sum(len(q) + len(a) for q, a in record["history"])
        if content + history > MAX_TEXT:
            meta = record["meta"]
            chain = f" in the chain {' -> '.join(meta['chain'])}" if meta.get("chain") else ""
            noised = " after noise" if meta["noise"] else ""
            raise SpecError(f"{spec.step(meta['step']).where}: template {meta['template']}{chain} gives a prompt of "
                            f"{content + history:,} characters{noised} (content {content:,}"
                            + (f", history {history:,}" if history else "") + f"), over the {MAX_TEXT:,} that "
                            "`tasktune train` and `eval` accept (they refuse such a record); shorten the pattern, "
                            "the content or the slot values" + (" (or the chain)" if chain else ""))


def _records(examples: list, where: str, side: str, counter: StatsCounter,
             spec: TaskSpec) -> list[dict[str, Any]]:
    """The ChatGLM record of every example, each checked against the output schema; counted for the stats."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start:start + _CHUNK]
        records = list(map(to_chatglm, chunk))
        validate_records(records, "chatglm", where, start=start)
        _check_prompt_lengths(records, spec)
        counter.add(side, chunk, list(map(_CONTENT, records)))
        out += records
    return out


def _generate(spec: TaskSpec, seed: int, n: int | None, progress: Callable[[int], Any] | None) -> Splits:
    rng = random.Random(seed)  # the only source of randomness, passed down in data-flow order
    warnings: list[str] = []
    examples = expand(spec, rng, n, warnings, progress)
    train, dev = split(examples, spec.split, rng, warnings)
    for side, part in (("train", train), ("dev", dev)):
        if side in spec.noise.splits:
            apply_noise(part, spec.noise, rng)
    counter = StatsCounter()
    records = {side: _records(part, f"{spec.path}: {side}: ", side, counter, spec)
               for side, part in (("train", train), ("dev", dev))}
    stats = counter.result(seed=seed, spec_name=spec.name, warnings=warnings)
    return Splits(records["train"], records["dev"], stats)
