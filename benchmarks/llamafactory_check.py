"""Does LLaMA-Factory's own loader read tasktune's data as written? Every built-in spec, every format.

LLaMA-Factory pins other transformers/peft versions than tasktune, so it lives in a venv of its own:

    python3.11 -m venv /tmp/lf-venv && /tmp/lf-venv/bin/pip install llamafactory
    .venv/bin/python benchmarks/llamafactory_check.py --lf-python /tmp/lf-venv/bin/python [--json OUT.json]

This script (in tasktune's venv) writes the data of each built-in spec (grid, smarthome) in each format that
has a dataset_info.json (chatglm, jsonl, alpaca, sharegpt), then runs itself in LLaMA-Factory's venv, where
`llamafactory.data.get_dataset` (stage sft: dataset_info.json parsing, loading, aligning the columns, the
`default` template's tokenization, with a small BPE tokenizer trained on the spot) loads `<spec>_train` and
`<spec>_dev` from each folder, unchanged. It prints one line per (spec, format): rows loaded (and how many
train rows hold earlier turns, i.e. kept their history), or the error.
Exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SPECS = ("grid", "smarthome")
FORMATS = ("chatglm", "jsonl", "alpaca", "sharegpt")


def write_data(root: Path, seed: int) -> dict[str, str]:
    import tasktune

    folders = {}
    for spec in SPECS:
        for fmt in FORMATS:
            folder = root / f"{spec}-{fmt}"
            tasktune.generate_data(spec, folder, seed=seed, fmt=fmt)
            folders[f"{spec}/{fmt}"] = str(folder)
    return folders


def _tokenizer(folder: Path, texts: list[str]):
    """A small byte-level BPE with a chat's special tokens, trained on the data's own text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return str(folder)


def load_all(folders: dict[str, str]) -> dict[str, dict]:
    """(in LLaMA-Factory's venv) get_dataset on each folder's <spec>_train / <spec>_dev."""
    import llamafactory
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    work = Path(tempfile.mkdtemp(prefix="lf-check-"))
    texts = []
    for folder in folders.values():
        texts += [p.read_text(encoding="utf-8")[:200_000] for p in Path(folder).glob("train.json*")]
    tokenizer_dir = _tokenizer(work / "tokenizer", texts)
    results = {"llamafactory": llamafactory.__version__}
    for key, folder in folders.items():
        spec = key.split("/")[0]
        args = dict(model_name_or_path=tokenizer_dir, stage="sft", do_train=True, do_eval=True,
                    finetuning_type="lora", template="default", dataset_dir=folder, dataset=f"{spec}_train",
                    eval_dataset=f"{spec}_dev", cutoff_len=256, output_dir=str(work / "out" / key),
                    overwrite_cache=True, preprocessing_num_workers=None, report_to="none")
        try:
            model_args, data_args, training_args, _, _ = get_train_args(args)
            tokenizer_module = load_tokenizer(model_args)
            template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
            module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
            train, dev = module["train_dataset"], module["eval_dataset"]
            decode = tokenizer_module["tokenizer"].decode
            dialogues = sum(decode(row["input_ids"]).count("Human:") > 1 for row in train)  # history kept
            results[key] = {"ok": True, "train": len(train), "dev": len(dev), "train_multi_turn": dialogues,
                            "sample": decode(train[0]["input_ids"])[:200]}
        except Exception as exc:  # noqa: BLE001 (the point is to report whatever the loader raised)
            results[key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lf-python", help="python of a venv with `llamafactory` installed")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)  # (in LLaMA-Factory's venv) folders.json
    args = parser.parse_args(argv)
    if args.inner:
        print(json.dumps(load_all(json.loads(args.inner.read_text()))))
        return 0
    if not args.lf_python:
        parser.error("--lf-python is required")
    with tempfile.TemporaryDirectory(prefix="tasktune-lf-") as tmp:
        folders = write_data(Path(tmp), args.seed)
        listing = Path(tmp) / "folders.json"
        listing.write_text(json.dumps(folders))
        proc = subprocess.run([args.lf_python, __file__, "--inner", str(listing)], capture_output=True, text=True,
                              env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1",
                                   "PATH": "/usr/bin:/bin", "HOME": tmp})
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            return 2
        results = json.loads(proc.stdout.strip().splitlines()[-1])
    import tasktune

    results["tasktune"] = tasktune.__version__
    print(f"LLaMA-Factory {results['llamafactory']} loader on tasktune {results['tasktune']} data (seed {args.seed}):")
    failed = 0
    for key in (f"{s}/{f}" for s in SPECS for f in FORMATS):
        r = results[key]
        failed += not r["ok"]
        print(f"  {key:20s} " + (f"ok: {r['train']} train / {r['dev']} dev rows, {r['train_multi_turn']} train rows "
                                 "with earlier turns" if r["ok"] else f"FAILED: {r['error']}"))
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
