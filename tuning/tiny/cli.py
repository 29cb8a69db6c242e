"""`tasktune tiny-model`'s flags and handler (wired by tuning/cli.py): TinyConfig's fields that name a flag
(tiny/config.py `_opt`) become the flags, as TrainConfig's become `tasktune train`'s; --spec, --out and --device
are the build's own arguments."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

from tasktune.flags import check_output_folder
from tasktune.runlock import sigterm_as_interrupt
from tasktune.tuning.config import DEFAULT_MODEL
from tasktune.tuning.tiny.build import build_tiny_model
from tasktune.tuning.tiny.config import TinyConfig


def _flagged() -> list:
    """TinyConfig's fields that are flags, in field order."""
    return [f for f in fields(TinyConfig) if "flag" in f.metadata]


def _dest(f) -> str:
    """The argparse attribute of a field's flag (`--kv-heads` -> kv_heads)."""
    return f.metadata["flag"][2:].replace("-", "_")


def add_arguments(parser) -> None:
    """The `tasktune tiny-model` options."""
    parser.add_argument("--spec", default="grid",
                        help="task spec whose text the model learns: a YAML path or a built-in name (default: grid)")
    parser.add_argument("--out", default=Path(DEFAULT_MODEL), type=Path, help="output model folder")
    for f in _flagged():
        flag, help_text = f.metadata["flag"], f.metadata["help"]
        if f.metadata.get("action") == "store_true":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=f.metadata["type"], default=f.default, help=help_text)
    parser.add_argument("--device", default="cpu", type=_device,
                        help="where to pre-train: cpu (bit-reproducible for a seed) or cuda (faster, not bit-identical)")


def _device(text: str) -> str:
    """argparse `type=` for --device: cpu, cuda or cuda:N (refused with the flag named, not a torch traceback)."""
    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", text.strip()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text.strip()


def run(args) -> int:
    """Handler for `tasktune tiny-model`."""
    if args.out.name in ("", ".."):  # `--out ""` (Path(".")), `/`, `..`: "has an empty name" after the build
        from tasktune.errors import ConfigError

        raise ConfigError(f"--out {str(args.out)!r}: give the model folder a name (e.g. models/tiny-glm)")
    check_output_folder(args.out, "--out")
    values = {f.name: getattr(args, _dest(f)) for f in _flagged()}
    # the LR warm-up scales with a short run: a tenth of the steps, at most the default
    values["warmup_steps"] = min(TinyConfig.warmup_steps, max(1, values["pretrain_steps"] // 10))
    cfg = TinyConfig(**values)
    with sigterm_as_interrupt():  # SIGTERM takes Ctrl-C's path: the staging folder is removed, exit 143
        out = build_tiny_model(args.spec, args.out, seed=args.seed, config=cfg, device=args.device)
    print(f"wrote {out}")
    return 0
