"""Does a base model know the count comparison of its own answers? (issue #3)

Teacher-forced on the unpaired 人数检测 answers ("[人数检测] 应到A人, 实到B人, <verdict>"), the share whose verdict
token is the model's top token after "实到B人, ", for the train and the dev records. With `--continue-steps N` the
model then goes on training as a plain LM on the distinct 人数检测 answers of a second generator run (`--seed`,
every dev answer left out) and the shares are printed every 500 steps (each 500 a fresh AdamW with its own warm-up
and decay, as `tuning/tiny/pretraining.py` runs them): can this base learn the comparison from unpaired answers, and how
many does it need? Nothing is written.

    python benchmarks/verdict_probe.py models/tiny-glm [--data data/grid] [--continue-steps 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEAD = "[人数检测]"


def verdict_share(model, tokenizer, records: list[dict]) -> float:
    """Share of single-round 人数检测 answers whose verdict's first token is the model's top token."""
    right = total = 0
    model.eval()
    for record in records:
        answer = record["summary"]
        if not answer.startswith(HEAD) or record.get("history"):
            continue
        head = answer.rsplit("人, ", 1)[0] + "人, "
        cut = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        right += int(logits[cut - 1].argmax().item() == ids[cut])
        total += 1
    return right / max(total, 1)


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasktune.datagen import generate
    from tasktune.tuning.tiny import TinyConfig, pretrain

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model folder (e.g. from `tasktune tiny-model`)")
    ap.add_argument("--data", default="data/grid", type=Path, help="folder with train.json / dev.json")
    ap.add_argument("--spec", default="templates/grid/spec.yaml", type=Path)
    ap.add_argument("--continue-steps", type=int, default=0, help="LM steps on extra answers (multiple of 500)")
    ap.add_argument("--seed", type=int, default=1001, help="seed of the generator run the extra answers come from")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.continue_steps % 500:
        ap.error("--continue-steps must be a multiple of 500")
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    train = json.loads((args.data / "train.json").read_text(encoding="utf-8"))
    dev = json.loads((args.data / "dev.json").read_text(encoding="utf-8"))
    rows = [(0, verdict_share(model, tokenizer, train), verdict_share(model, tokenizer, dev), "")]
    if args.continue_steps:
        held_out = {r["summary"] for r in dev}
        splits = generate(args.spec, seed=args.seed, n=20000)
        answers = sorted({r["summary"] for r in list(splits.train) + list(splits.dev)
                          if r["summary"].startswith(HEAD)} - held_out)
        for chunk in range(args.continue_steps // 500):
            cfg = TinyConfig(pretrain_steps=500, batch_size=32, lr=1e-3, warmup_steps=20, seed=chunk)
            loss = pretrain(model, tokenizer, [(a, True) for a in answers], cfg, progress=False)
            rows.append(((chunk + 1) * 500, verdict_share(model, tokenizer, train),
                         verdict_share(model, tokenizer, dev), f"{loss:.3f}"))
        print(f"\nextra answers: {len(answers)} distinct 人数检测 answers (seed {args.seed}, dev answers left out)")
    print(f"\n{args.model}: 人数检测 verdict right, teacher-forced\n")
    print("| LM steps on extra answers | train | dev | LM loss |")
    print("|---|---|---|---|")
    for steps, tr, dv, loss in rows:
        print(f"| {steps} | {tr:.3f} | {dv:.3f} | {loss} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
