"""`tasktune chat RUN_DIR`: an interactive prompt with the tuned (or, with --base, the base) model."""

from __future__ import annotations

import sys
from pathlib import Path


def load_for_chat(run_dir: str | Path):
    """The run's model with its adapter on (`adapter.model`), its tokenizer, the Adapter and its TrainConfig."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.model.methods import load_run_adapter
    from tasktune.tuning.model.load import load_tokenizer
    from tasktune.tuning.model.load import base_source
    from tasktune.tuning.run import RunFolder

    run_dir = Path(run_dir)
    record = RunFolder(run_dir).record()
    cfg = record.config
    if cfg.task != "causal-lm":
        raise ConfigError(f"{run_dir}: a {cfg.task} run labels texts and cannot chat; use `tasktune eval`")
    tokenizer = load_tokenizer(base_source(cfg.model, run_dir), trust_remote_code=cfg.trust_remote_code,
                               padding_side="left")
    adapter = load_run_adapter(run_dir, record)
    return adapter.model, tokenizer, adapter, cfg


def chat(run_dir: str | Path, *, base: bool = False, max_new_tokens: int = 128, keep_history: bool = True,
         stdin=None, stdout=None) -> list[tuple[str, str]]:
    """Read a line, answer it, repeat. Returns the (question, answer) turns (tests drive it with stdin).
    Ctrl-C ends the chat like Ctrl-D; a line that is not UTF-8 gets a note and is skipped."""
    from tasktune.errors import ConfigError

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if stdin is None or stdin.closed:  # `tasktune chat RUN <&-`: say so before loading a model
        raise ConfigError("chat: standard input is closed, so there is nothing to answer; run it in a terminal or "
                          "pipe the questions in (one a line)")
    _, tokenizer, adapter, cfg = load_for_chat(run_dir)
    who = "base" if base else "tuned"
    print(f"tasktune chat ({who} model, {cfg.model}). Empty line or Ctrl-D quits; `clear` forgets history.",
          file=stdout)
    turns: list[tuple[str, str]] = []
    try:
        _converse(stdin, stdout, tokenizer, adapter, cfg, who=who, base=base, max_new_tokens=max_new_tokens,
                  keep_history=keep_history, turns=turns)
    except KeyboardInterrupt:  # Ctrl-C at the prompt or while answering: end the chat like Ctrl-D
        print(file=stdout, flush=True)
    return turns


def _read_line(stdin, stdout) -> str | None:
    """The next line as text; None at the end of input. A line that is not UTF-8 is answered with a note
    (and skipped, "" is returned), never a traceback."""
    raw = stdin.buffer.readline() if hasattr(stdin, "buffer") else stdin.readline()
    if not raw:
        return None
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        print(f"(that line is not UTF-8 text: byte {exc.start} is {raw[exc.start]:#04x}; type it again)",
              file=stdout, flush=True)
        return ""


def _converse(stdin, stdout, tokenizer, adapter, cfg, *, who: str, base: bool, max_new_tokens: int,
              keep_history: bool, turns: list[tuple[str, str]]) -> None:
    from tasktune.tuning.data import encode_prompts, format_prompt
    from tasktune.tuning.model.generate import generate_batched

    history: list[tuple[str, str]] = []
    while True:
        print("用户> ", end="", file=stdout, flush=True)
        line = _read_line(stdin, stdout)
        if line == "":
            continue
        if line is None or not line.strip():
            break
        query = line.strip()
        if query == "clear":
            history.clear()
            continue
        prompt = format_prompt(tokenizer, query, [list(t) for t in history] if keep_history else None,
                               template=cfg.prompt_template)
        (prompt,) = encode_prompts(tokenizer, [prompt], cfg.prompt_template)  # as training encoded it
        with _answering_model(adapter, base) as m:
            (answer,), _ = generate_batched(m, tokenizer, [prompt], batch_size=1, max_new_tokens=max_new_tokens,
                                            reserved_positions=adapter.reserved_positions, progress=False,
                                            max_prompt_tokens=cfg.max_source_length)  # as training cut
        print(f"{who}> {answer}", file=stdout, flush=True)
        turns.append((query, answer))
        if keep_history:
            history.append((query, answer))


def _answering_model(adapter, base: bool):
    """The tuned model, or (--base) the same model with the adapter off."""
    import contextlib

    return adapter.disabled() if base else contextlib.nullcontext(adapter.model)
