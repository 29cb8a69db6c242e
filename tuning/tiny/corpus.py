"""The tiny model's pre-training text: unpaired documents from a spec's *train* records (contents, summaries,
reading skills, paraphrase and answer pairs, copy strings), never a request followed by its answer, and the text
its tokenizer is trained on.

The reading documents (a question answered by itself echoed, by its numbers, or by the slot words it names) are
what let a prefix pull values out of the question (benchmarks/copy_probe.py: a place at the first mention in an
answer 0/60 without them, 51/60 with them); chained over two or three rounds of ChatGLM's multi-round frame they
let it answer whole dialogues (benchmarks/tiny_sweep.py).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tasktune.errors import ConfigError
from tasktune.tuning.tiny.config import FRAME_TEXT

SPEC_SUFFIXES = {".yaml", ".yml", ".txt", ".jinja", ".j2", ".json", ".md"}


@dataclass
class Corpus:
    """Unpaired pre-training documents and the text the tokenizer is trained on."""

    documents: list[tuple[str, bool]]
    """(text, ends with eos): a framed prompt stays open after "答：" so the base model learns no answer."""
    tokenizer_text: list[str]
    words: list[str] = field(default_factory=list)
    """Slot values (places, check types) that become whole tokens: the same token ids in the prompt and
    in the answer, so copying them is one step (BPE merges would split "在邹城的" as "在邹|城的")."""
    copies: list[tuple[str, bool]] = field(default_factory=list)
    """The copy strings alone (also inside `documents`): the copy warm-up trains on these."""


def generate_records(spec_path: Path, seed: int, n: int | None) -> tuple[list[dict], list[dict]]:
    """(train, dev) records from the data generator's Python API."""
    try:
        from tasktune.datagen import generate
    except ImportError as exc:
        raise ConfigError(f"tiny-model needs the data generator (datagen.generate): {exc}") from None
    splits = generate(spec_path, seed=seed, **({"n": n} if n else {}))
    return list(splits.train), list(splits.dev)


def read_spec_text(spec_path: Path) -> list[str]:
    """The spec file and its sibling text files (templates, pools): the tokenizer must know their chars."""
    files = [spec_path] + sorted(
        p for p in spec_path.parent.rglob("*") if p.is_file() and p.suffix in SPEC_SUFFIXES and p != spec_path
    )
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def build_corpus(
    train: list[dict],
    dev: list[dict],
    spec_text: list[str],
    copy_docs: bool = False,
    skill_docs: bool = False,
    rng: random.Random | None = None,
    para_docs: bool = False,
    round_docs: float = 0.0,
    answer_pairs: bool = False,
    compare_docs: bool = False,
    number_docs: int = 0,
) -> Corpus:
    """Pre-training documents from the *train* records: each content (raw, and in the ChatGLM frame
    left open after "答："), each summary, as separate documents, never content -> summary.
    `copy_docs` adds, per record, a random string of domain pieces (slot words, digits, characters)
    written twice: repeated text teaches copying from context (induction), as in real corpora.
    `skill_docs` adds generic in-frame skills on the contents (answer = the question echoed, its
    numbers, its slot words): the base model learns to read the question, not the task.
    `para_docs` adds, per record, its content followed by the content of another record of the same step
    with the same slot values (meta.slots), when there is one: the same entity named twice.
    `round_docs` (a share of the records, with skill_docs) adds reading skills chained in the multi-round frame.
    `compare_docs` (with skill_docs) adds a numeracy skill on contents with two or more numbers: the question
    answered by each pair of neighbouring numbers and how they compare (`47与34: 大于`), never its task answer.
    `number_docs` adds that many plain numeracy documents over random pairs of numbers in the records' range (one
    relation in three equal), no frame, no task text (`number_pair_docs`).
    Dev text only feeds the tokenizer's alphabet."""
    from tasktune.tuning.data import format_prompt

    words = collect_slot_words(train + dev)
    rng = rng or random.Random(0)
    chars = sorted({ch for r in train for ch in r["content"] + r["summary"] if not ch.isspace()})
    pool = words + list("0123456789") + chars
    docs: list[tuple[str, bool]] = []  # (text, ends with eos)
    copies: list[tuple[str, bool]] = []
    skills: list[tuple[str, str]] = []  # (question, reading answer)
    for record in train:
        content, summary = record["content"], record["summary"]
        framed = format_prompt(None, content, template="chatglm")
        docs += [(content, True), (framed, False), (summary, True)]
        if copy_docs:
            pieces = copy_string(pool, rng)
            copies.append((f"{pieces}\n{pieces}", True))
        if skill_docs:
            readings = reading_answers(content, words) + (compare_answers(content) if compare_docs else [])
            docs += [(framed + answer, True) for answer in readings]
            skills += [(content, answer) for answer in readings]
    if skill_docs and round_docs > 0:
        docs += multi_round_docs(skills, round(round_docs * len(train)), rng)
    if para_docs:
        docs += paraphrase_docs(train, rng)
    if answer_pairs:
        docs += answer_pair_docs(train, words, rng)
    if number_docs:
        docs += number_pair_docs(train, number_docs, rng)
    seen: set = set()
    unique = [d for d in docs if not (d in seen or seen.add(d))]
    # the random copy strings stay out of the tokenizer's text: they would teach junk merges
    tok_text = [d for d, _ in unique] + [r[k] for r in dev for k in ("content", "summary")] + spec_text + [FRAME_TEXT]
    unique += copies
    return Corpus(unique, tok_text, words, copies)


def reading_answers(content: str, words: list[str]) -> list[str]:
    """What a reading skill answers to a question: the question echoed, its numbers, the slot words it names."""
    numbers = re.findall(r"\d+", content)
    found = [w for w in words if w in content]
    return [content] + ([" ".join(numbers)] if numbers else []) + ([", ".join(found)] if found else [])


def compare_answers(content: str) -> list[str]:
    """What the numeracy skill answers to a question with two or more numbers: its neighbouring numbers in order
    and how the first compares to the second, one pair a line (`47与34: 大于`); none for fewer numbers."""
    numbers = [int(n) for n in re.findall(r"\d+", content)]
    if len(numbers) < 2:
        return []
    relation = lambda a, b: "大于" if a > b else "小于" if a < b else "等于"  # noqa: E731
    return ["\n".join(f"{a}与{b}: {relation(a, b)}" for a, b in zip(numbers, numbers[1:]))]


def number_pair_docs(records: list[dict], n: int, rng: random.Random) -> list[tuple[str, bool]]:
    """n documents of 4 to 8 lines `a与b: 关系` over random numbers up to the largest in the records' text, each
    relation equally likely (the neighbouring pairs of compare_answers are rarely equal) and the unequal ones
    mostly near misses (b within 10 of a), as a count checked against another is: generic numeracy, no task text."""
    top = max([int(n) for r in records for n in re.findall(r"\d+", r["content"] + r["summary"])] + [9])
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(4, 8)):
            a, relation = rng.randint(0, top), rng.choice(["大于", "小于", "等于"])
            step = rng.randint(1, 10) if rng.random() < 0.7 else rng.randint(1, top)
            b = a if relation == "等于" else a - step if relation == "大于" else a + step
            if not 0 <= b <= top:
                b, relation = a, "等于"
            lines.append(f"{a}与{b}: {relation}")
        docs.append(("\n".join(lines), True))
    return docs


def multi_round_docs(skills: list[tuple[str, str]], n: int, rng: random.Random) -> list[tuple[str, bool]]:
    """n dialogues of 2 or 3 rounds in the ChatGLM frame, each round a random (question, reading answer)."""
    from tasktune.tuning.data import format_prompt

    docs = []
    for _ in range(n if skills else 0):
        rounds = [rng.choice(skills) for _ in range(rng.randint(2, 3))]
        (query, answer), history = rounds[-1], rounds[:-1]
        docs.append((format_prompt(None, query, history, template="chatglm") + answer, True))
    return docs


def copy_string(pool: list[str], rng: random.Random) -> str:
    """4 to 12 random pieces of `pool` joined: what a copy document writes twice."""
    return "".join(rng.choice(pool) for _ in range(rng.randint(4, 12)))


def paraphrase_docs(records: list[dict], rng: random.Random) -> list[tuple[str, bool]]:
    """Per record: its content, a newline, and the content of another record of the same step whose slot
    values are all equal (datagen's meta.step / meta.slots); records without a twin add nothing."""
    groups: dict[str, list[str]] = {}
    for record in records:
        meta = record.get("meta") or {}
        if meta.get("slots"):
            key = json.dumps([meta.get("step"), meta["slots"]], sort_keys=True, ensure_ascii=False)
            groups.setdefault(key, []).append(record["content"])
    docs = []
    for key in sorted(groups):
        contents = groups[key]
        for content in contents:
            others = [c for c in contents if c != content]
            if others:
                docs.append((f"{content}\n{rng.choice(others)}", True))
    return docs


def answer_pair_docs(records: list[dict], words: list[str], rng: random.Random) -> list[tuple[str, bool]]:
    """Per record: its answer, a newline, and a different answer of the same step that names one of the same
    slot words (the rarest one it names: a place before a check type) and the same numbers, if any (answers
    whose numbers differ would teach that a number is not repeated: measured, the P-tuned summaries then miscopy
    their numbers); records without such a twin add nothing."""
    words = set(words)
    groups: dict[tuple, set[str]] = {}
    keys_of: list[list[tuple]] = []
    for record in records:
        meta = record.get("meta") or {}
        summary = record["summary"]
        numbers = tuple(re.findall(r"\d+", summary))  # a pair never contradicts a number: same numbers or none
        keys = [(meta.get("step"), numbers, v) for v in (meta.get("slots") or {}).values()
                if isinstance(v, str) and v in words and v in summary]
        for key in keys:
            groups.setdefault(key, set()).add(summary)
        keys_of.append(keys)
    docs = []
    for record, keys in zip(records, keys_of):
        # the rarest shared word (a place rather than a check type): the pair then repeats a specific entity
        for key in sorted(keys, key=lambda k: (len(groups[k]), k[2])):
            options = sorted(groups[key] - {record["summary"]})
            if options:
                docs.append((f"{record['summary']}\n{rng.choice(options)}", True))
                break
    return docs


def collect_slot_words(records: list[dict]) -> list[str]:
    """String slot values (datagen's meta.slots) of two or more characters that occur in the records' text."""
    text = "\n".join(r.get("content", "") + "\n" + r.get("summary", "") for r in records)
    words = {
        value
        for record in records
        for value in ((record.get("meta") or {}).get("slots") or {}).values()
        if isinstance(value, str) and len(value) >= 2 and not value.isdigit()
    }
    words = {w for w in words if w in text}
    return sorted(words)
