"""Can a base model copy from its context? Three probes on a model folder (issue #3's tiny base):

1. random strings of the data's slot words and digits written twice ("X\\nX"): greedy next-token accuracy
   over the second copy;
2. argument answers of the training data cut before their second place mention ("…参数为"): does the
   model's top token equal the place named earlier in the same answer?
3. the framed request followed by the answer's first words ("…答：因为出现地名为"): does the model's top token
   equal the request's place? (What a prefix must bring out: the place comes from the question, not the answer.)

    python benchmarks/copy_probe.py models/tiny-glm [--data data/grid]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasktune.tuning.data import format_prompt
    from tasktune.tuning.tiny import collect_slot_words, copy_string

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", default="data/grid", type=Path)
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    train = json.loads((args.data / "train.json").read_text(encoding="utf-8"))
    rng = random.Random(1)
    pool = collect_slot_words(train) + list("0123456789")
    acc = []
    for _ in range(args.n):
        pieces = copy_string(pool, rng)
        ids = tok(pieces + "\n" + pieces, add_special_tokens=False)["input_ids"]
        half = len(tok(pieces, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            pred = model(input_ids=torch.tensor([ids])).logits[0, :-1].argmax(-1)
        target = torch.tensor(ids[1:])
        acc.append((pred[half + 1:] == target[half + 1:]).float().mean().item())
    print(f"random strings written twice: {sum(acc) / len(acc):.3f} of the second copy's tokens")
    rows = [r for r in train if (r.get("meta") or {}).get("step") == "arguments"][: args.n]

    def names_place(text: str, place: str) -> bool:
        """Is the model's top next token after `text` the place?"""
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            top = model(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item()
        return tok.decode([top]) == place

    hits = 0
    for r in rows:
        place = r["meta"]["arguments"]["place"]
        hits += names_place(r["summary"][: r["summary"].index("参数为" + place) + 3], place)
    print(f"second place mention in an argument answer: {hits}/{len(rows)}")
    hits = 0
    for r in rows:
        framed = format_prompt(None, r["content"], template="chatglm")
        hits += names_place(framed + "因为出现地名为", r["meta"]["arguments"]["place"])
    print(f"first place mention after the framed request: {hits}/{len(rows)}")


if __name__ == "__main__":
    main()
