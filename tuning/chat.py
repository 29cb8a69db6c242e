"""`tasktune chat RUN_DIR`: an interactive prompt with the tuned (or, with --base, the base) model."""

from __future__ import annotations

import sys
from pathlib import Path


def load_for_chat(run_dir: str | Path):
    """The run's base model with its adapter attached, its tokenizer, tuner and training config."""
    from tuning.eval import _device_map, check_run_dir
    from tuning.load import load_model, load_tokenizer
    from tuning.save import load_adapter
    from tuning.train import load_run_record

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    record = load_run_record(run_dir)
    cfg = record["config"]
    tokenizer = load_tokenizer(cfg["model"], trust_remote_code=cfg.get("trust_remote_code", False),
                               padding_side="left")
    quant = record.get("quantization")
    model = load_model(cfg["model"], quantization_bit=quant, trust_remote_code=cfg.get("trust_remote_code", False),
                       allow_pickle=cfg.get("allow_pickle", False), device_map=_device_map(quant))
    tuner = load_adapter(model, run_dir)
    model.eval()
    return model, tokenizer, tuner, cfg


def chat(run_dir: str | Path, *, base: bool = False, max_new_tokens: int = 128, keep_history: bool = True,
         stdin=None, stdout=None) -> list[tuple[str, str]]:
    """Read a line, answer it, repeat. Returns the (question, answer) turns (tests drive it with stdin)."""
    import contextlib

    from tuning.data import format_prompt
    from tuning.generate import generate_batched

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    model, tokenizer, tuner, cfg = load_for_chat(run_dir)
    who = "base" if base else "tuned"
    print(f"tasktune chat ({who} model, {cfg['model']}). Empty line or Ctrl-D quits; `clear` forgets history.",
          file=stdout)
    history: list[tuple[str, str]] = []
    turns: list[tuple[str, str]] = []
    while True:
        print("用户> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or not line.strip():
            break
        query = line.strip()
        if query == "clear":
            history.clear()
            continue
        prompt = format_prompt(tokenizer, query, [list(t) for t in history] if keep_history else None,
                               template=cfg["prompt_template"])
        context = tuner.disabled() if base else contextlib.nullcontext()
        with context:
            (answer,), _ = generate_batched(model, tokenizer, [prompt], batch_size=1, max_new_tokens=max_new_tokens,
                                            reserved_positions=tuner.config.pre_seq_len, progress=False)
        print(f"{who}> {answer}", file=stdout, flush=True)
        turns.append((query, answer))
        if keep_history:
            history.append((query, answer))
    return turns
