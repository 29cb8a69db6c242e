"""Subcommands of the tuning half: tiny-model, train, eval, chat.

Heavy imports (torch, transformers) happen inside the handlers so `tasktune --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from tasktune.flags import (BATCH, COUNT, LEARNING_RATE, SEED, TOKENS, DefaultsHelpFormatter, Range, check_can_write,
                            check_output_folder)
from tasktune.tuning import tiny
from tasktune.tuning.config import METHODS, TASKS, TrainConfig, add_config_arguments, config_from_args
from tasktune.tuning.run import Trust


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tiny-model",
        help="build the embedded default: a small GLM + tokenizer trained on a spec's text",
        description=(
            "Build a small GLM-architecture causal LM (a few million parameters) and a tokenizer trained "
            "with `tokenizers` on the text a spec generates, then pre-train it briefly as a plain language "
            "model on UNPAIRED text (prompts and answers as separate documents). Like a real base model it "
            "writes fluent domain text but does not do the task; `tasktune train` teaches the task."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    tiny.add_arguments(p)
    p.set_defaults(func=tiny.run)

    p = sub.add_parser(
        "train",
        help="P-tune (v2) a frozen, optionally 4-bit, causal LM on train.json",
        description=(
            "Train pre_seq_len prefix key/values at every layer of a frozen causal LM (P-tuning v2). "
            "Every option is also a key of the --config YAML file; flags override the file. The run folder "
            "gets the adapter (PEFT format: PeftModel.from_pretrained(base, RUN) loads it), checkpoints, "
            "TensorBoard logs, loss.png and tasktune_run.json (what is needed to reproduce the run). "
            "Re-running the same command resumes from the last checkpoint; Ctrl-C saves one first."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    add_config_arguments(p, TrainConfig)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "eval",
        help="answer the dev set with the base and the tuned model; metrics + side-by-side report",
        description=(
            "Load the run's base model once and answer every dev prompt twice, greedily: with the adapter "
            "disabled (base) and enabled (tuned). Writes RUN/eval/report.md, report.html, metrics.json and "
            "predictions.jsonl (prompt/predict/label), and prints the metric table."
        ),
    )
    p.add_argument("run_dir", type=_run_folder, help="a run folder written by `tasktune train`")
    p.add_argument("--data", help="data folder or file (default: the one the run was trained on)")
    p.add_argument("--split", default="dev", help="which split to answer (default: dev)")
    p.add_argument("--limit", type=COUNT, help="answer only the first N records, N >= 1 (default: all)")
    p.add_argument("--batch-size", type=BATCH, default=16, help="prompts per generate() call (default: 16)")
    p.add_argument("--max-new-tokens", type=TOKENS,
                   help="answer length cap (default: the run's max_target_length)")
    Trust.add_flags(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "chat",
        help="talk to the tuned model (or --base) interactively",
        description="An interactive prompt with the tuned model; --base talks to the base model. "
                    "Empty line or Ctrl-D quits; `clear` forgets the history.",
    )
    p.add_argument("run_dir", type=_run_folder, help="a run folder written by `tasktune train`")
    p.add_argument("--base", action="store_true", help="answer with the adapter disabled")
    p.add_argument("--max-new-tokens", type=TOKENS, default=128, help="answer length cap (default: 128)")
    p.add_argument("--no-history", action="store_true", help="do not feed earlier turns back as history")
    Trust.add_flags(p)
    p.set_defaults(func=_chat)

    p = sub.add_parser(
        "compare",
        help="train + evaluate every tuning method on the same data and step budget; table + chart",
        description=(
            "Train each --method in turn (own subprocess) on the same data with the same number of steps, "
            "evaluate it on the dev set, and write OUT/compare.md, compare.png and compare.json: trainable "
            "parameters, checkpoint size, peak memory, seconds per step and dev metrics (base -> tuned)."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="base model folder or hub id (tiny model on CPU)")
    p.add_argument("--data", required=True, help="data folder with train/dev splits")
    p.add_argument("--out", default="runs/compare", help="output folder (one run folder per method inside)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to compare")
    p.add_argument("--task", default="causal-lm", choices=TASKS, help="causal-lm or classification")
    p.add_argument("--steps", type=COUNT, default=30, help="optimizer steps per method")
    p.add_argument("--batch-size", type=BATCH, default=4, help="micro-batch size")
    p.add_argument("--accumulation", type=TrainConfig.range_of("gradient_accumulation_steps"), default=1,
                   help="micro-batches per optimizer step")
    p.add_argument("--pre-seq-len", type=TrainConfig.range_of("pre_seq_len"), default=16,
                   help="prefix length / virtual tokens")
    p.add_argument("--limit", type=Range(int, 0, 10**9, note="0 = all"), default=30,
                   help="dev records to evaluate (0 = all)")
    p.add_argument("--max-new-tokens", type=TOKENS, default=48, help="answer length cap in eval")
    p.add_argument("--quantization-bit", default="auto", choices=("auto", "4", "8", "none"),
                   help="base quantization (qlora is always 4-bit, full never)")
    p.add_argument("--seed", type=SEED, default=42, help="seed shared by every method")
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR",
                   help="override one method's learning rate (repeatable)")
    p.set_defaults(func=_compare)


def _run_folder(text: str) -> str:
    """argparse `type=` for RUN_DIR: `eval ""` looked for a run in the current folder, `chat ""` named the Python
    API's parameter."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give the run folder `tasktune train --out` wrote")
    return text


def _train(args: argparse.Namespace) -> int:
    from tasktune.tuning.training.train import fit

    fit(config_from_args(args, TrainConfig))
    return 0


def _eval(args: argparse.Namespace) -> int:
    """SIGTERM takes Ctrl-C's path (exit 143, one line; a report file being written is left whole and its temporary
    file removed): it killed eval at once, with no word, leaving `.report.md.<random>.tmp` files behind."""
    from tasktune.runlock import sigterm_as_interrupt
    from tasktune.tuning.evaluation.eval import EvalConfig, evaluate

    with sigterm_as_interrupt():
        evaluate(EvalConfig(run_dir=args.run_dir, data=args.data, split=args.split, limit=args.limit,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from tasktune.tuning.evaluation.chat import chat

    chat(args.run_dir, base=args.base, max_new_tokens=args.max_new_tokens, keep_history=not args.no_history,
         trust=Trust.from_args(args))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from tasktune.errors import ConfigError
    from tasktune.tuning.evaluation.compare import CompareConfig, compare

    check_output_folder(args.out, "--out")
    check_can_write(args.out, f"--out {args.out}")
    rates = {}
    for item in args.lr:
        method, _, value = item.partition("=")
        if method.strip() in rates:  # the last one silently won
            raise ConfigError(f"--lr: method {method.strip()!r} given more than once; give each method one rate")
        try:
            rates[method.strip()] = LEARNING_RATE(value)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"--lr {item!r}: expected METHOD=NUMBER, the number {exc}") from None
        if method.strip() not in METHODS:
            raise ConfigError(f"--lr {item!r}: unknown method {method.strip()!r}; choose from {', '.join(METHODS)}")
    summary = compare(CompareConfig(model=args.model, data=args.data, out=args.out,
                          methods=[m.strip() for m in args.methods.split(",") if m.strip()], task=args.task,
                          steps=args.steps, batch_size=args.batch_size, accumulation=args.accumulation,
                          pre_seq_len=args.pre_seq_len, limit=args.limit, max_new_tokens=args.max_new_tokens,
                          quantization_bit=args.quantization_bit, seed=args.seed, learning_rates=rates))
    failed = [r["method"] for r in summary["results"] if "error" in r]
    if failed:  # a table of failures was exit 0 (`--data nosuch`: every row "failed")
        print(f"tasktune compare: {len(failed)} of {len(summary['results'])} method(s) failed: {', '.join(failed)} "
              f"(see {args.out}/compare.md)", file=sys.stderr)
        return 1
    return 0
