"""Does a base model compare the counts of a question? (issue 22: the summaries' verdicts)

The numeracy skill of the tiny base's documents (`47与34: 大于`, tuning/tiny/corpus.py `compare_answers`), probed
teacher-forced on the single-round summary questions of a data set: after the framed question and `A与B: `, is the
right relation (大于 / 小于 / 等于) the top of the three? Printed per check type, pair and relation, for the train and
the dev split (first N questions of each). The verdicts the P-tuned summaries get wrong are mostly equal counts
(应到 = 实到, 实到 = 佩戴); a base that cannot say 等于 there gives the prefix nothing to read.

    python benchmarks/compare_probe.py MODEL [--data data/grid] [--limit 300]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RELATIONS = ["大于", "小于", "等于"]


def probe(model, tokenizer, records: list[dict]) -> collections.Counter:
    """(check type, pair index, relation) -> [right, total] over the records' neighbouring number pairs."""
    import torch

    from tasktune.tuning.data import format_prompt
    from tasktune.tuning.tiny.corpus import compare_answers

    ids_of = [tokenizer.encode(r, add_special_tokens=False)[0] for r in RELATIONS]
    counts: dict[tuple, list[int]] = collections.defaultdict(lambda: [0, 0])
    for record in records:
        kind = re.search(r"任务类型#(\S+)", record["content"]).group(1)
        text = format_prompt(None, record["content"], template="chatglm")
        for i, line in enumerate(compare_answers(record["content"])[0].split("\n")):
            head, relation = line.split(": ")
            ids = tokenizer(text + head + ": ", return_tensors="pt").input_ids
            with torch.no_grad():
                logits = model(ids).logits[0, -1, ids_of]
            counts[(kind, i, relation)][0] += RELATIONS[int(logits.argmax())] == relation
            counts[(kind, i, relation)][1] += 1
            text += line + "\n"
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", default="data/grid")
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    for split in ("train", "dev"):
        rows = json.loads((Path(args.data) / f"{split}.json").read_text(encoding="utf-8"))
        rows = [r for r in rows if r["content"].startswith("步骤#基于函数调用结果进行总结") and not r.get("history")]
        counts = probe(model, tokenizer, rows[: args.limit])
        right, total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
        print(f"| {split} | all pairs | {right}/{total} |")
        for (kind, i, relation), (r, n) in sorted(counts.items()):
            print(f"| {split} | {kind}, pair {i + 1}, {relation} | {r}/{n} |")


if __name__ == "__main__":
    main()
