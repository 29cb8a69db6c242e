"""The training loop on a 2-layer model: what it writes, that only the prefix learns, exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tasktune.errors import ConfigError, DataError
from tests.tuning.runs import EXACT, PLACES, fast_config, write_data
from tasktune.tuning.training import checkpoint as ckpt
from tasktune.tuning.training.train import TrainingDiverged, batch_indices, fit, step_micro_batches


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data")


def _prefix(run_dir):
    return load_file(str(run_dir / "adapter_model.safetensors"))["prompt_embeddings"]


def test_fit_writes_a_complete_run_folder(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    result = fit(fast_config(tiny_model_dir("glm"), data, run), log=lambda *_: None)
    assert result.steps == 4
    for name in ("adapter_config.json", "adapter_model.safetensors", "tasktune_run.json", "loss.png",
                 "train_history.json", "fingerprint.json"):
        assert (run / name).is_file(), name
    assert list((run / "logs").iterdir()), "TensorBoard event file missing"
    record = json.loads((run / "tasktune_run.json").read_text())
    assert record["steps"] == 4 and record["config"]["pre_seq_len"] == 4
    assert record["trainable_parameters"] == 4 * 2 * 2 * 2 * 16  # P x layers x (k,v) x kv heads x head_dim
    assert [d.name for d in ckpt.checkpoint_dirs(run)] == ["step-000002", "step-000004"]
    assert json.loads((run / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"


def test_loss_falls_and_base_weights_stay(tiny_model_dir, data, tmp_path):
    model_dir = tiny_model_dir("llama")
    before = load_file(str(model_dir / "model.safetensors"))
    result = fit(fast_config(model_dir, data, tmp_path / "run", max_steps=40, learning_rate=3e-1,
                             pre_seq_len=8), log=lambda *_: None)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:3]) / 3, losses
    after = load_file(str(model_dir / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_ends_with_the_same_prefix(tiny_model_dir, data, tmp_path):
    model = tiny_model_dir("glm")
    straight = tmp_path / "straight"
    fit(fast_config(model, data, straight, max_steps=6, prefix_dropout=0.1), log=lambda *_: None)
    resumed = tmp_path / "resumed"
    fit(fast_config(model, data, resumed, max_steps=6, prefix_dropout=0.1), log=lambda *_: None)
    # drop the last checkpoint and the final adapter: as if killed after step 4's checkpoint
    for name in ("adapter_model.safetensors", "tasktune_run.json"):
        (resumed / name).unlink()
    import shutil

    shutil.rmtree(resumed / "checkpoints" / "step-000006")
    fit(fast_config(model, data, resumed, max_steps=6, prefix_dropout=0.1), log=lambda *_: None)
    assert torch.equal(_prefix(straight), _prefix(resumed))


def test_resume_from_another_run_is_refused(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    fit(fast_config(tiny_model_dir("glm"), data, run), log=lambda *_: None)
    with pytest.raises(ConfigError, match="different run"):
        fit(fast_config(tiny_model_dir("glm"), data, run, pre_seq_len=8), log=lambda *_: None)


def test_non_finite_update_stops_before_any_checkpoint(tiny_model_dir, data, tmp_path, monkeypatch):
    """The loss of step 1 is finite but its update is not (an optimizer step that writes inf: a learning rate of
    inf is refused as a flag now); nothing non-finite is saved."""
    import torch

    real_step = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    cfg = fast_config(tiny_model_dir("glm"), data, tmp_path / "run", max_grad_norm=0, save_steps=1)
    with pytest.raises(TrainingDiverged, match=r"step 1 made the trainable weights non-finite.*none yet"):
        fit(cfg, log=lambda *_: None)
    assert not ckpt.checkpoint_dirs(tmp_path / "run")


def test_bad_inputs(tiny_model_dir, data, tmp_path):
    with pytest.raises(ConfigError, match="no-such-model"):
        fit(fast_config(tmp_path / "no-such-model", data, tmp_path / "r1"), log=lambda *_: None)
    (tmp_path / "cols").mkdir()
    (tmp_path / "cols" / "train.json").write_text('[{"question": "q", "answer": "a"}]')
    with pytest.raises(DataError, match="content"):
        fit(fast_config(tiny_model_dir("glm"), tmp_path / "cols", tmp_path / "r2"), log=lambda *_: None)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.json").write_text("[]")
    with pytest.raises(DataError):
        fit(fast_config(tiny_model_dir("glm"), tmp_path / "empty", tmp_path / "r3"), log=lambda *_: None)


def test_batch_order_is_a_function_of_seed_and_position():
    stream = batch_indices(10, 4, seed=3)
    first = [next(stream) for _ in range(6)]
    assert all(len(b) == 4 for b in first)
    assert len(set(first[0] + first[1])) == 8  # one epoch (2 batches of 4 from 10) repeats no example
    resumed = batch_indices(10, 4, seed=3, start=3)
    assert [next(resumed) for _ in range(3)] == first[3:]
    assert first[:2] != [next(batch_indices(10, 4, seed=4)) for _ in range(2)]


def test_group_by_length_batches_similar_lengths_and_resumes():
    import random

    rng = random.Random(0)
    lengths = [rng.choice([20, 25, 30, 160]) + rng.randint(0, 5) for _ in range(400)]
    grouped = batch_indices(400, 16, seed=3, lengths=lengths, window=8)
    epoch = [next(grouped) for _ in range(25)]
    assert sorted(i for b in epoch for i in b) == list(range(400))  # each example once per epoch
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch]
    plain = [next(batch_indices(400, 16, seed=3)) for _ in range(1)]
    assert sum(s < 40 for s in spread) >= 20  # most batches hold one length class
    assert max(lengths[i] for i in plain[0]) - min(lengths[i] for i in plain[0]) > 100  # random ones do not
    second = [next(grouped) for _ in range(25)]
    assert second != epoch  # a new grouping each epoch
    resumed = batch_indices(400, 16, seed=3, start=27, lengths=lengths, window=8)
    assert [next(resumed) for _ in range(3)] == second[2:5]


def test_step_micro_batches_recut_the_steps_examples_by_length():
    lengths = [50, 10, 40, 20, 30, 60, 5, 45]
    draws = [[0, 1], [2, 3], [4, 5], [6, 7]]  # one optimizer step: 4 accumulation draws of a global batch of 2
    assert step_micro_batches(draws, rank=0, per_device=2) == draws  # no grouping: the draws as they come
    grouped = step_micro_batches(draws, rank=0, per_device=2, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(8))  # the same examples in the step
    assert [[lengths[i] for i in b] for b in grouped] == [[5, 10], [20, 30], [40, 45], [50, 60]]
    # two ranks share each global micro-batch: rank 1 takes the second half of every re-cut draw
    wide = [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert step_micro_batches(wide, rank=1, per_device=2, lengths=lengths) == [[3, 4], [0, 5]]


def _uneven_data(folder):
    """Answers of 1 to 12 words: micro-batches of one step then hold very different numbers of answer tokens."""
    folder.mkdir(parents=True)
    records = [{"content": f"步骤#总结*语音#查查{p}", "summary": "，".join([p] * (1 + (i * 5) % 12))}
               for i, p in enumerate(PLACES * 3)]
    for split in ("train", "dev"):
        (folder / f"{split}.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return folder


def test_step_grouping_updates_as_one_big_batch_does(tiny_model_dir, tmp_path):
    """--group-by-length step: 4 length-sorted micro-batches of 2 give the update of one random batch of 8."""
    model, data = tiny_model_dir("glm"), _uneven_data(tmp_path / "data")

    def run(name, **kw):
        fit(fast_config(model, data, tmp_path / name, max_steps=2, learning_rate=1e-2, **kw), log=lambda *_: None)
        return _prefix(tmp_path / name)

    big = run("big", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    step = run("step", per_device_train_batch_size=2, gradient_accumulation_steps=4, group_by_length="step")
    plain = run("plain", per_device_train_batch_size=2, gradient_accumulation_steps=4)
    assert torch.allclose(step, big, rtol=0, atol=EXACT), (step - big).abs().max()
    # averaging per-micro-batch means instead (the ungrouped loop) weighs tokens unequally: a visible difference
    assert (plain - big).abs().max() > max(1e-3, 5 * EXACT)


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_step_grouping_keeps_the_update_for_peft_methods(tiny_model_dir, tmp_path, method):
    """The answer-token normalisation reaches PEFT-wrapped models too (prompt tuning prepends virtual tokens)."""
    if method == "lora" and torch.cuda.is_available():
        pytest.skip("bf16 autocast on CUDA: LoRA's B starts at 0, so Adam's first updates are sign-like and bf16 "
                    "rounding between batch layouts moves them by up to the learning rate")
    model, data = tiny_model_dir("llama"), _uneven_data(tmp_path / "data")

    def run(name, **kw):
        fit(fast_config(model, data, tmp_path / name, method=method, max_steps=2, learning_rate=1e-2,
                        lora_dropout=0.0, **kw), log=lambda *_: None)  # dropout draws depend on the batch shapes
        return load_file(str(tmp_path / name / "adapter_model.safetensors"))

    big = run("big", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    step = run("step", per_device_train_batch_size=2, gradient_accumulation_steps=4, group_by_length="step")
    assert big.keys() == step.keys()
    # 1e-4: LoRA's B starts at 0, so A's first gradients are ~1e-9 and Adam's normalisation scales up float noise
    assert all(torch.allclose(step[k], big[k], rtol=0, atol=max(EXACT, 1e-4)) for k in big)


@pytest.mark.parametrize("arch", ["glm", "llama"])
def test_answer_loss_equals_the_full_logits_loss(tiny_model_dir, tmp_path, arch):
    """The LM head on the answer positions only gives the loss (and gradient) of the full-vocabulary logits."""
    from tasktune.tuning.data import DataConfig, load_records, make_collator, tokenize_dataset
    from tasktune.tuning.model.load import load_model, load_tokenizer
    from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix
    from tasktune.tuning.training.train import answer_loss

    folder, data = tiny_model_dir(arch), _uneven_data(tmp_path / "data")
    tokenizer = load_tokenizer(folder, padding_side="right")
    cfg = DataConfig(max_source_length=64, max_target_length=64)
    examples, _ = tokenize_dataset(load_records(data, "train", cfg), tokenizer, cfg)
    batch = make_collator(tokenizer)([examples[i] for i in (0, 1, 2, 7)])  # answers of different lengths
    assert len({int((row != -100).sum()) for row in batch["labels"]}) > 1
    model = load_model(folder)
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=4))
    grads = {}
    for name, loss_of in {"full": lambda: model(**batch).loss / 2,
                          "answer": lambda: answer_loss(model, batch, accum=2),
                          "full_n": lambda: model(**batch, num_items_in_batch=torch.tensor(37)).loss,
                          "answer_n": lambda: answer_loss(model, batch, torch.tensor(37))}.items():
        tuner.encoder.zero_grad()
        loss = loss_of()
        loss.backward()
        grads[name] = (loss.detach(), tuner.encoder.embedding.weight.grad.clone())
    for full, answer in (("full", "answer"), ("full_n", "answer_n")):
        assert torch.allclose(grads[full][0], grads[answer][0], rtol=1e-5), (grads[full][0], grads[answer][0])
        assert torch.allclose(grads[full][1], grads[answer][1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("answer_logits", [True, False])
def test_fit_takes_the_answer_position_loss_unless_told_not_to(tiny_model_dir, data, tmp_path, monkeypatch,
                                                               answer_logits):
    from tasktune.tuning.training import train

    calls = []
    real = train.answer_loss
    monkeypatch.setattr(train, "answer_loss", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    fit(fast_config(tiny_model_dir("glm"), data, tmp_path / "run", max_steps=2, answer_logits=answer_logits),
        log=lambda *_: None)
    assert len(calls) == (4 if answer_logits else 0)  # 2 steps x 2 micro-batches
