"""Which tiny base (and which P-tuning setting) reaches the grid demo's exact-match target? (issue #3)

Each case builds a tiny GLM (`tuning/tiny/build.py` with the case's TinyConfig overrides), P-tunes it
with tasktune's own prefix (`tuning.model.prefix.attach_prefix`) and `tasktune train`'s data code (records, prompt
frame, cuts, labels, padding) in a plain loop with its recipe (AdamW, linear decay, clip 1.0), and answers the dev
set greedily at a few step counts, prompts cut as `tasktune eval` cuts them. Cases run in worker processes (one device, or CPU threads), so a
GPU machine can try many bases in minutes; the CPU figures that count are `tasktune train` + `tasktune eval`.

    python benchmarks/tiny_sweep.py --cases benchmarks/sweeps/base.json --data data/grid --out /tmp/sweep \\
        --device cuda --workers 6

A cases file is a JSON list of {"name": str, "tiny": {TinyConfig field: value}, "ptune": {option: value},
"ptunes": [{option: value}, ...] (several P-tuning runs of one base; default one), "model": folder (skip the
build), "keep": true (leave the built base in OUT/NAME/model)}; ptune options: pre_seq_len, lr, batch_size, steps,
evals (step counts), projection, init ("random": nn.Embedding's N(0, 1); "tokens": the base's keys/values at
P random token positions of train rows), betas (AdamW's), warmup (linear warm-up steps before the decay), schedule (transformers'
`get_scheduler` name: linear, cosine, ...), seed. Bases of several seeds for one data set set "data_seed" to the
data's seed (42 for data/grid) in "tiny", so their documents come from that data set's train split.
Prints a table (exact match per step kind at each eval point) and writes results.jsonl under --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PTUNE = {"pre_seq_len": 64, "lr": 2e-2, "batch_size": 16, "steps": 900, "evals": [300, 600, 900],
         "projection": False, "warmup": 0, "seed": 42, "source": 160, "target": 64, "schedule": "linear",
         "init": "random", "betas": [0.9, 0.999]}


def token_kv_init(model, rows: list[list[int]], pre_seq_len: int, rng: random.Random, device: str):
    """(P, width) prefix rows in PEFT's flat layout: the base's own keys/values (k_proj / v_proj outputs, before
    rotary and any key norm) at P random token positions of `rows`: roughly P real context tokens, without their
    positions (the prefix takes none)."""
    import torch

    caught = {}
    layers = model.model.layers
    hooks = [getattr(layer.self_attn, name).register_forward_hook(
                 lambda mod, a, out, key=(i, kv): caught.__setitem__(key, out.detach()))
             for i, layer in enumerate(layers) for kv, name in enumerate(("k_proj", "v_proj"))]
    positions = [(r, t) for r, row in enumerate(rows) for t in range(len(row))]
    picks = rng.sample(positions, pre_seq_len)
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=device)
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    r_idx = torch.tensor([r for r, _ in picks], device=device)
    t_idx = torch.tensor([t for _, t in picks], device=device)
    return torch.cat([caught[(i, kv)][r_idx, t_idx] for i in range(len(layers)) for kv in (0, 1)], dim=-1)


def ptune(model_dir: Path, data: Path, opts: dict, device: str, n_dev: int | None) -> list[dict]:
    """P-tune the model at model_dir; returns one row per eval point: step, seconds, exact match per kind."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from tasktune.tuning.data import DataConfig, format_prompt, load_records, make_collator, tokenize_dataset
    from tasktune.tuning.data import DataConfig
    from tasktune.tuning.evaluation.eval import load_eval_records
    from tasktune.tuning.model.generate import generate_batched
    from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix

    torch.manual_seed(opts["seed"])
    rng = random.Random(opts["seed"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    # the records, prompts, cuts and padding of `tasktune train` / `tasktune eval`
    data_cfg = DataConfig(max_source_length=opts["source"], max_target_length=opts["target"],
                          prompt_template="chatglm")
    train_set, _ = tokenize_dataset(load_records(data, "train", data_cfg), tok, data_cfg)
    init = None
    if opts["init"] == "tokens" and opts["projection"]:
        raise ValueError('"init": "tokens" sets the prefix keys/values themselves; it cannot start a projection')
    if opts["init"] == "tokens":
        rows = [train_set[i]["input_ids"] for i in random.Random(opts["seed"]).sample(range(len(train_set)), 16)]
        init = token_kv_init(model, rows, opts["pre_seq_len"], random.Random(opts["seed"]), device)
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=opts["pre_seq_len"], prefix_projection=opts["projection"]))
    tuner.encoder.to(device)
    if init is not None:
        with torch.no_grad():
            tuner.encoder.embedding.weight.copy_(init)
    collate = make_collator(tok)
    dev = load_eval_records(data, "dev", n_dev, DataConfig())  # the default columns: content, summary, history

    params = list(tuner.encoder.parameters())
    opt = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=0.0, betas=tuple(opts["betas"]))
    schedule = get_scheduler(opts["schedule"], opt, num_warmup_steps=opts["warmup"], num_training_steps=opts["steps"])
    prompts = [format_prompt(tok, r["content"], r["history"], template="chatglm") for r in dev]
    points, order, started = [], [], time.perf_counter()
    model.train()
    for step in range(1, opts["steps"] + 1):
        if len(order) < opts["batch_size"]:
            order = list(range(len(train_set)))
            rng.shuffle(order)
        batch = collate([train_set[order.pop()] for _ in range(opts["batch_size"])])
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        if step in opts["evals"] or step == opts["steps"]:
            model.eval()
            with torch.no_grad():
                answers, _ = generate_batched(model, tok, prompts, batch_size=64, max_new_tokens=opts["target"],
                                              reserved_positions=opts["pre_seq_len"], progress=False,
                                              cache_implementation=None, max_prompt_tokens=opts["source"])
            model.train()
            right = [a.strip() == r["summary"].strip() for r, a in zip(dev, answers)]
            kinds: dict[str, list[bool]] = {}
            for r, ok in zip(dev, right):
                kinds.setdefault(r["meta"]["step"] + ("+history" if r["history"] else ""), []).append(ok)
            row = {"step": step, "seconds": round(time.perf_counter() - started, 1), "loss": round(loss.item(), 4),
                   "em": round(sum(sum(v) for v in kinds.values()) / len(dev), 4)}
            row.update({k: f"{sum(v)}/{len(v)}" for k, v in sorted(kinds.items())})
            task = [ok for k, v in kinds.items() if not k.startswith("greet") for ok in v]  # the target's steps
            row["em_task"] = round(sum(task) / max(1, len(task)), 4)
            row["wrong"] = [(r["content"][-40:], a, r["summary"]) for r, a, ok in zip(dev, answers, right) if not ok]
            points.append(row)
    return points


def run_case(case: dict, args) -> dict:
    from tasktune.tuning.tiny import TinyConfig, build_tiny_model

    out = Path(args.out) / case["name"]
    model_dir = Path(case["model"]) if case.get("model") else out / "model"
    started = time.perf_counter()
    if not case.get("model"):
        tiny = dict(case.get("tiny", {}))
        seed = tiny.pop("seed", 42)
        build_tiny_model(args.spec, model_dir, seed=seed, config=TinyConfig(**tiny), progress=False,
                         device=args.device)
    build_s = time.perf_counter() - started
    if case.get("keep"):
        (out / "KEEP").write_text("gpu_run.sh sweep leaves this case's model in place\n", encoding="utf-8")
    runs = []
    for variant in case.get("ptunes", [{}]):
        opts = {**PTUNE, **case.get("ptune", {}), **variant}
        runs.append({"ptune": {k: v for k, v in opts.items() if PTUNE.get(k) != v},
                     "evals": ptune(model_dir, Path(args.data), opts, args.device, args.n_dev)})
    return {"name": case["name"], "tiny": case.get("tiny", {}), "build_s": round(build_s, 1), "runs": runs}


def safe_case(case: dict, args) -> dict:
    try:
        return run_case(case, args)
    except Exception:  # noqa: BLE001 - report and go on with the other cases
        return {"name": case["name"], "error": traceback.format_exc()[-2000:]}


def worker(case: dict, args, queue) -> None:
    import torch

    torch.set_num_threads(args.threads)
    queue.put(safe_case(case, args))


def results(cases: list[dict], args):
    """Each case's result as it finishes: in this process with one worker, else in `workers` spawned processes."""
    if args.workers == 1:
        yield from (safe_case(case, args) for case in cases)
        return
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    pending, running = list(cases), {}
    while pending or running:
        while pending and len(running) < args.workers:
            case = pending.pop(0)
            running[case["name"]] = ctx.Process(target=worker, args=(case, args, queue))
            running[case["name"]].start()
        result = queue.get()
        running.pop(result["name"]).join()
        yield result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", required=True, type=Path, help="JSON list of cases (see the module docstring)")
    ap.add_argument("--only", default="", help="comma-separated case names to run (default: all)")
    ap.add_argument("--spec", default="templates/grid/spec.yaml", type=Path)
    ap.add_argument("--data", default="data/grid", help="folder with train.json / dev.json")
    ap.add_argument("--out", default="/tmp/tiny_sweep", help="models and results.jsonl go here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="cases run at once")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per worker process (with --workers > 1)")
    ap.add_argument("--n-dev", type=int, default=None, help="answer only the first N dev records")
    args = ap.parse_args(argv)
    cases = json.loads(args.cases.read_text(encoding="utf-8"))
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c["name"] in keep]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    done = []
    with open(Path(args.out) / "results.jsonl", "a", encoding="utf-8") as log:
        for result in results(cases, args):
            done.append(result)
            log.write(json.dumps(result, ensure_ascii=False) + "\n")
            log.flush()
            summary = result.get("error") or " || ".join(" | ".join(
                f"{e['step']}: {e['em']:.3f}/{e['em_task']:.3f} ({e['seconds']:.0f}s)" for e in run["evals"])
                for run in result["runs"])
            print(f"[{len(done)}/{len(cases)}] {result['name']} build {result.get('build_s')}s :: {summary}",
                  flush=True)
    print("\n| case | P-tuning | build s | step | EM | EM args+summary | greet | arguments | summary | with history |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in done:
        for run in r.get("runs", []):
            for e in run["evals"]:
                print(f"| {r['name']} | {json.dumps(run['ptune'])} | {r['build_s']} | {e['step']} | {e['em']:.3f} | "
                      f"{e['em_task']:.3f} | {e.get('greet', '-')} | {e.get('arguments', '-')} | {e.get('summary', '-')} | "
                      f"{e.get('summary+history', '-')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
