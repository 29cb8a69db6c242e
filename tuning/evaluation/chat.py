"""`tasktune chat RUN_DIR`: an interactive prompt with the tuned (or, with --base, the base) model."""

from __future__ import annotations

import sys
from pathlib import Path

from tasktune.errors import DataError


def load_for_chat(run_dir: str | Path, trust=None):
    """The run as an Assistant (its model with the adapter on, any method; --base switches the adapter off);
    `trust`: tuning/run.py's Trust (default: nothing)."""
    from tasktune.tuning.inference.assistant import Assistant

    return Assistant.from_run(run_dir, batching="generate", trust=trust)


def chat(run_dir: str | Path, *, base: bool = False, max_new_tokens: int = 128, keep_history: bool = True,
         stdin=None, stdout=None, trust=None) -> list[tuple[str, str]]:
    """Read a line, answer it, repeat. Returns the (question, answer) turns (tests drive it with stdin).
    Ctrl-C ends the chat like Ctrl-D; a line that is not UTF-8 gets a note and is skipped."""
    from tasktune.errors import ConfigError

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if stdin is None or stdin.closed:  # `tasktune chat RUN <&-`: say so before loading a model
        raise ConfigError("chat: standard input is closed, so there is nothing to answer; run it in a terminal or "
                          "pipe the questions in (one a line)")
    bot = load_for_chat(run_dir, trust)
    from tasktune.tuning.model.generate import prompt_room

    adapter = bot.run.adapter  # an answer cap the window cannot hold is said now, not at the first line typed
    prompt_room(adapter.model, max_new_tokens, 0 if base else adapter.reserved_positions)
    who = "base" if base else "tuned"
    print(f"tasktune chat ({who} model, {bot.run.config.model}). Type each line as the run's data writes its "
          "prompts (a record's `content`, frame included: the model was tuned on that frame; `tasktune serve` frames "
          "plain text for you). Empty line or Ctrl-D quits; `clear` forgets history.", file=stdout)
    turns: list[tuple[str, str]] = []
    try:
        _converse(stdin, stdout, bot, who=who, base=base, max_new_tokens=max_new_tokens,
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


def _converse(stdin, stdout, bot, *, who: str, base: bool, max_new_tokens: int, keep_history: bool,
              turns: list[tuple[str, str]]) -> None:
    from tasktune.tuning.templating import PromptTooLong, check_prompt_text

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
        # framed and cut as training framed and cut it (the Assistant does both)
        try:
            check_prompt_text(query, history if keep_history else [], "the prompt of that line",
                              ("the line", "the history before it"),
                              "type a shorter one" + (", or `clear` the history" if history else ""))
            (answer,) = bot.answer([query], history=[history if keep_history else []],
                                   max_new_tokens=max_new_tokens, base=base)
        except PromptTooLong as exc:  # this line (and the history), not the session
            print(f"({exc})", file=stdout, flush=True)
            continue
        except DataError as exc:  # the prompt template refused it: this line, not the session
            print(f"(that line cannot be framed: {exc}; type a shorter one, or `clear` the history)", file=stdout,
                  flush=True)
            continue
        print(f"{who}> {answer}", file=stdout, flush=True)
        turns.append((query, answer))
        if keep_history:
            history.append((query, answer))
