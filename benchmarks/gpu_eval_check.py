"""Issue 22's GPU gap: a run's greedy answers on the dev split, by generation variant, on whatever device this runs.

The demo's adapter trained on the CPU scores 100 / 100 / 89.8 % (greet / arguments / summaries) evaluated on the
CPU and 100 / 72 / 59 % evaluated on an H100 (gpu_run.sh gap22), and a GPU-trained one scores 100 / 100 / 90.7 % on
the CPU: the training is not what differs, the generation is. On CUDA, eval's generation differs from the CPU's in
the cache (static), transformers' automatic compile of the forward with a static cache (CUDA graphs), and sdpa's
kernels. The cause was then found on the CPU (benchmarks/RESULTS.md): batches without padding prefilled into a static
cache, whose "no mask" the prefix's mask read bottom-right (fixed in tuning/model/prefix.py). Each variant below
answers the first N dev records; after the fix all should agree (not yet run on a GPU: no machine could be had):

    python benchmarks/gpu_eval_check.py RUN [--limit 96]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", default="data/grid/dev.json")
    parser.add_argument("--limit", type=int, default=96)
    args = parser.parse_args()

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tasktune.tuning.data import encode_prompts, format_prompt
    from tasktune.tuning.model.generate import generate_batched
    from tasktune.tuning.model.load import load_tokenizer
    from tasktune.tuning.model.methods import load_run_adapter
    from tasktune.tuning.run import RunFolder

    record = RunFolder(args.run).record()
    tok = load_tokenizer(record.config.model)
    adapter = load_run_adapter(args.run, record)
    print("torch", torch.__version__, "device", next(adapter.model.parameters()).device, "dtype", next(adapter.model.parameters()).dtype,
          "attention", adapter.model.config._attn_implementation, "float32 matmul precision",
          torch.get_float32_matmul_precision(), "cuda tf32", torch.backends.cuda.matmul.allow_tf32,
          "cudnn tf32", torch.backends.cudnn.allow_tf32, flush=True)
    dev = json.loads(Path(args.data).read_text(encoding="utf-8"))[:args.limit]
    prompts = encode_prompts(tok, [format_prompt(tok, r["content"], r.get("history") or [], template="auto")
                                   for r in dev], "auto")
    variants = {
        "dynamic cache, batch 16": dict(cache=None, batch=16, backend=None),
        "static cache, batch 16 (eval's GPU default: transformers compiles the forward there)":
            dict(cache="static", batch=16, backend=None),
        "static cache, batch 16, no compile": dict(cache="static", batch=16, backend=None, no_compile=True),
        "dynamic cache, batch 1": dict(cache=None, batch=1, backend=None),
        "dynamic cache, batch 16, sdpa math only": dict(cache=None, batch=16, backend=SDPBackend.MATH),
        "dynamic cache, batch 16, sdpa efficient only": dict(cache=None, batch=16, backend=SDPBackend.EFFICIENT_ATTENTION),
        "static cache, batch 16, sdpa math only": dict(cache="static", batch=16, backend=SDPBackend.MATH),
        "static cache, batch 16, sdpa efficient only": dict(cache="static", batch=16,
                                                             backend=SDPBackend.EFFICIENT_ATTENTION),
        "static cache, batch 16, no compile, sdpa math only": dict(cache="static", batch=16, backend=SDPBackend.MATH,
                                                                   no_compile=True),
    }
    answers = {}
    if torch.cuda.is_available():
        variants["dynamic cache, batch 16, on the CPU"] = dict(cache=None, batch=16, backend=None, cpu=True)
    for name, v in variants.items():
        if v.get("cpu"):
            adapter.model.to("cpu")
        context = sdpa_kernel(v["backend"]) if v["backend"] is not None else contextlib.nullcontext()
        # generate() compiles the forward (CUDA graphs) with a static cache on CUDA, not on the CPU
        adapter.model.generation_config.disable_compile = bool(v.get("no_compile"))
        try:
            with context:
                got, _ = generate_batched(adapter.model, tok, prompts, batch_size=v["batch"], max_new_tokens=48,
                                          reserved_positions=adapter.reserved_positions, progress=False,
                                          cache_implementation=v["cache"],
                                          max_prompt_tokens=record.config.max_source_length)
        except Exception as exc:  # a backend that refuses these inputs
            print(f"{name}: failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        answers[name] = got
        right = sum(a == r["summary"] for a, r in zip(got, dev))
        print(f"{name}: {right}/{len(dev)} exact", flush=True)
    first = next(iter(answers.values()), None)
    for name, got in answers.items():
        print(f"  differs from the first variant in {sum(a != b for a, b in zip(got, first))} answers: {name}")


if __name__ == "__main__":
    main()
