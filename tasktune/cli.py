"""The `tasktune` console entry point: one parser, one subcommand per pipeline stage.

Subcommand modules expose `register(subparsers)`; they import heavy libraries (torch,
transformers) only inside their handlers, so `tasktune --help` and `tasktune data` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tasktune import __version__
from tasktune.errors import TaskTuneError

# (module, purpose) in pipeline order; each module defines register(subparsers).
COMMAND_MODULES = [
    "tasktune.datagen.cli",
    "tasktune.tuning.cli",
    "tasktune.serve.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasktune",
        description=(
            "Turn a small task spec into a task-specific assistant: generate noisy, split, "
            "schema-checked training data from Jinja templates, then P-tune (v2) a frozen, "
            "4-bit causal LM and compare base vs tuned answers."
        ),
        epilog="Run `tasktune COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"tasktune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a half-installed checkout: say which part is missing
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TaskTuneError as exc:
        print(f"tasktune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tasktune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
