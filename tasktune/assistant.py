"""`Assistant`: answer prompts with trained runs from Python. Several runs share one loaded base (their
prefixes are batched together by tasktune.serve's engine, as the server does); greedy answers equal eval's.

    bot = tasktune.Assistant.from_run("runs/grid", "runs/home")   # one base, two prefixes
    bot.answer(["步骤#问候*语音#你好"], run="grid")
    bot.close()
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

from tasktune.errors import ConfigError


class Assistant:
    def __init__(self, bank, *, max_batch_size: int = 16):
        from tasktune.serve.engine import Engine

        self.bank = bank
        self.engine = Engine(bank, max_batch_size=max_batch_size).start()

    @classmethod
    def from_run(cls, *run_dirs: str | Path, max_batch_size: int = 16) -> "Assistant":
        """Load the runs' shared base once and put every run's prefix on it (runs are named by folder name)."""
        from tasktune.serve.bank import load_bank

        if not run_dirs:
            raise ConfigError("Assistant.from_run: give at least one run folder")
        return cls(load_bank([(None, path) for path in run_dirs]), max_batch_size=max_batch_size)

    @property
    def runs(self) -> list[str]:
        return list(self.bank.runs)

    def answer(self, prompts: Sequence[str], *, run: str | None = None,
               history: Sequence[Sequence[Sequence[str]]] | None = None, max_new_tokens: int | None = None,
               base: bool = False) -> list[str]:
        """Greedy answers to `prompts` (formatted as the run was trained) from `run` (default: the only/first
        run), or from the base model with `base=True`. `history`: per prompt, earlier [query, answer] pairs."""
        from tasktune.serve.engine import Request, SamplingParams
        from tasktune.tuning.data import encode_prompts, format_prompt

        name = run or self.runs[0]
        if name not in self.bank.runs:
            raise ConfigError(f"unknown run {name!r}; this assistant has {', '.join(self.runs)}")
        served = self.bank.runs[name]
        tok = self.bank.tokenizer
        history = history or [[] for _ in prompts]
        texts = [format_prompt(tok, q, list(h), template=served.prompt_template) for q, h in zip(prompts, history)]
        ids = [row[-served.max_source_length:] for row in encode_prompts(tok, texts, served.prompt_template)]
        params = SamplingParams(max_new_tokens=max_new_tokens or served.max_target_length)
        done = [threading.Event() for _ in ids]
        answers = [""] * len(ids)

        def emitter(i):
            def emit(event):
                if event.finish_reason:
                    answers[i] = (event.full_text or "").strip() if event.finish_reason != "error" else ""
                    if event.finish_reason == "error":
                        answers[i] = RuntimeError(event.error)
                    done[i].set()
            return emit

        for i, row in enumerate(ids):
            self.engine.submit(Request(row, None if base else name, params, emitter(i)))
        for event in done:
            event.wait()
        for a in answers:
            if isinstance(a, Exception):
                raise a
        return answers

    def close(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> "Assistant":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
