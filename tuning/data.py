"""Training data: train/dev JSON(L) records -> prompt strings -> tokenized, label-masked examples.

Prompts use the tokenizer's chat template when it has one, else a Jinja frame from templates/prompts/.

Longer than 300 lines because reading records, framing them and tokenizing them are one pipeline over one
DataConfig, and each refusal (a record, a frame too long) is said where the record is still known.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasktune import TEMPLATES
from tasktune.errors import DataError
from tasktune.tuning import templating
from tasktune.tuning.rows import SURROGATE, check_unread_text, clean_history, clean_meta, layout_hint, read_rows

log = logging.getLogger(__name__)

#: -100 is the index that torch's cross-entropy ignores: prompt and padding positions get it.
IGNORE_INDEX = -100
PROMPT_TEMPLATES = TEMPLATES / "prompts"
#: Column holding each record's `meta` dict, serialized as JSON (its keys vary per record,
#: which Arrow schema inference cannot hold in one struct column).
META_COLUMN = "meta"


@dataclass
class DataConfig:
    """Which columns hold what, how long prompts/answers may be, and how prompts are framed."""

    prompt_column: str = "content"
    response_column: str = "summary"
    history_column: str = "history"
    max_source_length: int = 64
    """Prompt tokens kept; a longer prompt loses its *start* (the query and answer cue are at the end)."""
    max_target_length: int = 64
    """Answer tokens kept (before the eos token)."""
    prompt_template: str = "auto"
    """"auto" (chat template if the tokenizer has one, else chatglm), "chat", "chatglm",
    "human_assistant", or a path to a .jinja file (variables: query, history)."""

    def __post_init__(self) -> None:
        columns = {"--prompt-column": self.prompt_column, "--response-column": self.response_column,
                   "--history-column": self.history_column}
        if len(set(columns.values())) < len(columns):
            raise DataError("the data columns must differ: " + ", ".join(f"{k} {v}" for k, v in columns.items()))
        if self.max_source_length < 1 or self.max_target_length < 1:
            raise DataError(
                f"max_source_length/max_target_length must be >= 1, got "
                f"{self.max_source_length}/{self.max_target_length}"
            )


@dataclass
class TruncationReport:
    """How many examples lost tokens to the length limits (source and target counted separately)."""

    total: int
    source_truncated: int
    target_truncated: int
    source: str = "dataset"
    longest_source: int = 0  # tokens of the longest prompt / response, before cutting
    longest_target: int = 0

    def __str__(self) -> str:
        text = (f"{self.source}: {self.total} examples, {self.source_truncated} prompts truncated, "
                f"{self.target_truncated} responses truncated")
        fits = [f"{flag} {n}" for flag, n, cut in [("--max-source-length", self.longest_source, self.source_truncated),
                                                    ("--max-target-length", self.longest_target, self.target_truncated)]
                if cut and n]
        return text + (f" (keeping every token takes {' and '.join(fits)})" if fits else "")


# ---------------------------------------------------------------- loading


def resolve_split_file(path_or_dir: str | Path, split: str) -> Path:
    """`{split}.json` or `{split}.jsonl` in a data folder, or the file itself; DataError if neither."""
    path = Path(path_or_dir)
    if path.is_dir():
        found = [path / name for name in (f"{split}.json", f"{split}.jsonl") if (path / name).is_file()]
        if len(found) == 2:  # `tasktune data` into one folder in both formats leaves both: the older one is stale
            newer = max(found, key=lambda p: p.stat().st_mtime_ns)
            raise DataError(f"{path}: holds both {split}.json and {split}.jsonl (two data sets); give the file to use "
                            f"(the newer is {newer}) or remove the other")
        if found:
            return found[0]
        raise DataError(f"{path}: no {split}.json or {split}.jsonl in this folder")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    return path


def load_records(path_or_dir: str | Path, split: str = "train", cfg: DataConfig | None = None):
    """Read `split` (`{split}.json` array or `{split}.jsonl`) into a `datasets.Dataset`.

    Keeps only the prompt, response and history columns (history defaults to [] when absent)
    plus `meta` as a JSON string. `path_or_dir` is a data folder or one file.
    """
    from datasets import Dataset

    cfg = cfg or DataConfig()
    path = resolve_split_file(path_or_dir, split)
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no records")
    keep: dict[str, list] = {cfg.prompt_column: [], cfg.response_column: [], cfg.history_column: [], META_COLUMN: []}
    for i, row in enumerate(rows):
        where = f"{path}: record {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        for column in (cfg.prompt_column, cfg.response_column):
            if column not in row:
                raise DataError(f"{where}: no column {column!r} (has: {', '.join(sorted(row)) or 'none'})"
                                + layout_hint(row))
            if not isinstance(row[column], str):
                raise DataError(f"{where}: column {column!r} must be a string")
            if not row[column].strip():  # as `tasktune data`'s schema: nothing to ask or answer teaches nothing
                raise DataError(f"{where}: column {column!r} is empty")
            if SURROGATE.search(row[column]):  # "\ud800" in JSON: no tokenizer or file can take it
                raise DataError(f"{where}: column {column!r} holds a lone UTF-16 surrogate (not valid Unicode)")
            keep[column].append(row[column])
        check_unread_text(row, set(keep), where)
        keep[cfg.history_column].append(clean_history(row.get(cfg.history_column), where))
        names = (f"column {cfg.prompt_column!r}", f"column {cfg.history_column!r}")
        templating.check_prompt_text(keep[cfg.prompt_column][-1], keep[cfg.history_column][-1], f"{where}: its prompt",
                                     names, "shorten the record or leave it out")
        keep[META_COLUMN].append(json.dumps(clean_meta(row.get("meta"), where), ensure_ascii=False, sort_keys=True))
    ds = Dataset.from_dict(keep)
    ds.info.description = str(path)  # lets later errors name the file
    return ds


# ---------------------------------------------------------------- prompts


def _template_path(template: str) -> Path:
    if template in ("chatglm", "human_assistant"):
        return PROMPT_TEMPLATES / f"{template}.jinja"
    path = Path(template)
    if path.suffix == ".jinja" and not path.exists():
        raise DataError(f"prompt template {template!r}: no such .jinja file")
    if path.suffix == ".jinja" and path.exists() and not path.is_file():
        raise DataError(f"prompt template {template!r}: not a regular file (a folder, a FIFO or a device)")
    if path.suffix != ".jinja" or not path.is_file():
        raise DataError(
            f"prompt template {template!r}: expected auto, chat, chatglm, human_assistant or a .jinja file"
        )
    return path


def check_prompt_template(template: str) -> None:
    """DataError unless `template` names a prompt template: auto, chat, chatglm, human_assistant or a .jinja file."""
    if template not in ("auto", "chat"):
        _template_path(template)


def _uses_chat_template(tokenizer, template: str) -> bool:
    return template == "chat" or (template == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def group_by_length(items: list, length, batch: int, window: int = 16) -> list[list]:
    """`items` cut into batches of `batch` whose members have similar `length(item)`: each run of `window` batches
    is sorted by length before it is cut. The caller shuffles the batches (a padded batch costs its longest row)."""
    span = batch * window
    out = []
    for start in range(0, len(items), span):
        chunk = sorted(items[start:start + span], key=length)
        out += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    return out


def format_prompt(tokenizer, query: str, history: list | None = None, template: str = "auto") -> str:
    """The prompt text for `query` after `history` ([query, answer] pairs), ready for the answer. Text too long
    to frame is a DataError saying so (`templating.PromptTooLong`), not the template's refusal."""
    from tasktune.datagen.render import MAX_TEXT

    history = [list(turn) for turn in (history or [])]
    templating.check_prompt_text(query, history)
    try:
        return _frame(tokenizer, query, history, template)
    except templating.FrameTooLong as exc:  # text just under the bound, which the frame takes over it: its length
        lengths = templating.text_lengths(query, history)
        if sum(lengths) > MAX_TEXT // 2:
            raise templating.too_long("the prompt", lengths, ("query", "history"), f"its frame ({exc})") from None
        if not history:
            raise
        try:  # many short turns (5,000 of them): the frame's own text around each; else the template is at fault
            _frame(tokenizer, "", [], template)
        except templating.FrameTooLong:
            raise exc from None
        raise templating.too_long("the prompt", lengths, ("query", "history"),
                                  f"the template's own text around each of its {len(history) + 1:,} turns") from None


def _frame(tokenizer, query: str, history: list, template: str) -> str:
    if _uses_chat_template(tokenizer, template):  # = apply_chat_template's text, in the spec sandbox
        turns = [({"role": "user", "content": q}, {"role": "assistant", "content": a}) for q, a in history]
        return templating.render_chat(tokenizer, [m for turn in turns for m in turn] + [{"role": "user",
                                                                                           "content": query}])
    name = "chatglm" if template == "auto" else template
    return templating.render_frame(str(_template_path(name)), query=query, history=history)


def encode_prompts(tokenizer, prompts: list[str], template: str = "auto") -> list[list[int]]:
    """Token ids of prompts from `format_prompt(..., template)`, as training and generation both take them: a chat
    template writes its own bos/special tokens, a plain frame lets the tokenizer add them."""
    add_special = not _uses_chat_template(tokenizer, template)
    return tokenizer(prompts, add_special_tokens=add_special)["input_ids"]


def _prompts_of(ds, tokenizer, cfg: DataConfig) -> list[str]:
    """Each record's framed prompt; a record the template cannot frame (over render.MAX_TEXT) is named with its
    file and index (the template's error alone sent users to the template)."""
    try:  # the template itself first: a missing .jinja file was blamed on record 0
        check_prompt_template(cfg.prompt_template)
    except DataError as exc:
        raise DataError(f"prompt_template (--prompt-template): {exc}") from None
    prompts = []
    for i, (q, h) in enumerate(zip(ds[cfg.prompt_column], ds[cfg.history_column])):
        try:
            prompts.append(format_prompt(tokenizer, q, h, cfg.prompt_template))
        except DataError as exc:
            raise DataError(f"{ds.info.description or 'dataset'}: record {i}: {exc}") from None
    return prompts


def _check_columns(ds, cfg: DataConfig) -> str:
    source = ds.info.description or "dataset"
    for column in (cfg.prompt_column, cfg.response_column, cfg.history_column):
        if column not in ds.column_names:
            raise DataError(f"{source}: no column {column!r} (has: {', '.join(ds.column_names)})"
                            + layout_hint(ds.column_names))
    if len(ds) == 0:
        raise DataError(f"{source}: no records")
    return source


# ---------------------------------------------------------------- training


def tokenize_dataset(ds, tokenizer, cfg: DataConfig):
    """Tokenize for training: returns (Dataset[input_ids, labels], TruncationReport).

    input_ids = prompt ids (last `max_source_length`) + response ids (first `max_target_length`) + eos;
    labels are IGNORE_INDEX over the prompt so only the answer (and eos) is learned.
    """
    from datasets import Dataset

    source = _check_columns(ds, cfg)
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos token: answers could never end")
    prompt_ids = encode_prompts(tokenizer, _prompts_of(ds, tokenizer, cfg), cfg.prompt_template)
    answer_ids = tokenizer(list(ds[cfg.response_column]), add_special_tokens=False)["input_ids"]
    input_ids, labels = [], []
    src_cut = tgt_cut = 0
    for p, a in zip(prompt_ids, answer_ids):
        if len(p) > cfg.max_source_length:
            src_cut += 1
            p = p[-cfg.max_source_length:]
        if len(a) > cfg.max_target_length:
            tgt_cut += 1
            a = a[: cfg.max_target_length]
        a = a + [tokenizer.eos_token_id]
        input_ids.append(p + a)
        labels.append([IGNORE_INDEX] * len(p) + a)
    report = TruncationReport(len(input_ids), src_cut, tgt_cut, source, max(map(len, prompt_ids), default=0),
                              max(map(len, answer_ids), default=0))
    log.info("%s", report)
    if tgt_cut == len(input_ids):
        raise DataError(
            f"{source}: every response in column {cfg.response_column!r} is longer than "
            f"max_target_length={cfg.max_target_length} tokens; raise it"
        )
    if src_cut == len(input_ids):
        raise DataError(
            f"{source}: every prompt in column {cfg.prompt_column!r} is longer than "
            f"max_source_length={cfg.max_source_length} tokens; raise it"
        )
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels}), report


def make_collator(tokenizer, pad_to_multiple_of: int | None = None):
    """A collator that right-pads input_ids (pad id), attention_mask (0) and labels (IGNORE_INDEX)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        ids, mask, labels = [], [], []
        for f in features:
            n = len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [pad_id] * (width - n))
            mask.append([1] * n + [0] * (width - n))
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * (width - n))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }

    return collate
