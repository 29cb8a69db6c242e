"""Data-parallel training on the CPU: 2 processes over gloo (the CI stand-in for multi-GPU).

Launchers: torchrun, `make train GPUS=N` (torchrun --standalone) and `accelerate launch` with a MULTI_GPU
config. On a machine without CUDA that config still starts N processes (torchrun underneath) and tasktune's
Accelerator(cpu=True) joins them over gloo. `accelerate launch --cpu --num_processes 2` is NOT the CPU
equivalent: accelerate 1.15 starts ONE process for it (its multi-CPU mode needs mpirun and a hostfile).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasktune.errors import ConfigError
from tests.tuning.runs import fast_config, write_data
from tasktune.tuning.training import checkpoint as ckpt


def _train_args(model, data, out, per_device, method="ptuning-v2"):
    prefix = ["--pre-seq-len", "4"] if method == "ptuning-v2" else []  # lora: refused, as it does not read it
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), *prefix,
            "--max-steps", "6", "--per-device-train-batch-size", str(per_device), "--gradient-accumulation-steps",
            "2", "--learning-rate", "0.1", "--save-steps", "3", "--logging-steps", "1", "--max-source-length",
            "160", "--max-target-length", "160", "--quantization-bit", "none", "--seed", "3"]


def _env():
    # the CPU stand-in on every machine: on a GPU host the 2 ranks would otherwise share one GPU (NCCL refuses)
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")


@pytest.mark.slow
@pytest.mark.parametrize("grouping, rel", [("none", 0.05), ("step", 1e-5)])
def test_two_processes_match_one_at_equal_global_batch(tiny_model_dir, tmp_path, grouping, rel):
    """Same batches at every step. Ungrouped, each rank's loss is the mean over its own answer tokens, so 2
    processes weight the examples slightly differently from 1 (within 5 %). `--group-by-length step` divides by the
    step's token count over all ranks: the same loss and update as 1 process, up to float summation order."""
    model, data = tiny_model_dir("glm"), write_data(tmp_path / "data")
    extra = ["--group-by-length", grouping]
    single = subprocess.run([sys.executable, "-m", "tasktune", *_train_args(model, data, tmp_path / "one", 4), *extra],
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "-m", "tasktune",
                          *_train_args(model, data, tmp_path / "two", 2), *extra],
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "train_history.json").read_text())
    two = json.loads((tmp_path / "two" / "train_history.json").read_text())
    assert [h["step"] for h in one] == [h["step"] for h in two]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=rel), (one, two)
    if grouping == "step":
        w1 = load_file(tmp_path / "one" / "adapter_model.safetensors")
        w2 = load_file(tmp_path / "two" / "adapter_model.safetensors")
        for k in w1:
            assert torch.allclose(w1[k], w2[k], atol=1e-4), (k, (w1[k] - w2[k]).abs().max())
    # only rank 0 writes: one "done" line, one run record
    assert (ddp.stdout + ddp.stderr).count("done: 6 steps") == 1
    assert json.loads((tmp_path / "two" / "tasktune_run.json").read_text())["steps"] == 6


# -- launchers -----------------------------------------------------------------------------------

def test_make_train_gpus_n_wraps_torchrun(tmp_path):
    """The recipe line itself (make -n: nothing runs; -o install: no pip)."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[2]

    def recipe(*variables):
        out = subprocess.run(["make", "-n", "-o", "install", "-C", str(root), "train", *variables],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if " train " in line][-1]

    two = recipe("GPUS=2", "STEPS=3", "ARGS=--per-device-train-batch-size 8")
    # --standalone: a free rendezvous port, so two runs on one machine do not collide on 29500
    assert ".venv/bin/torchrun --standalone --nproc-per-node 2 -m tasktune train --config " in two, two
    assert two.endswith("--max-steps 3 --per-device-train-batch-size 8"), two
    one = recipe("GPUS=1")
    assert "torchrun" not in one and ".venv/bin/tasktune train --config " in one, one


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accelerate_config(folder: Path) -> Path:
    """MULTI_GPU x 2 (see the module docstring); written here so no ~/.cache default config leaks in."""
    path = folder / "accelerate-ddp.yaml"
    path.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                    f"num_processes: 2\ngpu_ids: all\nmixed_precision: 'no'\nmain_process_port: {_free_port()}\n")
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    return out


# a run long enough to resume from its first checkpoint: every checkpoint kept, dropout on
_RESUME_ARGS = ["--save-steps", "2", "--save-total-limit", "0"]
_DROPOUT = {"ptuning-v2": ["--prefix-dropout", "0.1"], "lora": ["--lora-dropout", "0.1"]}


def _method_args(method: str) -> list[str]:
    return ["--method", method, *_DROPOUT[method], *_RESUME_ARGS]


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tmp_path_factory):
    """Factory: method -> (model, data, run folder, launcher output) of one uninterrupted 2-process run."""
    cache = {}

    def make(method: str):
        if method not in cache:
            root = tmp_path_factory.mktemp(f"ddp-{method}")
            model, data, run = tiny_model_dir("glm"), write_data(root / "data"), root / "run"
            out = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                        str(_accelerate_config(root)), "-m", "tasktune",
                        *_train_args(model, data, run, 2, method), *_method_args(method)])
            cache[method] = (model, data, run, out)
        return cache[method]

    return make


@pytest.mark.slow
def test_accelerate_launch_trains_on_two_processes_and_rank0_writes_once(two_process_run):
    _, _, run, out = two_process_run("ptuning-v2")
    text = out.stdout + out.stderr
    # both processes took part: the global batch is 2 per device x 2 processes x 2 accumulation steps
    assert json.loads((run / "fingerprint.json").read_text())["global_batch"] == 8
    for line in ("train examples:", "trainable parameters:", "done: 6 steps"):  # rank 0 logs, once
        assert text.count(line) == 1, (line, text[-3000:])
    assert [d.name for d in ckpt.checkpoint_dirs(run)] == ["step-000002", "step-000004", "step-000006"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004", "step-000006"]
    assert len(list((run / "logs").iterdir())) == 1  # one TensorBoard event file
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "fingerprint.json", "loss.png", "tasktune_adapter.json",
         "tasktune_method.json", "tasktune_run.json", "train_history.json"])
    assert [h["step"] for h in json.loads((run / "train_history.json").read_text())] == [1, 2, 3, 4, 5, 6]
    state = ckpt.read_state(run / "checkpoints" / "step-000002")
    assert len(state["rng_ranks"]) == 2  # every rank's RNG, for an exact resume on 2 processes


# -- resume --------------------------------------------------------------------------------------

def _stopped_after_first_checkpoint(run: Path, into: Path) -> Path:
    """`into` as a run killed right after its step-2 checkpoint was written (checkpoints are atomic)."""
    (into / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step-000002", into / "checkpoints" / "step-000002")
    shutil.copy(run / "fingerprint.json", into / "fingerprint.json")
    return into


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter_model.safetensors"))


def _losses(run: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run / "train_history.json").read_text())]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ptuning-v2", "lora"])
def test_two_process_run_resumes_exactly_on_two_processes(two_process_run, tmp_path, method):
    """Bitwise: the grads are all-reduced, so every rank holds the same weights and optimizer state (rank 0's
    are saved); each rank gets its own RNG back (LoRA's dropout masks span padded per-rank lengths, so the
    ranks' streams differ; with rank 0's RNG on both ranks the LoRA run drifted by 0.2 after 4 steps)."""
    model, data, straight, _ = two_process_run(method)
    resumed = _stopped_after_first_checkpoint(straight, tmp_path / "resumed")
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "tasktune", *_train_args(model, data, resumed, 2, method), *_method_args(method)])
    assert "resuming from" in out.stdout and "at step 2" in out.stdout
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(resumed) == _losses(straight)


@pytest.mark.slow
def test_two_process_checkpoint_resumes_on_one_process_at_equal_global_batch(two_process_run, tmp_path):
    """batch_indices cuts the stream into global micro-batches of per-device x processes and rank r takes
    slice r, so 1 process x 4 sees exactly the examples of 2 processes x 2 at every step: the resume is
    allowed (the fingerprint's global batch matches). It is close, not bitwise: the loss is the mean of 2
    per-rank token means there, 1 token mean here, and the one process continues rank 0's RNG.
    The one process runs on the CPU like the two (in this process, a GPU host would resume in bf16 on CUDA)."""
    model, data, straight, _ = two_process_run("ptuning-v2")
    resumed = _stopped_after_first_checkpoint(straight, tmp_path / "resumed")
    out = _run([sys.executable, "-m", "tasktune", *_train_args(model, data, resumed, 4), *_method_args("ptuning-v2")])
    assert "resuming from" in out.stdout
    one, two = _losses(resumed), _losses(straight)
    assert one[:2] == two[:2]  # the history up to the checkpoint comes from it
    assert one[2:] == pytest.approx(two[2:], rel=0.005), (one, two)  # measured: 0.05% at most
    a, b = _weights(straight)["prompt_embeddings"], _weights(resumed)["prompt_embeddings"]
    # measured: 0.009 at most, where steps 3-6 moved the prefix by 2.8 (L2)
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=0, atol=0.05), (a - b).abs().max()


def test_a_different_global_batch_cannot_resume(tiny_model_dir, tmp_path):
    """2 processes x 2 per device checkpointed; 1 process x 2 per device is another data order: refused."""
    run = tmp_path / "run"
    run.mkdir()
    ckpt.write_fingerprint(run, {"global_batch": 8})
    ckpt.write_checkpoint(run, 2, save_adapter_fn=lambda folder: None, state={"step": 2}, keep=0)
    with pytest.raises(ConfigError, match="global_batch: checkpoint has 8, this run has 4"):
        ckpt.find_resume_point(run, "auto", {"global_batch": 4})


def test_each_rank_resumes_its_own_rng():
    r0, r1 = {"torch": torch.tensor([0])}, {"torch": torch.tensor([1])}
    state = {"rng": r0, "rng_ranks": [r0, r1]}
    assert ckpt.rng_state_for_rank(state, 1, 2) is r1 and ckpt.rng_state_for_rank(state, 0, 2) is r0
    assert ckpt.rng_state_for_rank(state, 0, 1) is r0  # another process count: rank 0's for everyone
    assert ckpt.rng_state_for_rank({"rng": r0}, 1, 2) is r0  # single-process or Ctrl-C checkpoint


# -- sharding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("var", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_fsdp_or_deepspeed_launch_is_refused(tmp_path, monkeypatch, var):
    """The loop shards nothing; an FSDP/DeepSpeed config would silently run as plain replication
    (measured: an FSDP2 config on 2 CPU processes gave the DDP losses to the last digit). Refused before
    anything is read: the model and data folders here do not even exist."""
    from tasktune.tuning.training.train import fit

    monkeypatch.setenv(var, "true")
    with pytest.raises(ConfigError, match="does not shard the base model.*docs/multi-gpu.md"):
        fit(fast_config(tmp_path / "model", tmp_path / "data", tmp_path / "run"), log=lambda *_: None)
    assert not (tmp_path / "run").exists()


_FSDP2_PROBE = '''
"""2 processes: P-tuning v2 on the frozen base as-is, then on the base sharded by FSDP2; prints both."""
import json, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from tasktune.tuning.model import methods
from tasktune.tuning.config import TrainConfig
from tasktune.tuning.data import DataConfig, load_records, make_collator, tokenize_dataset
from tasktune.tuning.model.load import load_tokenizer

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = TrainConfig(model=sys.argv[1], data=sys.argv[2], out="unused", pre_seq_len=4, quantization_bit="none")
data_cfg = DataConfig(max_source_length=160, max_target_length=160)
records = load_records(cfg.data, "train", data_cfg)
examples, _ = tokenize_dataset(records, load_tokenizer(cfg.model, padding_side="right"), data_cfg)
collate = make_collator(load_tokenizer(cfg.model, padding_side="right"))


def train(shard):
    torch.manual_seed(3)
    model = methods.load_base(cfg, quantization=None)
    adapter = methods.attach(model, cfg)
    params = adapter.parameters()
    if shard:  # the frozen layers and the root (embeddings, head) sharded; the prefix stays whole
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model, ignored_params=set(params))
        assert type(model.get_input_embeddings().weight).__name__ == "DTensor"
        assert type(params[0]).__name__ == "Parameter"
    optimizer = torch.optim.AdamW(params, lr=0.1)
    model.train()
    losses = []
    for step in range(3):
        ids = list(range(4 * step, 4 * step + 4))[2 * rank:2 * rank + 2]
        loss = model(**collate([examples[i] for i in ids])).loss
        loss.backward()
        for p in params:  # what fit() does with the trainable grads
            dist.all_reduce(p.grad)
            p.grad /= world
        optimizer.step()
        optimizer.zero_grad()
        dist.all_reduce(total := loss.detach().clone())
        losses.append(total.item() / world)
    return losses, params[0].detach().clone()


plain, sharded = train(False), train(True)
if rank == 0:
    print("RESULT", json.dumps({"plain": plain[0], "sharded": sharded[0], "equal": torch.equal(plain[1], sharded[1])}))
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_fsdp2_sharded_frozen_base_trains_the_prefix_as_unsharded(tiny_model_dir, tmp_path):
    """Evidence for docs/multi-gpu.md (not a tasktune feature yet): FSDP2's fully_shard on the frozen layers and
    root, the P-tuning v2 prefix left whole (ignored_params) and all-reduced as fit() does, trains bitwise as the
    unsharded model on 2 CPU processes over gloo. What it cannot show here: the GPU memory saving."""
    script = tmp_path / "fsdp2_probe.py"
    script.write_text(_FSDP2_PROBE)
    repo = str(Path(__file__).resolve().parents[2])  # ahead of, not instead of, the caller's path
    env = dict(_env(), PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(tiny_model_dir("glm")), str(write_data(tmp_path / "data"))],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[:3000] + "\n...\n" + out.stderr[-1000:]  # a rank's traceback comes first
    result = json.loads(out.stdout.split("RESULT", 1)[1])
    assert result["plain"] == result["sharded"] and result["equal"], result
