"""`Assistant`: answer prompts with trained runs, from Python, `tasktune eval`, `tasktune chat` and the server.

    bot = tasktune.Assistant.from_run("runs/grid", "runs/home")   # one base, two prefixes
    bot.answer(["步骤#问候*语音#你好"], run="grid")
    bot.close()

Two ways to answer, one interface:
- "engine" (prefix runs: ptuning-v2, prefix): the runs share one loaded base; each request row carries its run's
  key/value block and rows decode together with continuous batching (tuning/inference/engine.py), as the server does.
- "generate" (one run of any method): the run's model with its adapter on, answered in batches by
  `tuning.model.generate.generate_batched` (a static cache on CUDA), what eval and chat need: the whole dev split at
  once, and the base model by switching the adapter off.
`batching="auto"` takes the engine when every run is a prefix run and more than one is given, else generate.
Greedy answers are the same either way (tests/serve/test_assistant.py): prompts are formatted and cut as training
formatted and cut them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

from tasktune.errors import ConfigError
from tasktune.tuning.config import checked_arguments
from tasktune.tuning.run import Trust, split_run_name

BATCHING = ("auto", "engine", "generate")


class Assistant:
    def __init__(self, *, bank=None, run=None, max_batch_size: int = 16):
        """Use `from_run`. `bank`: a PrefixBank (engine); `run`: a _LoadedRun (generate)."""
        if bank is None and run is None:  # (it answered nothing: AttributeError on 'NoneType' at the first call)
            raise ConfigError("Assistant(): nothing to answer with; make one with Assistant.from_run(RUN_DIR)")
        self.bank, self.run = bank, run
        self.engine = None
        if bank is not None:
            from tasktune.tuning.inference.engine import Engine

            self.engine = Engine(bank, max_batch_size=max_batch_size).start()

    @classmethod
    @checked_arguments  # (a None run folder was a bare TypeError from pathlib)
    def from_run(cls, *run_dirs: str | Path, max_batch_size: int = 16, batching: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False,
                 trust: Trust | None = None) -> "Assistant":
        """Load the runs' base once and put every run on it; a run is named by its folder's name, or NAME=RUN_DIR
        (as `tasktune serve` takes it); see the module's doc for `batching`. `trust_remote_code`, `allow_pickle`
        (or a tuning/run.py `Trust`): what the base may run as it loads, as the CLI's flags (default: nothing)."""
        if not run_dirs:
            raise ConfigError("Assistant.from_run: give at least one run folder")
        if trust is not None and (trust_remote_code or allow_pickle):
            raise ConfigError("Assistant.from_run: give trust= or trust_remote_code=/allow_pickle=, not both")
        trust = trust or Trust(remote_code=trust_remote_code, pickle=allow_pickle)
        named = [split_run_name(item) for item in run_dirs]
        if batching not in BATCHING:
            raise ConfigError(f"Assistant.from_run: batching must be one of {', '.join(BATCHING)}, not {batching!r}")
        if batching == "auto":
            batching = "engine" if len(run_dirs) > 1 else "generate"
        if batching == "generate":
            if len(run_dirs) > 1:
                raise ConfigError("Assistant.from_run: batching='generate' answers with one run; give one folder, "
                                  "or prefix runs with batching='engine' to share a base")
            run = _LoadedRun.load(named[0][1], trust)
            run.name = named[0][0] or run.name
            return cls(run=run)
        from tasktune.tuning.inference.bank import load_bank

        return cls(bank=load_bank(named, trust=trust), max_batch_size=max_batch_size)

    @property
    def runs(self) -> list[str]:
        return list(self.bank.runs) if self.bank is not None else [self.run.name]

    @property
    def tokenizer(self):
        return self.bank.tokenizer if self.bank is not None else self.run.tokenizer

    def settings(self, run: str | None = None) -> Any:
        """How `run` formats and cuts prompts: .prompt_template, .max_source_length, .max_target_length."""
        name = self._name(run)
        return self.bank.runs[name] if self.bank is not None else self.run.config

    def encode(self, prompts: Sequence[str], *, run: str | None = None,
               history: Sequence[Sequence[Sequence[str]]] | None = None) -> tuple[list[str], list[list[int]]]:
        """(texts, token ids) of `prompts` framed as `run` was trained (`history`: per prompt, earlier
        [query, answer] pairs); the ids are what training saw (a chat template's bos once)."""
        from tasktune.tuning.data import encode_prompts, format_prompt

        self._check_open()
        prompts = _texts(prompts)
        settings = self.settings(run)
        if not prompts:
            return [], []
        history = _histories(history, len(prompts))
        texts = [format_prompt(self.tokenizer, q, [list(t) for t in h], template=settings.prompt_template)
                 for q, h in zip(prompts, history)]
        return texts, encode_prompts(self.tokenizer, texts, settings.prompt_template)

    def answer(self, prompts: Sequence[str], *, run: str | None = None,
               history: Sequence[Sequence[Sequence[str]]] | None = None, max_new_tokens: int | None = None,
               base: bool = False, progress: bool = False) -> list[str]:
        """Greedy answers to `prompts` (formatted as the run was trained) from `run` (default: the only/first
        run), or from the base model with `base=True`."""
        _, ids = self.encode(prompts, run=run, history=history)
        if not ids:
            return []
        answers, _ = self.generate(ids, run=run, max_new_tokens=max_new_tokens, base=base, progress=progress)
        return answers

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, run: str | None = None,
                 max_new_tokens: int | None = None, base: bool = False, batch_size: int = 16,
                 progress: bool = False, desc: str = "generate") -> tuple[list[str], int]:
        """Greedy answers to already encoded prompts (cut to the run's max_source_length, as training cut them).
        Returns (answers, how many prompts were cut further to fit the model's context)."""
        from tasktune.flags import BATCH, TOKENS

        self._check_open()
        settings = self.settings(run)
        TOKENS.check("max_new_tokens", max_new_tokens, optional=True)  # 0 or NaN fell back to the default
        BATCH.check("batch_size", batch_size)
        if not isinstance(base, bool):
            raise ConfigError(f"base: expected True or False, got {base!r}")  # "no" answered from the base
        prompt_ids = _id_rows(prompt_ids, len(self.tokenizer))
        max_new = max_new_tokens or settings.max_target_length
        if self.bank is None:
            return self.run.generate(prompt_ids, base=base, max_new_tokens=max_new, batch_size=batch_size,
                                     progress=progress, desc=desc)
        return self._engine_generate(prompt_ids, self._name(run), max_new, base)

    def close(self) -> None:
        self.closed = True
        if self.engine is not None:
            self.engine.shutdown()

    def _check_open(self) -> None:
        if getattr(self, "closed", False):  # the engine's thread is gone: a request would wait for ever
            raise ConfigError("this Assistant is closed; make a new one with Assistant.from_run(...)")

    def __enter__(self) -> "Assistant":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the two ways ------------------------------------------------------------------------------------------

    def _name(self, run: str | None) -> str:
        name = run or self.runs[0]
        if name not in self.runs:
            raise ConfigError(f"unknown run {name!r}; this assistant has {', '.join(self.runs)}")
        return name

    def _engine_generate(self, prompt_ids, name: str, max_new: int, base: bool) -> tuple[list[str], int]:
        """As `_LoadedRun.generate`: prompts cut as in training, then to what the context window leaves after the
        prefix (a run's text starts at position P) and the answer; returns (answers, how many were cut to fit)."""
        from tasktune.errors import ConfigError
        from tasktune.tuning.inference.engine import Request, SamplingParams

        served = self.bank.runs[name]
        rows = [list(row)[-served.max_source_length:] for row in prompt_ids]
        context, cut = self.bank.context, 0
        if context is not None:
            keep = context - (0 if base else served.pre_seq_len) - max_new
            if keep <= 0:
                raise ConfigError(f"--max-new-tokens {max_new} leaves no room for a prompt in the model's "
                                  f"{context}-position context (at most {keep + max_new - 1})")
            cut = sum(len(row) > keep for row in rows)
            rows = [row[-keep:] for row in rows]
        params = SamplingParams(max_new_tokens=max_new)
        done = [threading.Event() for _ in prompt_ids]
        answers: list[Any] = [""] * len(prompt_ids)

        def emitter(i):
            def emit(event):
                if event.finish_reason:
                    answers[i] = ((event.full_text or "").strip() if event.finish_reason != "error"
                                  else RuntimeError(event.error))
                    done[i].set()
            return emit

        for i, row in enumerate(rows):
            self.engine.submit(Request(row, None if base else name, params, emitter(i)))
        for event in done:
            event.wait()
        for a in answers:
            if isinstance(a, Exception):
                raise a
        return answers, cut


class _LoadedRun:
    """One run's model with its adapter on (any method), its tokenizer and its TrainConfig."""

    def __init__(self, name: str, run_dir: Path, record, tokenizer, adapter):
        self.name, self.run_dir, self.record, self.tokenizer, self.adapter = name, run_dir, record, tokenizer, adapter
        self.config = record.config

    @classmethod
    def load(cls, run_dir: str | Path, trust: Trust = Trust()) -> "_LoadedRun":
        from tasktune.tuning.model.load import base_source, load_tokenizer
        from tasktune.tuning.model.methods import load_run_adapter
        from tasktune.tuning.run import RunFolder

        run_dir = Path(run_dir)
        record = RunFolder(run_dir).record(task="causal-lm", refusal="{run}: a {task} run labels texts and cannot "
                                                                    "chat or answer prompts; use `tasktune eval`",
                                           trust=trust)
        cfg = record.config
        tokenizer = load_tokenizer(base_source(cfg.model, run_dir), trust_remote_code=cfg.trust_remote_code,
                                   padding_side="left")
        return cls(run_dir.name, run_dir, record, tokenizer, load_run_adapter(run_dir, record))

    def generate(self, prompt_ids, *, base: bool, max_new_tokens: int, batch_size: int, progress: bool,
                 desc: str) -> tuple[list[str], int]:
        import contextlib

        from tasktune.tuning.model.generate import generate_batched

        adapter = self.adapter
        with adapter.disabled() if base else contextlib.nullcontext(adapter.model) as model:
            return generate_batched(model, self.tokenizer, prompt_ids, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, reserved_positions=adapter.reserved_positions,
                                    progress=progress, desc=desc,
                                    max_prompt_tokens=self.config.max_source_length)  # prompts cut as in training


def _texts(prompts: Any) -> list[str]:
    """The prompts as a list of text: a single string was answered one character at a time."""
    from tasktune.errors import DataError
    from tasktune.tuning.rows import SURROGATE

    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise DataError(f"prompts: expected a list of strings, got {type(prompts).__name__}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DataError(f"prompts[{i}]: expected a string, got {type(prompt).__name__}")
        if SURROGATE.search(prompt):
            raise DataError(f"prompts[{i}]: holds a lone UTF-16 surrogate (not valid Unicode)")
    return list(prompts)


def _histories(history: Any, n: int) -> list[list[list[str]]]:
    """One history per prompt (earlier [query, answer] string pairs); None: none. zip() cut a shorter list."""
    from tasktune.errors import DataError

    if history is None:
        return [[] for _ in range(n)]
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence) or len(history) != n:
        raise DataError(f"history: expected a list of {n} histories (one per prompt), got "
                        f"{len(history) if isinstance(history, Sequence) else type(history).__name__}")
    for i, turns in enumerate(history):
        if not isinstance(turns, Sequence) or isinstance(turns, str) or not all(
                isinstance(t, Sequence) and not isinstance(t, str) and len(t) == 2
                and all(isinstance(x, str) for x in t) for t in turns):
            raise DataError(f"history[{i}]: expected a list of [query, answer] string pairs")
    return [[list(t) for t in turns] for turns in history]


def _id_rows(rows: Any, vocab: int) -> list[list[int]]:
    """Encoded prompts: non-empty lists of token ids in the vocabulary (an id outside it failed in the
    embedding with an IndexError; an empty row in a reshape)."""
    from tasktune.errors import DataError

    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise DataError("prompt_ids: expected a non-empty list of token id lists")
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or not row:
            raise DataError(f"prompt_ids[{i}]: expected a non-empty list of token ids")
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in row):
            raise DataError(f"prompt_ids[{i}]: token ids must be integers from 0 to {vocab - 1}")
        out.append(list(row))
    return out
