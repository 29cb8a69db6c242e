"""`--compile`: run the training forward+backward through torch.compile (and CUDA graphs), issue #6.

A 4-bit 6B step at batch 4 is host-bound in eager mode: ~5,000-7,300 small kernel launches and the Python of
transformers' decoder layers and bitsandbytes' wrappers take 150-275 ms for 52-72 ms of GPU work
(benchmarks/NOTES.md). torch.compile turns the decoder layers (prefix attention, 4-bit matmuls as bitsandbytes'
registered custom ops) into graphs with fused elementwise kernels; "cudagraphs" (mode="reduce-overhead") also
replays them as CUDA graphs, which removes the launch cost and bitsandbytes' per-call Python.

Scope (issue 23, `compile_scope`, $TASKTUNE_COMPILE_SCOPE): "layers" (the default) compiles each decoder layer
in place through one shared compiled function (tuning/training/regional.py): one layer is traced and its graphs
serve all of them (2 graphs for any depth), the embedding, prefix hook, LM head and loss stay eager. "model" (issue
6's path) traces the whole model into one graph (two frames: the prefix pre-hook and the model). Why: dynamo and
AOTAutograd re-trace in every process, even with a warm cache, and the whole model's trace grows with its depth;
on a CPU (narrow 28-layer GLM, aot_eager) the first compile took 4.1 s at 7 layers and 11.8 s at 28 for "model",
1.5 s at both depths for "layers" (benchmarks/gpu_run.sh `warm23l` measures the 6B). With CUDA graphs "layers"
replays ~56 small graphs a step (forward and backward per layer) instead of 2, plus the eager ends.

Modes: off; on (inductor); cudagraphs (inductor + CUDA graphs); auto = AUTO_CUDA_MODE on a CUDA GPU for
AUTO_METHODS in runs of at least AUTO_MIN_STEPS optimizer steps (250 when the decoder layers are compiled one by one,
100 when they run over a base dequantised once, 1000 for the whole model) or with a warm compile cache entry (below), off
elsewhere (CPU, multi-process, or a short run without cached graphs: the compile time outweighs any gain). Measured on an H100/H200 (benchmarks/RESULTS.md, `gpu_run.sh compile6b`): a 6B
4-bit step at batch 4, 64/64, checkpointed, 286 ms eager, 122 ms compiled, 45-47 ms with CUDA graphs; the first
step takes 85-120 s to compile, and CUDA graphs keep ~0.85 GiB more memory (5.16 vs 4.32 GiB allocated).
Compiled steps need fixed shapes: `tasktune train` pads every batch to its longest possible row, so the
model compiles once (the first step takes the compile time: tens of seconds to minutes for a 6B model).

Compile once (issue 23): the compiled graphs (torch.compile's cache artifacts: inductor's generated kernels, the
AOTAutograd graphs; `torch.compiler.save_cache_artifacts` after the first step, `load_cache_artifacts` before the
next run's first step) are kept in `$TASKTUNE_CACHE/compile` (default `~/.cache/tasktune/compile`), one folder per
`cache_key`: a hash of the model's config, the shapes (micro-batch, padded width, prefix length), the
checkpointing, compile mode and scope, quantization and autocast dtype, the GPU, and the torch / transformers /
bitsandbytes / tasktune / Python versions; `key.json` beside `artifacts.bin` lists those parts. Invalidation: any
part changes -> another folder (a cold compile, then saved there; old folders stay until deleted: `rm -rf` the
cache folder is always safe); an unreadable or mismatched entry -> one warning, compiled afresh and rewritten;
`--compile-cache off` neither reads nor writes. Even with the artifacts loaded, dynamo re-traces what it compiles
(one layer with scope "layers"; the whole model, seconds, with "model"), but inductor's code generation and kernel
compilation are skipped (dynamo's caching_precompile, which would skip the trace too, fails on this model in torch
2.13). Unless TORCHINDUCTOR_CACHE_DIR is set, inductor's own (content-keyed) cache goes to
`<cache>/compile/inductor` too, instead of /tmp.

`auto` and the cache: a run shorter than AUTO_MIN_STEPS uses graphs too when the cache holds a warm entry for
exactly its key (someone paid the compile before). A cold one takes "eager-graphs" instead (GRAPH_MODES: CUDA graphs
of the eager kernels, no inductor, so nothing to compile or cache) where its estimate, with the graphs' copy of the
layers' weights (memory.eager_graphs_extra), fits without checkpointing: over the bf16 copies, else over the 4-bit
weights; else it stays eager.

Longer than 300 lines because compiling the step, its CUDA-graph plan and the persistent compile cache (key,
invalidation) are one decision made once per run; the measurements behind each rule are quoted next to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tasktune.errors import ConfigError, TaskTuneWarning
from tasktune.files import read_text_file
from tasktune.tuning.training import memory, regional

MODES = ("auto", "off", "on", "cudagraphs", "eager-graphs")
#: Modes that replay CUDA graphs (their backward writes into a graph pool: gradients need buffers, `step_begin`).
#: "eager-graphs": CUDA graphs of the eager kernels, recorded by dynamo's cudagraphs backend (no inductor code
#: generation): on an H100 (2026-12-08, 6B GLM, 4 x 64/64, bf16 copies, cold) its first step took 5.5 s and later
#: steps 60 ms (2.4x the PEFT recipe's 146 ms), against inductor's graphs at 13.7 s and 40 ms; it keeps a copy of
#: the layers' weights in the graph pool (memory.eager_graphs_extra).
GRAPH_MODES = ("cudagraphs", "eager-graphs")
#: What `auto` picks on a CUDA GPU for methods where it was measured (see benchmarks/RESULTS.md).
AUTO_CUDA_MODE = "cudagraphs"
#: `auto` compiles only runs this long, by the scope the compile would use (`resolve_scope`). "model": at ~0.24 s
#: saved per 6B step, ~100 s of compile pays back after ~400 steps; the margin covers smaller models, whose steps
#: save less. "layers" (H100, 2026-12-05, `gpu_run.sh warm23l`): the cold first step takes 21.8 s and the second
#: ~3.5 s (graph recording) against ~0.2 s eager, and a step then saves ~0.11 s against eager without
#: checkpointing (169 -> 50-58 ms): paid back after ~230 steps. "layers-bf16", the layers over a base dequantised
#: once (--train-weights, base_weights.py; H200, 2026-12-06, `gpu_run.sh tw23`): cold first step 14.9 s then 32 ms
#: a step, against eager's 3.0 s, ~8 s more over its next 10 steps (new shapes) and ~95 ms a step: even after ~100.
AUTO_MIN_STEPS = {"layers": 250, "layers-bf16": 100, "model": 1000}
#: Methods (causal-lm task) for which `auto` may turn compilation on: the ones the 6B bench measured.
AUTO_METHODS = ("ptuning-v2", "prefix")
#: torch.compile backend (tests use "aot_eager": the same tracing, no code generation).
BACKEND = "inductor"
#: $TASKTUNE_COMPILE_BACKEND (experiment, issue 23): "cudagraphs" records CUDA graphs of the eager kernels
#: (dynamo's cudagraphs backend: the same graph trees, no inductor code generation, so a cold start of seconds).
BACKEND_ENV = "TASKTUNE_COMPILE_BACKEND"
BACKENDS = ("inductor", "cudagraphs")
#: What torch.compile traces (issue 23, `compile_scope`): each decoder layer, or the whole model in one graph.
SCOPES = ("layers", "model")
SCOPE_ENV = "TASKTUNE_COMPILE_SCOPE"


def auto_eligible(*, method: str, task: str, cuda: bool, processes: int) -> bool:
    """Whether `auto` may compile this run at all (graphs under DDP, processes > 1: not measured)."""
    return cuda and processes == 1 and method in AUTO_METHODS and task == "causal-lm"


def resolve_mode(mode: str, *, method: str = "ptuning-v2", task: str = "causal-lm", cuda: bool | None = None,
                 steps: int | None = None, processes: int = 1, warm: bool = False, scope: str = "model") -> str:
    """"auto" -> "off"/"on"/"cudagraphs" for this run; checks the name and that cudagraphs has a GPU.
    `warm`: the compile cache holds this run's graphs (then a short run compiles too); `scope`: what the compile
    would trace (`resolve_scope`), which sets how long a cold run must be (AUTO_MIN_STEPS)."""
    import torch

    if mode not in MODES:
        raise ConfigError(f"unknown compile mode {mode!r}; choose one of {', '.join(MODES)}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if mode == "auto":
        long_run = steps is None or steps >= AUTO_MIN_STEPS[scope] or warm
        ok = long_run and auto_eligible(method=method, task=task, cuda=cuda, processes=processes)
        return AUTO_CUDA_MODE if ok else "off"
    if mode in GRAPH_MODES and not cuda:
        raise ConfigError(f"--compile {mode} needs a CUDA GPU; use --compile on (or off) on a CPU")
    return mode


def compile_backend() -> str:
    """torch.compile's backend: $TASKTUNE_COMPILE_BACKEND, else BACKEND (the tests' "aot_eager" included)."""
    backend = os.environ.get(BACKEND_ENV) or BACKEND
    if os.environ.get(BACKEND_ENV) and backend not in BACKENDS:
        raise ConfigError(f"{BACKEND_ENV}={backend!r}: choose one of {', '.join(BACKENDS)}")
    return backend


def compile_scope() -> str:
    """What torch.compile traces: $TASKTUNE_COMPILE_SCOPE ("layers" by default, or "model", the issue-6 path)."""
    scope = os.environ.get(SCOPE_ENV) or "layers"
    if scope not in SCOPES:
        raise ConfigError(f"{SCOPE_ENV}={scope!r}: choose one of {', '.join(SCOPES)}")
    return scope


def resolve_scope(mode: str, *, checkpointed: bool, scope: str | None = None) -> str:
    """The scope a compile of `mode` uses: `scope` (default `compile_scope()`), except that CUDA graphs of a
    checkpointed model trace the whole model: on an H100 (2026-12-05) the per-layer graphs failed
    tests/gpu/test_gpu_compile.py's checkpointed accumulation case (the backward re-runs a compiled layer inside
    the CUDA-graph tree) while the unchecked ones passed; the whole-model path passes both."""
    scope = scope or compile_scope()
    return "model" if mode in GRAPH_MODES and checkpointed else scope


def compile_model(model, mode: str, *, fullgraph: bool = False, backend: str | None = None,
                  scope: str | None = None) -> Callable[..., Any]:
    """The callable the training loop runs instead of `model` (the model itself when mode is "off").

    The compiled callable shares the model's parameters: optimizers, saving and eval keep using `model`.
    `scope` (default `compile_scope()`): "layers" compiles the decoder layers in place (tuning/training/regional.py;
    the callable is `model`, whose layers run compiled in training, eager in eval or without grad); "model" wraps
    the whole model. Mode "off" also undoes an earlier "layers" compile.
    """
    regional.uncompile_layers(model)
    if mode == "off":
        return model
    import torch

    if getattr(model, "_require_grads_hook", None) is not None and hasattr(model, "disable_input_require_grads"):
        # transformers' activation checkpointing marks the embedding output requires_grad_() (for reentrant
        # checkpointing); dynamo refuses to return such a tensor, and non-reentrant checkpointing needs none
        model.disable_input_require_grads()
    backend = backend or ("cudagraphs" if mode == "eager-graphs" else compile_backend())
    options = {}
    if mode in GRAPH_MODES:
        if backend == "inductor":  # (dynamo's "cudagraphs" backend records the graphs itself: no mode to pass)
            options["mode"] = "reduce-overhead"
        mark_quant_state_static(model)
    scope = resolve_scope(mode, checkpointed=checkpointing_on(model), scope=scope)
    if scope == "layers" and regional.compile_layers(model, backend=backend, fullgraph=fullgraph, **options):
        return model
    return torch.compile(model, backend=backend, fullgraph=fullgraph, dynamic=False, **options)


def quant_state_tensors(model) -> list:
    """The tensors of bitsandbytes' 4-bit quant states (absmax, code, offset, nested absmax/code)."""
    import torch

    found = []
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None and not isinstance(state, (list, tuple, dict)):
            found += [t for t in (getattr(state, name, None) for name in ("absmax", "code", "offset"))
                      if isinstance(t, torch.Tensor)]
            state = getattr(state, "state2", None)
    return found


def mark_quant_state_static(model) -> int:
    """CUDA graphs copy every graph input that is not a parameter or buffer into their pool at each replay;
    the 4-bit quant states (absmax etc., ~1.4 % of the 4-bit weights' bytes) are plain attributes, so they
    are marked static here: no copy, no second copy in memory. Returns how many tensors were marked."""
    import torch

    tensors = quant_state_tensors(model)
    for tensor in tensors:
        torch._dynamo.mark_static_address(tensor)
    return len(tensors)


def batch_width(cfg) -> int:
    """The fixed row width of compiled training batches: the longest row the data pipeline can produce
    (causal-lm: source + target + eos; classification: max_source_length), rounded up to a multiple of 8."""
    longest = cfg.max_source_length if cfg.task == "classification" else \
        cfg.max_source_length + cfg.max_target_length + 1
    return -(-longest // 8) * 8


def fixed_width_collate(collate: Callable[[list], dict], width: int, pad_id: int) -> Callable[[list], dict]:
    """Wrap a right-padding collator so that every batch is exactly `width` tokens wide (one compiled shape):
    input_ids padded with `pad_id`, attention_mask with 0, token labels with -100 (ignored by the loss)."""
    import torch

    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}

    def collate_fixed(features: list) -> dict:
        batch = collate(features)
        have = batch["input_ids"].shape[1]
        if have > width:
            raise ValueError(f"a batch is {have} tokens wide, more than the compiled width {width}")
        for key, value in fill.items():
            tensor = batch.get(key)
            if isinstance(tensor, torch.Tensor) and tensor.ndim == 2 and tensor.shape[1] == have < width:
                batch[key] = torch.nn.functional.pad(tensor, (0, width - have), value=value)
        return batch

    return collate_fixed


@dataclass
class Plan:
    """What a run compiles and checkpoints, decided together before the first step (`plan`)."""

    compile: str  # off, on, cudagraphs, eager-graphs
    checkpointing: memory.Choice
    cache: "CompileCache | None" = None  # None: off, or --compile-cache off
    weights: "base_weights.WeightsChoice | None" = None  # the base's linears: 4-bit or dequantised (None: not chosen)

    def after_step(self) -> None:
        """Call after each optimizer step (rank 0): the first one has compiled everything, which is saved."""
        if self.cache is not None:
            self.cache.save_once()


def checkpointing_on(model) -> bool:
    """Whether transformers' activation checkpointing is on: `is_activation_checkpointing` from transformers 5.2x
    (its old name, `is_gradient_checkpointing`, printed a FutureWarning in every compiled run), else the old one."""
    if hasattr(model, "is_activation_checkpointing"):  # (a PEFT wrapper forwards both to its base)
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def plan(cfg, model, *, device, processes: int = 1, element_bytes: int = 2, quant: int | None = None,
         log=None) -> Plan:
    """The compile mode, checkpointing and base weights of a run on `model` (loaded 4-bit when `quant` is 4,
    nothing attached yet).

    Graphs keep more memory per checkpointed layer, so the checkpointing estimate knows whether the step is
    compiled; and `--compile auto` in a short run compiles only when the cache holds the graphs of exactly this
    run, whose key includes the checkpointing and the weights. So for auto: choose the checkpointing as if
    compiled, then the weights (base_weights.py: dequantised only where that checkpointing still fits), look the
    key up, and fall back to eager (choosing again) when that entry is cold."""
    import torch

    from tasktune.tuning.model.dequantize import added_bytes
    from tasktune.tuning.training import base_weights

    cuda = getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available()
    tokens = cfg.per_device_train_batch_size * batch_width(cfg)
    extra = added_bytes(model) if quant == 4 else 0

    def checkpointing(compiled: bool) -> memory.Choice:
        return memory.resolve(cfg.gradient_checkpointing, model, cfg, device=device, tokens=tokens,
                              element_bytes=element_bytes, compiled=compiled)

    def weights(choice: memory.Choice) -> base_weights.WeightsChoice:
        return base_weights.choose(cfg.train_weights, quant=quant, method=cfg.method,
                                   task=cfg.task, cuda=cuda, checkpointing=choice, added_bytes=extra)

    def eager_graphs(choice: memory.Choice, chosen: base_weights.WeightsChoice):
        """The weights under which eager-graphs fits beside `choice` (its estimate with the graphs' copy of the
        layers' weights, memory.eager_graphs_extra), bf16 copies first; None where none fits or where it was not
        measured (checkpointed layers: the whole-model graphs)."""
        if choice.mode != "none" or choice.estimate_bytes is None or choice.budget_bytes is None:
            return None
        options = [chosen]
        if chosen.mode == "bf16" and cfg.train_weights == "auto":
            options.append(base_weights.WeightsChoice("4bit", cfg.train_weights, "auto: eager-graphs over the "
                                                      "dequantised copies would not fit"))
        for option in options:
            added = option.added_bytes if option.mode == "bf16" else 0
            need = choice.estimate_bytes + added + memory.eager_graphs_extra(
                model, tokens=tokens, element_bytes=element_bytes, added_bytes=added)
            if need <= choice.budget_bytes * (1 - memory.HEADROOM):
                return dataclasses.replace(option, estimate_bytes=need, budget_bytes=choice.budget_bytes)
        return None

    mode = cfg.compile
    if mode == "auto" and auto_eligible(method=cfg.method, task=cfg.task, cuda=cuda, processes=processes):
        choice = checkpointing(True)
        chosen = weights(choice)
        cache = run_cache(cfg, model, checkpointing=choice.mode, mode=AUTO_CUDA_MODE, element_bytes=element_bytes,
                          weights=chosen.mode)
        scope = resolve_scope(AUTO_CUDA_MODE, checkpointed=choice.mode != "none")
        if scope == "layers" and chosen.mode == "bf16":
            scope = "layers-bf16"  # (the break-even of AUTO_MIN_STEPS; the compile itself is the layers scope)
        mode = resolve_mode("auto", method=cfg.method, task=cfg.task, cuda=cuda, steps=cfg.max_steps,
                            processes=processes, warm=cache is not None and cache.warm(), scope=scope)
        lite = eager_graphs(choice, chosen) if mode == "off" else None
        if lite is not None:  # a short cold run: graphs without inductor's compile (GRAPH_MODES)
            mode, chosen, cache = "eager-graphs", lite, None
            if log is not None:
                log(f"compile: auto uses eager-graphs in this {cfg.max_steps}-step run (CUDA graphs of the eager "
                    f"kernels: no compile to wait for; est. {lite.estimate_bytes / memory.GIB:.1f} GiB with their "
                    f"copy of the layers' weights)")
        elif mode == "off":
            choice, cache = checkpointing(False), None
            chosen = weights(choice)
        elif cfg.max_steps < AUTO_MIN_STEPS[scope] and log is not None:
            log(f"compile: auto uses {mode} in this {cfg.max_steps}-step run: the compile cache holds its graphs "
                f"({cache.folder})")
    else:
        mode = resolve_mode(mode, method=cfg.method, task=cfg.task, cuda=cuda, steps=cfg.max_steps,
                            processes=processes)
        choice = checkpointing(mode != "off")
        chosen = weights(choice)
        cache = None if mode in ("off", "eager-graphs") else run_cache(cfg, model, checkpointing=choice.mode, mode=mode,
                                                     element_bytes=element_bytes, weights=chosen.mode)
    if log is not None and choice.estimate_bytes is not None:  # (CPU runs: no estimate, no line)
        log(choice.describe())
    if log is not None and (chosen.mode != "as-loaded" or chosen.requested == "bf16"):
        log(chosen.describe())
    return Plan(mode, choice, cache, chosen)


def prepare(cfg, model, collate, tokenizer, *, processes: int = 1, log=None, plan: Plan | None = None):
    """For tuning/training/train.py: (mode, the callable to run as the model, the collator to use) for `cfg.compile`
    (`plan.compile` when given; its cache, if any, is loaded before anything compiles)."""
    if plan is None:
        mode = resolve_mode(cfg.compile, method=cfg.method, task=cfg.task, steps=cfg.max_steps, processes=processes)
    else:
        mode = plan.compile
    cached = False
    if plan is not None and plan.cache is not None:
        # inductor's own on-disk cache (content-keyed, safe to share) beside the entries, not in /tmp: on the same
        # machine its compiled kernels skip even the reload of the entry's sources
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(plan.cache.root / "inductor"))
        cached = plan.cache.load()
    forward = compile_model(model, mode)
    if mode != "off":
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = batch_width(cfg)
        collate = fixed_width_collate(collate, width, pad_id)
        if log is not None:
            first = "the first step loads the cached graphs" if cached else "the first step includes the compile time"
            log(f"compile: {mode}; batches padded to {width} tokens; {first}")
    return mode, forward, collate


# -- the compile cache ------------------------------------------------------------------------------------------

#: config.json keys that name or date a model rather than shape its graphs
_VOLATILE = ("_name_or_path", "transformers_version", "_commit_hash", "name_or_path", "architectures_path")


def cache_root() -> Path:
    """$TASKTUNE_CACHE/compile, else ~/.cache/tasktune/compile (XDG_CACHE_HOME respected)."""
    base = os.environ.get("TASKTUNE_CACHE")
    if base:
        return Path(base).expanduser() / "compile"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tasktune" / "compile"


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "tasktune":  # a source checkout on PYTHONPATH (the GPU machines)
            import tasktune

            return getattr(tasktune, "__version__", None)
        return None


def model_config_hash(model_config: dict) -> str:
    """sha256 of a model's config (as `config.to_dict()`), without the keys that only name or date it."""
    kept = {k: v for k, v in model_config.items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(model_config: dict, *, batch: int, width: int, mode: str, checkpointing: str, method: str,
              pre_seq_len: int, quantization, dtype: str, device: str = "", versions: dict | None = None,
              scope: str = "layers", weights: str = "as-loaded") -> dict:
    """The parts that decide whether compiled graphs can be reused (all of them must match); `weights`: the
    base's linears as trained (base_weights.py: 4bit, bf16 dequantised, as-loaded)."""
    import torch

    if versions is None:
        versions = {"torch": torch.__version__, "transformers": _version("transformers"),
                    "bitsandbytes": _version("bitsandbytes"), "tasktune": _version("tasktune"),
                    "python": platform.python_version()}
    backend = compile_backend()
    if backend != BACKEND:  # (the default's keys stay as they were)
        mode = f"{mode}/{backend}"
    return {"model_config_sha256": model_config_hash(model_config), "batch": batch, "width": width,
            "compile": mode, "scope": scope, "checkpointing": checkpointing, "method": method,
            "pre_seq_len": pre_seq_len, "quantization": quantization, "weights": weights, "dtype": dtype,
            "device": device, "versions": versions}


def key_digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


ARTIFACTS = "artifacts.bin"
KEY_FILE = "key.json"


@dataclass
class CompileCache:
    """One entry of the compile cache: `root/<digest of parts>/{key.json, artifacts.bin}`."""

    root: Path
    parts: dict
    loaded: bool = False
    saved: bool = False

    @property
    def folder(self) -> Path:
        return self.root / key_digest(self.parts)

    def _problem(self) -> str | None:
        """None when the entry is warm; "missing" when there is none; else why it cannot be used."""
        key_file, artifacts = self.folder / KEY_FILE, self.folder / ARTIFACTS
        if not key_file.exists() and not artifacts.exists():
            return "missing"
        try:
            stored = json.loads(read_text_file(key_file))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            return f"{key_file} is unreadable ({type(exc).__name__})"
        if stored != json.loads(json.dumps(self.parts, default=str)):
            return f"{key_file} does not match this run's key"
        try:
            if artifacts.stat().st_size == 0:
                return f"{artifacts} is empty"
        except OSError:
            return f"{artifacts} is missing"
        return None

    def warm(self) -> bool:
        """Whether the entry holds graphs for exactly these parts (checked without loading them)."""
        return self._problem() is None

    def _warn(self, why: str) -> None:
        warnings.warn(f"compile cache: {why}; compiling afresh (the entry is rewritten after the first step)",
                      TaskTuneWarning, stacklevel=3)

    def load(self) -> bool:
        """Load the entry's artifacts into torch.compile's caches (before the first compile); True if loaded.
        A missing entry is quiet; an unusable one gives one warning and is ignored."""
        import torch

        forget_recorded_artifacts()
        problem = self._problem()
        if problem is not None:
            if problem != "missing":
                self._warn(problem)
            return False
        try:
            info = torch.compiler.load_cache_artifacts((self.folder / ARTIFACTS).read_bytes())
        except Exception as exc:  # noqa: BLE001  (a truncated or foreign file: torch's own deserialiser errors)
            self._warn(f"{self.folder / ARTIFACTS} could not be loaded ({type(exc).__name__}: {exc})"[:300])
            return False
        self.loaded = self.saved = info is not None
        return self.loaded

    def save_once(self) -> bool:
        """After the first step: write what this process compiled (and loaded) as the entry; once per run, and
        never over an entry this run loaded. True if written."""
        if self.saved:
            return False
        self.saved = True
        import torch

        from tasktune.files import write_bytes, write_json

        try:
            result = torch.compiler.save_cache_artifacts()
        except Exception as exc:  # noqa: BLE001  (the run goes on; the next one compiles again)
            warnings.warn(f"compile cache: could not save the compiled graphs ({type(exc).__name__}: {exc})",
                          TaskTuneWarning, stacklevel=2)
            return False
        if not result or not result[0]:
            return False  # nothing compiled that the caches record (e.g. a non-inductor backend)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_bytes(self.folder / ARTIFACTS, result[0])
            write_json(self.folder / KEY_FILE, self.parts)  # last: key.json present = artifacts complete
        except OSError as exc:
            warnings.warn(f"compile cache: could not write {self.folder} ({exc.strerror or exc})", TaskTuneWarning,
                          stacklevel=2)
            return False
        return True


def forget_recorded_artifacts() -> None:
    """Drop what torch.compile recorded earlier in this process: `save_cache_artifacts` returns every artifact
    since the process began, so a second run in one process (the Python API, the tests) saved the first run's
    graphs under its own key, and a run without inductor (aot_eager) wrote an entry of them."""
    try:
        from torch.compiler._cache import CacheArtifactManager
    except ImportError:  # (a torch without it records nothing to forget)
        return
    CacheArtifactManager.clear()


def run_cache(cfg, model, *, checkpointing: str, mode: str, element_bytes: int = 2,
              weights: str = "as-loaded") -> CompileCache | None:
    """The cache entry of a compiled run of `cfg` on `model`; None with `--compile-cache off`."""
    import torch

    if getattr(cfg, "compile_cache", "on") == "off":
        return None
    device = ""
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name()} sm{''.join(map(str, torch.cuda.get_device_capability()))}"
    config = getattr(model, "config", None)
    parts = cache_key(config.to_dict() if config is not None else {}, batch=cfg.per_device_train_batch_size,
                      width=batch_width(cfg), mode=mode, checkpointing=checkpointing, method=cfg.method,
                      pre_seq_len=cfg.pre_seq_len, quantization=cfg.quantization_bit,
                      dtype="bfloat16" if element_bytes == 2 else "float32", device=device,
                      scope=resolve_scope(mode, checkpointed=checkpointing != "none"), weights=weights)
    return CompileCache(cache_root(), parts)


def step_begin(mode: str) -> None:
    """Call before each compiled forward: tells CUDA-graph trees that the last replay's outputs are consumed."""
    if mode in GRAPH_MODES:
        import torch

        torch.compiler.cudagraph_mark_step_begin()


def materialize_grads(params) -> None:
    """Give every trainable parameter a zero gradient buffer before a step's first backward.

    With CUDA graphs the backward's outputs live in the graph's memory pool and are overwritten by the next
    replay; autograd would otherwise adopt the first micro-batch's gradient tensor as `.grad` itself, and the
    second replay would overwrite it. With a buffer in place every micro-batch is added into it instead.
    """
    import torch

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
