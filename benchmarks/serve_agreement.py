"""Issue 20, item 3: do the server's greedy answers equal `tasktune eval`'s for the same prompts, whatever shares the
batch? Identical on the CPU in fp32; on a GPU in bf16/NF4 they may differ only where the top two logits are within
1e-2. This measures how often they differ, and where they do, how close the two best tokens were.

    python benchmarks/serve_agreement.py RUN [RUN ...] [--data PATH] [--limit 64] [--max-new-tokens N]
        [--max-batch-size 32] [--decode auto|dynamic|slots] [--ignore-eos] [--out FILE.json]

Both sides are the project's own code, greedy:
- server: `load_bank` + `Engine` as `tasktune serve` builds them (serve/cli.py), every prompt of every run submitted
  before the engine starts, runs interleaved (run 0's prompt 0, run 1's prompt 0, ...), so rows of different
  prefixes share batches; prompts framed and cut as serve/service.py's `Service.encode` does (the run's template,
  its last max_source_length tokens). The engine is subclassed only to record every sampled token id (and its own
  top-1 minus top-2 logit) in `_sample`; nothing it computes changes.
- eval: what tuning/evaluation/eval.py does per run: `Assistant.from_run(run, batching="generate")`, `bot.encode`
  of the dev records (content + history), `bot.generate(..., batch_size=16, max_new_tokens=...)`, i.e.
  `generate_batched` (length-sorted batches, left padding, the static cache on CUDA). `model.generate` is wrapped
  only to keep the token ids it returns (generate_batched decodes them to text), and the exact prompt ids it got.

Per prompt: identical token ids or not (each side up to and including its first end-of-sequence); where not, the
first differing position and the top-1 minus top-2 logit margin there under eval's path: eval's own prompt + the
common prefix of the two answers, teacher-forced (batch 1, no padding) through eval's loaded model with the run's
prefix on. The margin is the difference of the two largest logits as the model returned them (their dtype is
printed: bf16 logits are compared exactly, the subtraction in fp32), also as p(top-1) - p(top-2).

--ignore-eos (random-weight models: fixed-length answers): the engine's `SamplingParams(ignore_eos=True)` keeps
decoding through an end-of-sequence token; eval's `generate_batched` always passes `eos_token_id=tokenizer.eos`,
so the wrapper around `model.generate` replaces it with None for this run (no stop on eos, no padding after it):
both sides then decode exactly max_new_tokens tokens, eos included as an ordinary token, as the engine does.

--control wrong-prefix (a negative control, for the tests): the engine answers run k's prompts with run k+1's
prefix (one run: the base model): most answers must then be reported differing, with their margins.

Longer than 300 lines because the GPU phase runs it as one file: the engine side, eval's side, the teacher-forced
margins and the report are kept together.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THRESHOLD = 1e-2


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (prefix runs of one base, as `tasktune serve` takes)")
    parser.add_argument("--data", help="data file or folder for every run (default: each run's own data, as "
                                       "`tasktune eval` reads it)")
    parser.add_argument("--split", default="dev", help="split to read (default: dev)")
    parser.add_argument("--limit", type=int, default=64, help="prompts per run (default: 64)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer tokens (default: each run's max_target_length, as eval)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the engine's batch rows (default: 32)")
    parser.add_argument("--decode", choices=("auto", "dynamic", "slots"), default="auto",
                        help="the engine's decode mode (default: auto = slots on CUDA, dynamic elsewhere)")
    parser.add_argument("--decode-weights", choices=("nf4", "bf16"), default="nf4",
                        help="the engine's base (tasktune serve --decode-weights): bf16 = a 4-bit base dequantised once "
                             "(eval keeps the 4-bit one)")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="eval's batch size (default: 16, eval's)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="both sides decode max_new_tokens tokens whatever they say (see the module doc)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help="the near-tie margin of the issue (default: 1e-2)")
    parser.add_argument("--control", choices=("none", "wrong-prefix"), default="none",
                        help="wrong-prefix: serve run k's prompts with run k+1's prefix (a negative control)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the engine's answers")
    parser.add_argument("--out", help="write every row's details as JSON here")
    return parser.parse_args(argv)


# -- the prompts, as eval reads them ----------------------------------------------------------------------------

def read_runs(run_dirs: list[Path], data: str | None, split: str, limit: int):
    """Per run: (name, record, dev records), records read by eval's own `load_eval_records`."""
    from tasktune.tuning.evaluation.eval import load_eval_records
    from tasktune.tuning.run import RunFolder

    names = [Path(r).resolve().name for r in run_dirs]
    if len(set(names)) != len(names):  # two folders of one name: served under numbered names
        names = [f"{n}#{k}" for k, n in enumerate(names)]
    out = []
    for name, run_dir in zip(names, run_dirs):
        record = RunFolder(run_dir).record(task="causal-lm", refusal="{run}: a {task} run has no answers to compare")
        records = load_eval_records(data or record.config.data, split, limit, record.config)
        out.append((name, record, records))
    return out


# -- the server's side ------------------------------------------------------------------------------------------

def _recording_engine_class():
    from tasktune.tuning.inference.engine import Engine

    class RecordingEngine(Engine):
        """The server's engine, unchanged, plus a record of every token it samples (and its own logit margin)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sampled: dict[int, list[tuple[int, float]]] = defaultdict(list)
            self.step_rows: list[int] = []  # rows of every decode step (a prefill samples only its new rows)

        def _sample(self, rows, logits):
            chosen = super()._sample(rows, logits)
            if rows is self._rows:
                self.step_rows.append(len(rows))
            top = logits.topk(2, dim=-1).values
            margins = (top[:, 0].float() - top[:, 1].float()).tolist()
            for row, token, margin in zip(rows, chosen, margins):
                self.sampled[row.request.id].append((int(token), float(margin)))
            return chosen

    return RecordingEngine


def engine_answers(runs, jobs, *, max_batch_size: int, decode: str, ignore_eos: bool, timeout: float,
                   decode_weights: str = "nf4"):
    """Answer every job through one Engine (submitted together, then started). Returns (per job: dict with
    `prompt`, `tokens`, `engine_margins`, `finish`, `error`), info about the engine."""
    import torch

    from tasktune.tuning.data import encode_prompts, format_prompt
    from tasktune.tuning.inference.bank import load_bank
    from tasktune.tuning.inference.engine import Request, SamplingParams

    t0 = time.perf_counter()
    bank = load_bank([(name, run_dir) for name, _, _, run_dir in runs])
    if decode_weights == "bf16":
        from tasktune.tuning.model.dequantize import dequantize_4bit_linears

        dequantize_4bit_linears(bank.model)
    load_s = time.perf_counter() - t0
    tok = bank.tokenizer
    width = max(bank.runs[name].max_source_length for name, *_ in runs) + max(j["max_new"] for j in jobs) + 1
    engine = _recording_engine_class()(bank, max_batch_size=max_batch_size, decode=decode, slot_width=width)
    done = [threading.Event() for _ in jobs]
    finals: list = [None] * len(jobs)
    requests = []
    for i, job in enumerate(jobs):
        served = bank.runs[job["run"]]
        # as serve/service.py's Service.encode: the run's frame, its ids, the last max_source_length of them
        text = format_prompt(tok, job["content"], [list(t) for t in job["history"]], template=served.prompt_template)
        (ids,) = encode_prompts(tok, [text], served.prompt_template)
        job["server_prompt"] = ids[-served.max_source_length:]

        def emit(event, i=i):
            if event.finish_reason:
                finals[i] = event
                done[i].set()

        requests.append(Request(job["server_prompt"], job["engine_adapter"],
                                SamplingParams(max_new_tokens=job["max_new"], ignore_eos=ignore_eos), emit))
    for request in requests:  # all queued before the loop runs: the first admit takes max_batch_size of them
        engine.submit(request)
    t1 = time.perf_counter()
    engine.start()
    deadline = time.monotonic() + timeout
    for event in done:
        event.wait(max(0.0, deadline - time.monotonic()))
    answer_s = time.perf_counter() - t1
    engine.shutdown()
    out = []
    for request, final in zip(requests, finals):
        sampled = engine.sampled.get(request.id, [])
        out.append({"tokens": [t for t, _ in sampled], "engine_margins": [m for _, m in sampled],
                    "finish": final.finish_reason if final else "timeout",
                    "error": (final.error if final else f"no answer within {timeout:g} s")
                    if final is None or final.finish_reason in ("error", "cancelled") else None})
    info = {"decode": engine.decode, "max_batch_size": max_batch_size, "load_s": round(load_s, 2),
            "answer_s": round(answer_s, 2), "steps": engine.stats.steps,
            "max_rows_in_a_step": max(engine.step_rows, default=0),
            "device": str(bank.device), "compute_dtype": str(bank.model.get_input_embeddings().weight.dtype),
            "prefix_dtype": str(next(iter(bank.kv.values())).dtype) if bank.kv else None}
    del engine, bank, requests
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out, info


# -- eval's side ------------------------------------------------------------------------------------------------

def eval_answers(run_dir: Path, records, *, max_new: int, batch_size: int, ignore_eos: bool):
    """Eval's generation path for one run. Returns (bot, per record: (prompt ids eval generated from, token ids),
    seconds)."""
    import torch

    from tasktune.tuning.inference.assistant import Assistant

    bot = Assistant.from_run(run_dir, batching="generate")  # eval.py: the run's base as trained, adapter on
    model = bot.run.adapter.model
    calls = []
    original = model.generate

    def generate(*args, **kwargs):  # what generate_batched calls; only recorded (and eos off with --ignore-eos)
        if ignore_eos:
            kwargs["eos_token_id"] = None
        out = original(*args, **kwargs)
        ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        calls.append((ids.cpu(), (mask if mask is not None else torch.ones_like(ids)).cpu(), out.cpu()))
        return out

    _, prompts = bot.encode([r["content"] for r in records], history=[r["history"] for r in records])
    t0 = time.perf_counter()
    model.generate = generate
    try:
        bot.generate(prompts, max_new_tokens=max_new, batch_size=batch_size)  # eval.py's tuned pass
    finally:
        del model.generate
    seconds = time.perf_counter() - t0
    # generate_batched answers in length-sorted batches: map each row back by its (cut) prompt ids; equal prompts
    # come in input order (a stable sort), so they are handed out in that order
    from tasktune.tuning.model.generate import context_limit

    limit = context_limit(model)
    keep = None if limit is None else limit - max_new - bot.run.adapter.reserved_positions
    where: dict[tuple, deque] = defaultdict(deque)
    for i, ids in enumerate(prompts):
        cut = list(ids)[-bot.run.config.max_source_length:]
        if keep is not None and len(cut) > keep:
            cut = cut[-keep:]
        where[tuple(cut)].append(i)
    out: list = [None] * len(prompts)
    for ids, mask, generated in calls:
        width = ids.shape[1]
        for row in range(ids.shape[0]):
            prompt = ids[row][mask[row].bool()].tolist()
            i = where[tuple(prompt)].popleft()
            out[i] = (prompt, generated[row, width:].tolist())
    if any(o is None for o in out):
        raise RuntimeError("could not map generate_batched's rows back to the prompts")
    return bot, out, seconds


def trim(tokens: list[int], eos: int | None, ignore_eos: bool) -> list[int]:
    """An answer's token ids up to and including its first end-of-sequence (all of them with --ignore-eos)."""
    if ignore_eos or eos is None or eos not in tokens:
        return list(tokens)
    return tokens[:tokens.index(eos) + 1]


def first_difference(a: list[int], b: list[int]) -> int | None:
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k
    return None if len(a) == len(b) else min(len(a), len(b))


def teacher_forced(bot, prompt: list[int], answer_prefix: list[int]):
    """The next-token logits after eval's prompt + `answer_prefix`, through eval's model (run's prefix on),
    batch 1, no padding. Returns the logits row (as the model returned it)."""
    import torch

    model = bot.run.adapter.model
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt) + list(answer_prefix)], device=device)
    extra = {"logits_to_keep": 1} if getattr(bot.run.adapter, "answer_logits", False) else {}
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **extra)
    return out.logits[0, -1]


def margin_at(bot, prompt, eval_tokens, engine_tokens, pos: int) -> dict:
    import torch

    logits = teacher_forced(bot, prompt, eval_tokens[:pos])
    top = logits.topk(2)
    v = top.values.float()
    probs = torch.softmax(logits.float(), dim=-1)
    i1, i2 = int(top.indices[0]), int(top.indices[1])
    eval_tok = eval_tokens[pos] if pos < len(eval_tokens) else None
    engine_tok = engine_tokens[pos] if pos < len(engine_tokens) else None
    gap = None
    if eval_tok is not None and engine_tok is not None:
        gap = float(logits[eval_tok].float() - logits[engine_tok].float())
    return {"margin": float(v[0] - v[1]), "prob_margin": float(probs[i1] - probs[i2]), "tf_top1": i1,
            "tf_top2": i2, "tf_top1_is_eval": i1 == eval_tok, "eval_minus_engine_logit": gap,
            "logits_dtype": str(logits.dtype)}


# -- the report -------------------------------------------------------------------------------------------------

def summarize(rows: list[dict], threshold: float) -> dict:
    differing = [r for r in rows if not r["identical"]]
    near = [r for r in differing if r.get("margin") is not None and r["margin"] < threshold]
    return {"prompts": len(rows), "identical": len(rows) - len(differing), "differing": len(differing),
            "near_tie": len(near), "not_near_tie": len(differing) - len(near)}


def _tok(tokenizer, token) -> str:
    if token is None:
        return "(end)"
    text = tokenizer.decode([token])
    if not text or "\ufffd" in text:  # a byte piece: its vocabulary entry says more
        text = tokenizer.convert_ids_to_tokens(token)
    return f"{token} {text!r}"


def _pct(n: int, of: int) -> str:
    return f"{n} ({100 * n / of:.1f} %)" if of else str(n)


def table(results: dict, tokenizer=None) -> str:
    env, thr = results["env"], results["threshold"]
    lines = [f"## serve vs eval, greedy: {', '.join(results['runs'])}", "",
             f"device {env['device_name']} ({env['device']}); compute dtype {env['compute_dtype']}, logits "
             f"{env.get('logits_dtype') or 'n/a'}; quantization {env['quantization']}; engine decode "
             f"{results['engine']['decode']}, max batch {results['engine']['max_batch_size']} (largest step "
             f"{results['engine']['max_rows_in_a_step']} rows); eval batch {results['eval_batch_size']}; "
             f"max_new_tokens {results['max_new_tokens']}; eos {'ignored' if results['ignore_eos'] else 'stops'}"
             + (f"; CONTROL {results['control']}" if results['control'] != "none" else ""), "",
             f"| runs | prompts | identical | differing | differing, margin < {thr:g} | "
             f"differing, margin >= {thr:g} |", "|---|---|---|---|---|---|"]
    groups = [(name, [r for r in results["rows"] if r["run"] == name]) for name in results["runs"]]
    if len(groups) > 1:
        groups.append(("all: " + ", ".join(results["runs"]), results["rows"]))
    for label, rows in groups:
        s = summarize(rows, thr)
        lines.append(f"| {label} | {s['prompts']} | {_pct(s['identical'], s['prompts'])} | "
                     f"{_pct(s['differing'], s['prompts'])} | {s['near_tie']} | {s['not_near_tie']} |")
    differing = [r for r in results["rows"] if not r["identical"]]
    lines += ["", "margin: top-1 minus top-2 logit at the first differing position under eval's path (eval's "
              "prompt + the common prefix teacher-forced through eval's model with the run's prefix), the logits' "
              "values subtracted in fp32"]
    if differing:
        positions = [r["position"] for r in differing if r.get("position") is not None]
        margins = [r["margin"] for r in differing if r.get("margin") is not None]
        if positions and margins:
            lines.append(f"first differing position: min {min(positions)}, median "
                         f"{statistics.median(positions):g}, max {max(positions)}; margins there: min "
                         f"{min(margins):.3g}, median {statistics.median(margins):.3g}, max {max(margins):.3g}")
        tf_other = sum(1 for r in differing if r.get("tf_top1_is_eval") is False)
        if tf_other:
            lines.append(f"teacher-forced top-1 != eval's own token at that position: {tf_other} row(s)")
    errors = [r for r in results["rows"] if r.get("error")]
    if errors:
        lines.append(f"engine errors: {len(errors)} (first: {errors[0]['error']})")
    cut = sum(1 for r in results["rows"] if not r["same_prompt"])
    if cut:
        lines.append(f"prompts the server cut differently from eval: {cut}")
    far = [r for r in differing if r.get("margin") is None or r["margin"] >= thr]
    if far:
        lines += ["", f"differing with margin >= {thr:g} (or none):", "",
                  "| run | prompt | position | margin | p1 - p2 | eval token | engine token | engine's own margin |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in far:
            m = "n/a" if r.get("margin") is None else f"{r['margin']:.4g}"
            pm = "n/a" if r.get("prob_margin") is None else f"{r['prob_margin']:.3g}"
            em = "n/a" if r.get("engine_margin") is None else f"{r['engine_margin']:.4g}"
            et = r["eval_token"] if tokenizer is None else _tok(tokenizer, r["eval_token"])
            nt = r["engine_token"] if tokenizer is None else _tok(tokenizer, r["engine_token"])
            lines.append(f"| {r['run']} | {r['index']} | {r['position']} | {m} | {pm} | {et} | {nt} | {em} |")
    return "\n".join(lines)


def environment(record) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "quantization": {None: "none (full weights)", 4: "4-bit NF4", 8: "8-bit"}.get(record.quantization,
                                                                                     str(record.quantization))}
    try:
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    except Exception:  # noqa: BLE001 - optional on the CPU
        env["bitsandbytes"] = None
    env["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        (platform.processor() or platform.machine() or "CPU")
    return env


# -- main -------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    run_dirs = [Path(r) for r in args.runs]
    t_start = time.perf_counter()
    runs = [(name, record, records, run_dir)
            for (name, record, records), run_dir in zip(read_runs(run_dirs, args.data, args.split, args.limit),
                                                        run_dirs)]
    names = [r[0] for r in runs]
    jobs = []
    longest = max(len(r[2]) for r in runs)
    for k in range(longest):  # interleaved: the runs' prompts share batches
        for ri, (name, record, records, _) in enumerate(runs):
            if k >= len(records):
                continue
            adapter = name
            if args.control == "wrong-prefix":
                adapter = names[(ri + 1) % len(names)] if len(names) > 1 else None
            jobs.append({"run": name, "index": k, "content": records[k]["content"],
                         "history": records[k]["history"], "engine_adapter": adapter,
                         "max_new": args.max_new_tokens or record.config.max_target_length})
    log(f"serve_agreement: {len(jobs)} prompts of {len(runs)} run(s); engine first")
    served, engine_info = engine_answers(runs, jobs, max_batch_size=args.max_batch_size, decode=args.decode,
                                         decode_weights=args.decode_weights,
                                         ignore_eos=args.ignore_eos, timeout=args.timeout)
    log(f"engine: {engine_info['decode']}, loaded in {engine_info['load_s']} s, answered in "
        f"{engine_info['answer_s']} s ({engine_info['steps']} decode steps, up to "
        f"{engine_info['max_rows_in_a_step']} rows)")
    rows, eval_info, tokenizer, logits_dtype = [], {}, None, None
    by_run = defaultdict(list)
    for j, job in enumerate(jobs):
        by_run[job["run"]].append(j)
    for name, record, records, run_dir in runs:
        mine = by_run[name]
        max_new = args.max_new_tokens or record.config.max_target_length
        t0 = time.perf_counter()
        bot, answers, gen_s = eval_answers(run_dir, records, max_new=max_new, batch_size=args.eval_batch_size,
                                           ignore_eos=args.ignore_eos)
        tokenizer = bot.tokenizer
        eos = tokenizer.eos_token_id
        for j in mine:
            job, engine = jobs[j], served[j]
            prompt, eval_raw = answers[job["index"]]
            eval_tokens = trim(eval_raw, eos, args.ignore_eos)
            engine_tokens = trim(engine["tokens"], eos, args.ignore_eos)
            pos = first_difference(eval_tokens, engine_tokens)
            row = {"run": name, "index": job["index"], "identical": pos is None and not engine["error"],
                   "same_prompt": prompt == job["server_prompt"], "prompt_tokens": len(prompt),
                   "eval_tokens": eval_tokens, "engine_tokens": engine_tokens, "finish": engine["finish"],
                   "error": engine["error"]}
            if pos is not None:
                row.update(position=pos, eval_token=eval_tokens[pos] if pos < len(eval_tokens) else None,
                           engine_token=engine_tokens[pos] if pos < len(engine_tokens) else None,
                           engine_margin=engine["engine_margins"][pos] if pos < len(engine["engine_margins"])
                           else None)
                row.update(margin_at(bot, prompt, eval_tokens, engine_tokens, pos))
                logits_dtype = row["logits_dtype"]
            if pos is None and not row["identical"]:  # an engine error with every token it gave equal to eval's
                row.update(position=None, eval_token=None, engine_token=None, engine_margin=None, margin=None)
            rows.append(row)
        eval_info[name] = {"generate_s": round(gen_s, 2), "total_s": round(time.perf_counter() - t0, 2)}
        s = summarize([r for r in rows if r["run"] == name], args.threshold)
        log(f"eval {name}: generated in {gen_s:.2f} s, with teacher forcing {eval_info[name]['total_s']} s; "
            f"{s['identical']}/{s['prompts']} identical, {s['near_tie']} differing at a margin < {args.threshold:g}, "
            f"{s['not_near_tie']} at a larger one")
        del bot, answers
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rows.sort(key=lambda r: (names.index(r["run"]), r["index"]))
    env = environment(runs[0][1])
    env.update(device=engine_info["device"], compute_dtype=engine_info["compute_dtype"], logits_dtype=logits_dtype)
    results = {"runs": names, "run_dirs": [str(r) for r in run_dirs], "split": args.split, "data": args.data,
               "limit": args.limit, "max_new_tokens": args.max_new_tokens or
               sorted({r[1].config.max_target_length for r in runs}),
               "eval_batch_size": args.eval_batch_size, "ignore_eos": args.ignore_eos, "threshold": args.threshold,
               "control": args.control, "env": env, "engine": engine_info, "eval": eval_info,
               "summary": summarize(rows, args.threshold), "seconds": round(time.perf_counter() - t_start, 2),
               "rows": rows}
    print(table(results, tokenizer), flush=True)
    log(f"serve_agreement: {results['seconds']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
