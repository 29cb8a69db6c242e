"""The engine's per-token text cost: the whole answer decoded again at every token (before) against
tuning/inference/detokenize.py's window (now), mean microseconds per token over answers of 64/256/1024 tokens.

    python benchmarks/detok_bench.py [--model templates/demo/tiny-glm]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "templates/demo/tiny-glm"),
                        help="a folder or hub id with the tokenizer")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from tasktune.tuning.inference.detokenize import IncrementalText

    tok = AutoTokenizer.from_pretrained(args.model)
    answer = tok("[人数检测] 应到47人, 实到34人, 有人缺勤。" * 80)["input_ids"]
    print("| answer tokens | whole decode per token (us) | window per token (us) |\n|---|---|---|")
    for n in (64, 256, 1024):
        start = time.perf_counter()
        for k in range(1, n + 1):
            tok.decode(answer[:k], skip_special_tokens=True)
        whole = (time.perf_counter() - start) / n * 1e6
        text, start = IncrementalText(tok), time.perf_counter()
        for k in range(1, n + 1):
            text.feed(answer[:k])
        window = (time.perf_counter() - start) / n * 1e6
        print(f"| {n} | {whole:.1f} | {window:.1f} |")


if __name__ == "__main__":
    main()
