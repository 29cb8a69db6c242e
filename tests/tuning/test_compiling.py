"""--compile (tuning/training/compiling.py): the compiled P-tuning v2 step computes what the eager one does.

Tracing runs with the "aot_eager" backend (dynamo + AOTAutograd, the same graphs inductor would get, no code
generation): fast on CPU and exact. `fullgraph=True` checks that the prefix path has no graph breaks. Both scopes
(each decoder layer, tuning/training/regional.py; the whole model) are checked against eager.
The inductor tests (generated kernels) are marked slow. CUDA graphs: tests/gpu/test_gpu_compile.py.
"""

import json
import re

import pytest
import torch

from tasktune.errors import ConfigError
from tests.tuning.runs import fast_config, write_data
from tasktune.tuning.training import compiling
from tasktune.tuning.model.load import load_model, load_tokenizer
from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix
from tasktune.tuning.training.train import fit


@pytest.fixture(autouse=True)
def _fresh_dynamo(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKTUNE_CACHE", str(tmp_path / "tasktune-cache"))  # never the user's ~/.cache
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # prepare() would set it otherwise
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _setup(model_dir, quantization_bit=None, checkpointing=False):
    model = load_model(model_dir, quantization_bit=quantization_bit)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=4))
    model.config.use_cache = False
    model.train()
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    batch = tokenizer(["步骤#问候*语音#你好", "因为出现地名为济南, 所以函数一参数为济南"], return_tensors="pt",
                      padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    device = model.get_input_embeddings().weight.device  # a 4-bit base sits on the GPU where there is one
    return model, tuner, {k: v.to(device) for k, v in batch.items()}


def _loss_and_grad(forward, tuner, batch):
    loss = forward(**batch).loss
    loss.backward()
    grad = tuner.encoder.embedding.weight.grad.clone()
    tuner.encoder.zero_grad(set_to_none=True)
    return loss.detach(), grad


@pytest.mark.parametrize("scope", compiling.SCOPES)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_prefix_step_equals_eager_in_one_graph(tiny_model_dir, checkpointing, scope):
    model, tuner, batch = _setup(tiny_model_dir("glm"), checkpointing=checkpointing)
    eager = _loss_and_grad(model, tuner, batch)
    compiled = compiling.compile_model(model, "on", fullgraph=True, backend="aot_eager", scope=scope)
    first, second = _loss_and_grad(compiled, tuner, batch), _loss_and_grad(compiled, tuner, batch)
    assert eager[1].abs().sum() > 0
    for loss, grad in (first, second):
        torch.testing.assert_close(loss, eager[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, eager[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scope", compiling.SCOPES)
def test_compiled_4bit_prefix_step_equals_eager(tiny_model_dir, scope):
    pytest.importorskip("bitsandbytes")
    model, tuner, batch = _setup(tiny_model_dir("glm"), quantization_bit=4, checkpointing=True)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    eager = _loss_and_grad(model, tuner, batch)
    # what --compile cudagraphs adds (static quant states): 2 layers x 6 linears x 5 tensors (nested quant)
    assert compiling.mark_quant_state_static(model) == 2 * 6 * 5
    compiled = compiling.compile_model(model, "on", fullgraph=True, backend="aot_eager", scope=scope)
    loss, grad = _loss_and_grad(compiled, tuner, batch)
    torch.testing.assert_close(loss, eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager[1], rtol=1e-4, atol=1e-6)


def _deeper(model_dir, layers: int):
    """The tiny GLM's config with `layers` decoder layers (random weights), a prefix attached, in train mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tuner = attach_prefix(model, PrefixConfig(pre_seq_len=4))
    model.config.use_cache = False
    model.train()
    return model, tuner


@pytest.mark.parametrize("checkpointing", [False, True])
def test_layers_scope_traces_one_layer_whatever_the_depth(tiny_model_dir, checkpointing):
    """Issue 23: a 4-layer model compiles 2 graphs (layer 0, whose input needs no gradient, and the others), of
    one layer's ops each; the whole-model scope traces every layer (4x the ops); both give the eager step."""
    from torch._dynamo.utils import counters

    _, _, batch = _setup(tiny_model_dir("glm"))
    captured = {}
    for scope in ("model", "layers"):
        model, tuner = _deeper(tiny_model_dir("glm"), 4)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        eager = _loss_and_grad(model, tuner, batch)
        torch._dynamo.reset()
        counters.clear()
        compiled = compiling.compile_model(model, "on", fullgraph=True, backend="aot_eager", scope=scope)
        for _ in range(2):
            loss, grad = _loss_and_grad(compiled, tuner, batch)
            torch.testing.assert_close(loss, eager[0], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(grad, eager[1], rtol=1e-5, atol=1e-7)
        captured[scope] = (counters["stats"]["unique_graphs"], counters["stats"]["calls_captured"])
        # layer_idx is only borrowed while a layer runs compiled
        assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    assert captured["layers"][0] == 2 and counters["stats"]["unique_graphs"] == 2
    if not checkpointing:  # ops per layer graph (a checkpointed layer is one call, a higher-order op): x4 in "model"
        assert captured["model"][1] > 4 * captured["layers"][1] // 2


def test_layers_scope_is_training_only_and_undone_by_off(tiny_model_dir):
    """Eval (no grad, eval mode) runs the eager layers, without compiling; mode "off" restores the model."""
    from torch._dynamo.utils import counters

    model, tuner = _deeper(tiny_model_dir("glm"), 3)
    _, _, batch = _setup(tiny_model_dir("glm"))
    with torch.no_grad():
        expected = model(**batch).logits
    assert compiling.compile_model(model, "on", backend="aot_eager", scope="layers") is model
    assert all("forward" in vars(layer) for layer in model.model.layers)
    counters.clear()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected)
    assert counters["stats"]["unique_graphs"] == 0
    model.train()
    model(**batch).loss.backward()
    assert counters["stats"]["unique_graphs"] == 2
    assert compiling.compile_model(model, "off") is model
    assert not any("forward" in vars(layer) for layer in model.model.layers)


def test_compile_scope_from_the_environment(monkeypatch):
    monkeypatch.delenv(compiling.SCOPE_ENV, raising=False)
    assert compiling.compile_scope() == "layers"
    monkeypatch.setenv(compiling.SCOPE_ENV, "model")
    assert compiling.compile_scope() == "model"
    monkeypatch.setenv(compiling.SCOPE_ENV, "everything")
    with pytest.raises(ConfigError, match="TASKTUNE_COMPILE_SCOPE"):
        compiling.compile_scope()


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_inductor_prefix_step_is_close_to_eager(tiny_model_dir, checkpointing):
    model, tuner, batch = _setup(tiny_model_dir("glm"), checkpointing=checkpointing)
    eager = _loss_and_grad(model, tuner, batch)
    compiled = compiling.compile_model(model, "on", fullgraph=True)
    loss, grad = _loss_and_grad(compiled, tuner, batch)
    torch.testing.assert_close(loss, eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager[1], rtol=1e-4, atol=1e-6)


def test_fit_with_compile_on_gives_the_eager_losses(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    data = write_data(tmp_path / "data")
    runs = {}
    for mode in ("off", "on"):
        lines = []
        result = fit(fast_config(tiny_model_dir("glm"), data, tmp_path / mode, compile=mode, max_steps=2),
                     log=lines.append)
        runs[mode] = [h["loss"] for h in result.history]
        # 160 + 160 + eos, rounded up to 8
        assert any(line.startswith("compile: on; batches padded to 328 tokens") for line in lines) == (mode == "on")
    assert runs["on"] == pytest.approx(runs["off"], rel=1e-5)


def test_modes_and_auto():
    assert compiling.resolve_mode("off") == "off"
    assert compiling.resolve_mode("auto", cuda=False) == "off"
    assert compiling.resolve_mode("auto", cuda=True) == compiling.AUTO_CUDA_MODE == "cudagraphs"
    for scope, least in compiling.AUTO_MIN_STEPS.items():
        assert compiling.resolve_mode("auto", cuda=True, steps=least, scope=scope) == "cudagraphs"
        assert compiling.resolve_mode("auto", cuda=True, steps=least - 1, scope=scope) == "off"
    # the regional compile (~22 s cold on a 6B) pays back sooner than the whole model's (~90-140 s)
    assert compiling.AUTO_MIN_STEPS["layers"] < compiling.AUTO_MIN_STEPS["model"]
    # over a base dequantised once (--train-weights) the graphs save more a step: they pay back sooner still
    assert compiling.AUTO_MIN_STEPS["layers-bf16"] < compiling.AUTO_MIN_STEPS["layers"]
    assert compiling.resolve_mode("auto", cuda=True, steps=120, scope="layers-bf16") == "cudagraphs"
    assert compiling.resolve_mode("auto", cuda=True, steps=120, scope="layers") == "off"
    assert compiling.resolve_mode("auto", cuda=True, steps=300, scope="layers") == "cudagraphs"
    assert compiling.resolve_mode("auto", cuda=True, steps=300, scope="model") == "off"
    # a warm compile cache: graphs pay from the first step, whatever the run's length (not on a CPU, not DDP)
    assert compiling.resolve_mode("auto", cuda=True, steps=10, warm=True) == "cudagraphs"
    assert compiling.resolve_mode("auto", cuda=False, steps=10, warm=True) == "off"
    assert compiling.resolve_mode("auto", cuda=True, steps=10, warm=True, processes=2) == "off"
    assert compiling.resolve_mode("auto", method="lora", cuda=True) == "off"
    assert compiling.resolve_mode("auto", cuda=True, processes=2) == "off"
    assert compiling.resolve_mode("auto", task="classification", cuda=True) == "off"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        compiling.resolve_mode("cudagraphs", cuda=False)
    with pytest.raises(ConfigError, match="eager-graphs needs a CUDA GPU"):
        compiling.resolve_mode("eager-graphs", cuda=False)
    assert compiling.resolve_mode("eager-graphs", cuda=True) == "eager-graphs"
    with pytest.raises(ConfigError, match="unknown compile mode"):
        compiling.resolve_mode("fast")


def test_fixed_width_collate_pads_every_batch_to_one_shape():
    def collate(features):
        width = max(len(f) for f in features)
        return {"input_ids": torch.tensor([f + [0] * (width - len(f)) for f in features]),
                "attention_mask": torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in features]),
                "labels": torch.tensor([f + [-100] * (width - len(f)) for f in features])}

    fixed = compiling.fixed_width_collate(collate, 8, pad_id=5)
    batch = fixed([[1, 2, 3], [4]])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 5, 5, 5, 5, 5], [4, 0, 0, 5, 5, 5, 5, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3] + [-100] * 5, [4] + [-100] * 7]
    with pytest.raises(ValueError, match="compiled width"):
        fixed([list(range(9))])


def test_batch_width_covers_the_longest_row():
    cfg = fast_config("m", "d", "o", max_source_length=64, max_target_length=64)
    assert compiling.batch_width(cfg) == 136  # 64 + 64 + eos, rounded up to 8
    cfg.task = "classification"
    assert compiling.batch_width(cfg) == 64


# -- the compile cache -------------------------------------------------------------------------------------------

VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "bitsandbytes": "0.50.2", "tasktune": "0.2.0",
            "python": "3.12.3"}
KEY = dict(batch=4, width=136, mode="cudagraphs", checkpointing="full", method="ptuning-v2", pre_seq_len=128,
           quantization="4", dtype="bfloat16", device="NVIDIA H200 sm90", versions=VERSIONS)
MODEL = {"hidden_size": 4096, "num_hidden_layers": 28, "_name_or_path": "/tmp/glm6b", "transformers_version": "5.17"}


def _key(model=MODEL, **change):
    parts = dict(KEY)
    parts.update(change)
    return compiling.cache_key(model, **parts)


@pytest.mark.parametrize("change", [
    {"batch": 16}, {"width": 520}, {"mode": "on"}, {"checkpointing": "every-2"}, {"method": "prefix"},
    {"pre_seq_len": 64}, {"quantization": "none"}, {"dtype": "float32"}, {"device": "NVIDIA H100 sm90"},
    {"versions": {**VERSIONS, "torch": "2.13.0"}}, {"versions": {**VERSIONS, "transformers": "5.23.0"}},
    {"versions": {**VERSIONS, "tasktune": "0.3.0"}}, {"versions": {**VERSIONS, "bitsandbytes": "0.51.0"}},
    {"scope": "model"}, {"weights": "bf16"},
])
def test_every_key_part_makes_a_new_entry(change):
    assert compiling.key_digest(_key(**change)) != compiling.key_digest(_key())


def test_the_model_part_is_its_config_not_its_path():
    moved = {**MODEL, "_name_or_path": "/elsewhere/glm6b", "transformers_version": "5.23.0"}
    assert compiling.key_digest(_key(moved)) == compiling.key_digest(_key())
    wider = {**MODEL, "hidden_size": 2048}
    assert compiling.key_digest(_key(wider)) != compiling.key_digest(_key())


@pytest.fixture
def fake_artifacts(monkeypatch):
    """torch.compiler's save/load replaced: what would be saved, and what was loaded."""
    seen = {"save": b"compiled graphs", "loaded": []}
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (seen["save"], None) if seen["save"] else None)

    def load(data):
        if data.startswith(b"bad"):
            raise RuntimeError("truncated")
        seen["loaded"].append(data)
        return object()

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    return seen


def test_an_entry_is_saved_once_and_loaded_by_the_next_run(tmp_path, fake_artifacts):
    first = compiling.CompileCache(tmp_path, _key())
    assert not first.warm() and first.load() is False  # nothing yet, and no warning
    assert first.save_once() is True and first.save_once() is False  # once per run
    assert json.loads((first.folder / "key.json").read_text()) == _key()
    assert (first.folder / "artifacts.bin").read_bytes() == b"compiled graphs"
    again = compiling.CompileCache(tmp_path, _key())
    assert again.warm() and again.load() is True and fake_artifacts["loaded"] == [b"compiled graphs"]
    assert again.save_once() is False  # a loaded entry is not rewritten
    assert not compiling.CompileCache(tmp_path, _key(batch=16)).warm()  # other shapes: another (cold) entry


def test_nothing_compiled_writes_no_entry(tmp_path, fake_artifacts):
    fake_artifacts["save"] = b""  # e.g. the aot_eager backend: no inductor artifacts
    cache = compiling.CompileCache(tmp_path, _key())
    assert cache.save_once() is False and not cache.folder.exists()


@pytest.mark.parametrize("damage, why", [
    ({"key.json": "{not json"}, "key.json is unreadable"),
    ({"key.json": json.dumps({"batch": 99})}, "key.json does not match"),
    ({"artifacts.bin": b""}, "artifacts.bin is empty"),
    ({"artifacts.bin": b"bad bytes"}, "artifacts.bin could not be loaded (RuntimeError: truncated)"),
])
def test_a_corrupt_entry_is_ignored_with_one_warning_and_rewritten(tmp_path, fake_artifacts, damage, why):
    compiling.CompileCache(tmp_path, _key()).save_once()
    cache = compiling.CompileCache(tmp_path, _key())
    for name, content in damage.items():
        path = cache.folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.warns(RuntimeWarning, match="compile cache: .*" + re.escape(why)) as caught:
        assert cache.load() is False
    assert len(caught) == 1 and fake_artifacts["loaded"] == []
    assert cache.save_once() is True  # the first step's graphs replace it
    assert compiling.CompileCache(tmp_path, _key()).warm()


def test_cache_folder_and_off(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("TASKTUNE_CACHE", str(tmp_path / "tt"))
    assert compiling.cache_root() == tmp_path / "tt" / "compile"
    monkeypatch.delenv("TASKTUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiling.cache_root() == tmp_path / "xdg" / "tasktune" / "compile"
    model = load_model(tiny_model_dir("glm"))
    cfg = fast_config("m", "d", tmp_path / "o", compile="on")
    entry = compiling.run_cache(cfg, model, checkpointing="full", mode="on")
    assert entry.parts["width"] == 328 and entry.parts["checkpointing"] == "full"
    assert entry.parts["versions"]["torch"] == torch.__version__
    cfg.compile_cache = "off"
    assert compiling.run_cache(cfg, model, checkpointing="full", mode="on") is None


def test_fit_with_compile_on_writes_no_entry_without_inductor(tiny_model_dir, tmp_path, monkeypatch):
    """aot_eager (the CPU tests' backend) has no artifacts to keep: the run record still says what ran."""
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    data = write_data(tmp_path / "data")
    result = fit(fast_config(tiny_model_dir("glm"), data, tmp_path / "run", compile="on", max_steps=1,
                             gradient_checkpointing="every-2"), log=lambda line: None)
    record = json.loads((result.run_dir / "tasktune_run.json").read_text())
    assert record["compile"] == "on"
    assert record["checkpointing"]["mode"] == "every-2" and record["config"]["gradient_checkpointing"] == "every-2"
    assert not (tmp_path / "tasktune-cache" / "compile").exists()


@pytest.mark.slow
def test_inductor_graphs_come_back_from_the_cache(tmp_path, monkeypatch):
    """A real round trip (CPU inductor, a tiny module): compile and save; then, with inductor's own on-disk cache
    emptied (another TORCHINDUCTOR_CACHE_DIR) and dynamo reset, load the entry: the graphs are cache hits."""
    from torch._dynamo.utils import counters

    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    x = torch.randn(4, 16)

    def step():
        torch.compile(module, backend="inductor", dynamic=False)(x).sum().backward()

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-1"))
    step()
    assert compiling.CompileCache(tmp_path / "c", _key()).save_once()
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-2"))
    assert compiling.CompileCache(tmp_path / "c", _key()).load()
    step()
    assert counters["inductor"]["fxgraph_cache_hit"] >= 2 and counters["inductor"]["fxgraph_cache_miss"] == 0


def test_cuda_graphs_of_a_checkpointed_model_keep_the_whole_model_scope(monkeypatch):
    """Per-layer CUDA graphs failed the checkpointed GPU case (tests/gpu): graphs + checkpointing trace the whole
    model, everything else follows the scope setting; the cache key follows the same choice."""
    monkeypatch.delenv(compiling.SCOPE_ENV, raising=False)
    assert compiling.resolve_scope("cudagraphs", checkpointed=True) == "model"
    assert compiling.resolve_scope("cudagraphs", checkpointed=False) == "layers"
    assert compiling.resolve_scope("on", checkpointed=True) == "layers"
    monkeypatch.setenv(compiling.SCOPE_ENV, "model")
    assert compiling.resolve_scope("on", checkpointed=False) == "model"


@pytest.mark.parametrize("checkpointing, steps, expect", [
    ("none", 300, "cudagraphs"),  # layers scope: a cold 300-step run compiles
    ("none", 200, "off"),
    ("full", 300, "off"),  # checkpointed graphs compile the whole model: a cold run needs 1000 steps
    ("full", 1000, "cudagraphs"),
])
def test_auto_plan_sets_the_step_threshold_by_the_scope_it_would_compile(monkeypatch, checkpointing, steps, expect):
    """plan(): `--compile auto` on one (pretended) CUDA GPU with a cold cache; the checkpointing the memory estimate
    picks decides the scope (resolve_scope), and the scope how long a run must be to compile."""
    from tasktune.tuning.training import memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(compiling, "run_cache", lambda *a, **k: None)  # --compile-cache off: never warm
    monkeypatch.setattr(memory, "resolve", lambda *a, compiled, **k: memory.Choice(
        checkpointing if compiled else "none", "auto"))
    cfg = fast_config("unused", "unused", "unused", max_steps=steps)
    assert cfg.compile == "auto" and cfg.method == "ptuning-v2"
    planned = compiling.plan(cfg, torch.nn.Linear(2, 2), device=torch.device("cuda"))
    assert planned.compile == expect
    assert planned.checkpointing.mode == (checkpointing if expect != "off" else "none")


@pytest.mark.parametrize("weights, steps, expect", [
    ("auto", 120, "cudagraphs"),  # the copies fit: graphs over them pay back after AUTO_MIN_STEPS["layers-bf16"]
    ("auto", 99, "eager-graphs"),  # shorter and cold: graphs of the eager kernels (no compile to pay back)
    ("4bit", 120, "eager-graphs"),  # over the 4-bit linears a cold inductor compile needs 250 steps
])
def test_auto_plan_over_dequantised_weights_compiles_shorter_runs(monkeypatch, weights, steps, expect):
    """plan() with a 4-bit base on one (pretended) CUDA GPU, a cold cache and no checkpointing: the weights chosen
    (base_weights.py) are in the plan and set the threshold of a cold run."""
    from tasktune.tuning.model import dequantize
    from tasktune.tuning.training import memory

    monkeypatch.setattr(dequantize, "added_bytes", lambda model: 8 * memory.GIB)  # the 6B GLM's copies
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(compiling, "run_cache", lambda *a, **k: None)
    monkeypatch.setattr(memory, "resolve", lambda *a, **k: memory.Choice("none", "auto", 6 * memory.GIB,
                                                                         80 * memory.GIB, "free on cuda:0"))
    cfg = fast_config("unused", "unused", "unused", max_steps=steps, train_weights=weights)
    planned = compiling.plan(cfg, torch.nn.Linear(2, 2), device=torch.device("cuda"), quant=4)
    assert planned.compile == expect
    assert planned.weights.mode == ("bf16" if weights == "auto" else "4bit")


def test_checkpointing_is_read_without_transformers_deprecation_warning(tiny_model_dir):
    """compile_model read `model.is_gradient_checkpointing`, which transformers 5.2x deprecated: every compiled
    run printed a FutureWarning the user could do nothing about. The new name is read where it exists, through a
    PEFT wrapper too."""
    import warnings

    from transformers import AutoModelForCausalLM

    from tasktune.tuning.training import memory

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("glm"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compiling.checkpointing_on(model) is False
        memory.apply(model, "full")  # (transformers' own new or old switch, as training sets it)
        assert compiling.checkpointing_on(model) is True


@pytest.mark.parametrize("budget_gib, weights, expect, trained", [
    (80, "auto", "eager-graphs", "bf16"),  # 6 + 8 (copies) + 8 + their graph copy (~8) fits 80 GiB
    (20, "auto", "eager-graphs", "4bit"),  # bf16 and its graph copy would not: the 4-bit weights and theirs do
    (6.2, "auto", "off", "4bit"),  # not even the 4-bit weights' graph copy fits: eager
    (20, "bf16", "off", "bf16"),  # bf16 asked for and no room for its graph copy: eager over bf16, as asked
])
def test_a_short_cold_auto_run_takes_eager_graphs_where_their_copies_fit(monkeypatch, budget_gib, weights, expect,
                                                                          trained):
    """plan(): a 50-step `--compile auto` run on one (pretended) CUDA GPU with a cold cache and no checkpointing:
    graphs of the eager kernels when their copy of the layers' weights (memory.eager_graphs_extra) fits the
    budget beside the estimate, over the bf16 copies first; else eager. No compile cache entry is kept for them."""
    from tasktune.tuning.model import dequantize
    from tasktune.tuning.training import memory

    def extra(model, *, tokens, element_bytes=2, added_bytes=0):
        return int(0.25 * memory.GIB + added_bytes)  # packed layers ~0.25 GiB (a stand-in), + the copies if bf16

    monkeypatch.setattr(dequantize, "added_bytes", lambda model: 8 * memory.GIB)
    monkeypatch.setattr(memory, "eager_graphs_extra", extra)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(compiling, "run_cache", lambda *a, **k: pytest.fail("eager-graphs keeps no cache entry")
                        if k.get("mode") == "eager-graphs" else None)
    budget = int(budget_gib * memory.GIB)
    monkeypatch.setattr(memory, "resolve", lambda *a, **k: memory.Choice("none", "auto", 6 * memory.GIB, budget,
                                                                         "free on cuda:0"))
    cfg = fast_config("unused", "unused", "unused", max_steps=50, train_weights=weights)
    planned = compiling.plan(cfg, torch.nn.Linear(2, 2), device=torch.device("cuda"), quant=4)
    assert planned.compile == expect
    assert planned.weights.mode == trained
    assert planned.cache is None
    if expect == "eager-graphs":
        assert planned.weights.estimate_bytes <= budget * (1 - memory.HEADROOM)


def test_eager_graphs_extra_is_the_layers_weights_and_copies(tiny_model_dir):
    """memory.eager_graphs_extra: the decoder layers' parameter bytes, plus the dequantised copies' added bytes, plus
    a per-token term; nothing for a model without decoder layers."""
    from transformers import AutoModelForCausalLM

    from tasktune.tuning.model.layers import decoder_layers
    from tasktune.tuning.training import memory

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("glm"))
    layers = sum(p.numel() * p.element_size() for layer in decoder_layers(model) for p in layer.parameters())
    plain = memory.eager_graphs_extra(model, tokens=0)
    assert plain == layers > 0
    assert memory.eager_graphs_extra(model, tokens=0, added_bytes=1000) == layers + 1000
    assert memory.eager_graphs_extra(model, tokens=100) > plain
    assert memory.eager_graphs_extra(torch.nn.Linear(2, 2), tokens=100) == 0


def test_an_entry_holds_only_what_its_own_run_compiled(tmp_path):
    """Loading (or finding no) entry forgets the artifacts torch.compile recorded earlier in the process, so the
    entry saved after this run's first step is this run's alone (an earlier run's inductor graphs were saved
    under the next run's key, and an aot_eager run after them wrote an entry it never compiled)."""
    from torch.compiler._cache import CacheArtifactManager

    CacheArtifactManager._new_cache_artifacts["stale"].append(object())  # an earlier run's record
    cache = compiling.CompileCache(tmp_path, {"run": 2})
    assert cache.load() is False  # no entry yet
    assert not CacheArtifactManager._new_cache_artifacts
    assert cache.save_once() is False and not cache.folder.exists()  # nothing compiled since: nothing written
