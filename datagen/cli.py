"""`tasktune data`: spec -> train/dev files, dataset_info.json, stats.json and a printed table."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from tasktune.datagen.formats import FORMATS, check_format
from tasktune.flags import COUNT, SEED, check_can_write, check_output_folder
from tasktune.runlock import raise_if_terminated, sigterm_as_interrupt

DESCRIPTION = """\
Generate train/dev data from a task spec (YAML + Jinja templates; see docs/spec.md).

The spec is checked against schemas/spec.schema.json before anything is rendered. Each step's
content templates are filled with slot values and framed by the step's pattern; speech-recognition
noise (mask / homophone / delete / insert) is added to the spoken part only, in the splits the spec
names. Writes DIR/train.json and DIR/dev.json (ChatGLM content/summary records by default),
DIR/dataset_info.json (LLaMA-Factory) and DIR/stats.json as one set: all are written into a staging
folder beside DIR first, then moved in together (a new DIR appears in one rename), so an interrupted
run leaves the old complete set or the new one; other files in DIR are left alone. The same spec,
seed and N always give byte-identical files.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data", help="generate noisy, split, schema-checked train/dev data from a task spec",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples: tasktune data grid --out data/grid --seed 42\n"
               "          tasktune data my/spec.yaml --out data/mine",
    )
    p.add_argument("spec", metavar="SPEC", help="task spec: a SPEC.yaml path, or a built-in spec's name (grid, "
                                                  "smarthome; `tasktune specs` lists them)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--seed", type=SEED, default=None,
                   help="random seed (default: the spec's `seed`, else a fresh one, printed)")
    p.add_argument("--n", type=COUNT, default=None, metavar="N",
                   help="total records, train + dev, N >= 1 (default: the spec's `n`)")
    p.add_argument("--format", choices=FORMATS, default="chatglm",
                   help="chatglm: JSON array of {content, summary, history}; jsonl: the same, one a line; "
                        "alpaca / sharegpt: LLaMA-Factory layouts; classification: {text, label} for `label:` steps")
    p.add_argument("--no-meta", dest="meta", action="store_false",
                   help="drop each record's `meta` (step, template, slots, arguments, noise spans)")
    p.add_argument("--quiet", action="store_true", help="print only the files written (and any warnings, on stderr)")
    p.set_defaults(func=run)

    s = subparsers.add_parser("specs", help="list the built-in task specs (usable by name: tasktune data grid ...)",
                              description="List the task specs shipped with tasktune, with their steps and file.")
    s.set_defaults(func=list_specs)


def list_specs(args: argparse.Namespace) -> int:
    from tasktune.datagen.spec import builtin_specs, load_spec

    for name, path in builtin_specs().items():
        spec = load_spec(path)
        print(f"{name:<12} {len(spec.steps)} steps ({', '.join(s.name for s in spec.steps)}), n={spec.n}  {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    """`tasktune data`. SIGTERM (a scheduler stopping the job) is Ctrl-C's path: the staging folder is removed,
    nothing half-written is left, and the exit status is 143 (`tasktune.runlock.sigterm_as_interrupt`)."""
    with sigterm_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tasktune.datagen import budget, generate, load_spec, write_splits
    from tasktune.datagen.stats import format_table

    check_output_folder(args.out, "--out")
    check_can_write(Path(args.out).absolute().parent, f"--out {args.out}")  # the set is staged beside OUT
    spec = load_spec(args.spec)
    check_format(spec, args.format)  # before any work: a set no record of which fits the format
    seed = args.seed if args.seed is not None else spec.seed
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    print(f"tasktune data: spec {args.spec}, seed {seed}", file=sys.stderr)
    n = args.n or spec.n
    budget.check(n, "--n" if args.n else f"{spec.path}: n")  # before any work: refused when it cannot fit
    with tqdm(total=n, desc="generating", unit="rec", file=sys.stderr, disable=n < 20000 or args.quiet) as bar:
        splits = generate(spec, seed=seed, n=args.n, progress=bar.update)
    raise_if_terminated()  # (a SIGTERM whose raise something swallowed: stop before writing)
    paths = write_splits(splits, args.out, args.format, meta=args.meta)
    if not args.quiet:
        print(format_table(splits.stats))
    else:  # the table (which lists them) is not printed: the warnings still are, on stderr
        for warning in splits.stats["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
    for path in paths:
        print(f"wrote {path}")
    return 0
