"""Many task prefixes on one base: load the base once, read every run's prefix into a bank of keys/values.

A P-tuning v2 prefix is a block of keys/values per layer that every request of its task shares (positions of the
text start at P). The bank computes each run's block once, in the compute dtype, and the engine hands each batch
row its own block through the prefix attention wrapper of tasktune.tuning.model.prefix (rows of the base model see
none). Only prefix methods (ptuning-v2, prefix) can share a base this way; other methods are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasktune.errors import ConfigError
from tasktune.tuning.run import Trust

#: Methods whose adapter is a key/value prefix (served per row); the rest change the base's weights.
PREFIX_METHODS = ("ptuning-v2", "prefix")


@dataclass(frozen=True)
class ServedRun:
    """One run as the server sees it: its model name, folder and what formatting/cutting it was trained with."""

    name: str
    run_dir: Path
    base_model: str
    quantization: Any
    pre_seq_len: int
    prompt_template: str
    max_source_length: int
    max_target_length: int
    data: str


def _record(run_dir: Path, trust: Trust):
    """The run's RunRecord, refused unless it is a causal-lm run of a prefix method."""
    from tasktune.tuning.model.methods import check_method_files
    from tasktune.tuning.run import RunFolder

    record = RunFolder(run_dir).record(task="causal-lm", refusal="{run}: a {task} run labels texts; serve causal-lm "
                                                                "runs (use it as --router)", trust=trust)
    cfg = record.config
    # the adapter files agree with the records, adapter_config.json's values too, before the base loads (as eval's)
    method = check_method_files(Path(run_dir)).get("method", cfg.method)
    if method not in PREFIX_METHODS:
        raise ConfigError(f"{run_dir}: method {method!r} changes the base model's weights and cannot share one base "
                          f"with other runs; `tasktune serve` serves {' and '.join(PREFIX_METHODS)} runs")
    return record


def describe_run(run_dir: str | Path, name: str | None = None, trust: Trust = Trust()):
    """The ServedRun of a run folder (name: the folder's name unless given) and its RunRecord (`trust`: what its
    base may run as it loads; tuning/run.py)."""
    from tasktune.tuning.model.load import base_source

    run_dir = Path(run_dir)
    record = _record(run_dir, trust)
    cfg = record.config
    run = ServedRun(name=name or run_dir.resolve().name, run_dir=run_dir,
                    base_model=base_source(cfg.model, run_dir), quantization=record.quantization,
                    pre_seq_len=cfg.pre_seq_len, prompt_template=cfg.prompt_template,
                    max_source_length=cfg.max_source_length, max_target_length=cfg.max_target_length,
                    data=cfg.data)
    return run, record


def check_same_base(runs: list[ServedRun]) -> None:
    """Every run must have been trained on the same base, loaded the same way; else a ConfigError naming them."""
    def key(r: ServedRun):
        path = Path(r.base_model).expanduser()
        where = str(path.resolve()) if path.exists() else r.base_model
        return where, r.quantization

    first = runs[0]
    for run in runs[1:]:
        if key(run) != key(first):
            raise ConfigError(
                f"runs {first.name} ({first.base_model}, quantization {first.quantization}) and {run.name} "
                f"({run.base_model}, quantization {run.quantization}) were trained on different bases; one server "
                "shares one base: serve them from two servers")
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two runs would be served as {dupes[0]!r}; name them apart with NAME=RUN_DIR")


class PrefixBank:
    """The base model (prefix attention wrapper on, no hook) and every run's prefix keys/values.

    `kv[name]`: (layers, 2, kv_heads, P, head_dim) in the compute dtype on the model's device.
    `batch(names)` builds one forward call's `tasktune_prefix` argument for rows served by `names`
    (None = the base model: no prefix, no position shift)."""

    def __init__(self, model, tokenizer, runs: dict[str, ServedRun], kv: dict[str, torch.Tensor]):
        self.model, self.tokenizer, self.runs, self.kv = model, tokenizer, runs, kv
        self.width = max((t.shape[3] for t in kv.values()), default=0)
        sample = next(iter(kv.values()), None)
        self._empty = None if sample is None else torch.zeros_like(sample[:, :, :, :1]).expand(
            -1, -1, -1, self.width, -1)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def context(self) -> int | None:
        """The base's context window in positions (its config's; None where it names none)."""
        from tasktune.tuning.model.generate import context_limit

        return context_limit(self.model)

    def offset(self, name: str | None) -> int:
        """How far the run's text positions are shifted (its P; 0 for the base model)."""
        return 0 if name is None else self.runs[name].pre_seq_len

    def batch(self, names: list[str | None]):
        """The PrefixKV for rows served by `names` (left-padded to the widest prefix, padding columns hidden)."""
        from tasktune.tuning.model.prefix import PrefixKV

        if not self.kv or all(n is None for n in names):
            return None
        if len(set(names)) == 1 and self.kv[names[0]].shape[3] == self.width:  # one prefix: a view, no copies
            block = self.kv[names[0]].unsqueeze(2).expand(-1, -1, len(names), -1, -1, -1)
            keys, values = block.unbind(1)
            return PrefixKV(key=keys.unbind(0), value=values.unbind(0), masks={})
        blocks, visible = [], torch.zeros((len(names), self.width), dtype=torch.bool, device=self.device)
        for i, name in enumerate(names):
            block = self._empty if name is None else self.kv[name]
            pad = self.width - block.shape[3]
            if pad:
                block = torch.cat([self._empty[:, :, :, :pad], block], dim=3)
            blocks.append(block)
            if name is not None:
                visible[i, pad:] = True
        stacked = torch.stack(blocks, dim=2)  # (L, 2, B, H, P, D)
        keys, values = stacked.unbind(1)
        return PrefixKV(key=keys.unbind(0), value=values.unbind(0), masks={}, visible=visible)


def _compute_dtype(model) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


def describe_runs(run_dirs: list[tuple[str | None, str | Path]], trust: Trust = Trust()):
    """The ServedRuns of (name or None, folder) pairs, checked to share one base, and the first run's RunRecord:
    all of the bank but the model (what the HTTP side needs when the model lives in another process)."""
    if not run_dirs:
        raise ConfigError("give at least one run folder to serve")
    described = [describe_run(path, name, trust) for name, path in run_dirs]
    runs = [r for r, _ in described]
    check_same_base(runs)
    return runs, described[0][1]


@dataclass(frozen=True)
class BankView:
    """A bank without its model, on the side of the process that does not hold it: the runs, the tokenizer (for
    prompts), the device the model is on (reported by the engine's process) and the base's context window in
    positions (its config's, read without the weights; None where it names none)."""

    runs: dict[str, ServedRun]
    tokenizer: Any
    device: torch.device
    context: int | None = None


def _tokenizer(runs: list[ServedRun], record):
    """The shared base's tokenizer, left-padding (the engine's batches)."""
    from tasktune.tuning.model.load import load_tokenizer

    return load_tokenizer(runs[0].base_model, trust_remote_code=record.config.trust_remote_code, padding_side="left")


def _context(runs: list[ServedRun], record) -> int | None:
    """The shared base's context window (positions), from its config alone (loaded as the tokenizer is)."""
    from tasktune.tuning.model.generate import context_limit
    from tasktune.tuning.model.load import load_config

    # (training's reading: a damaged file is named; a hub id with the hub out of reach fails at once)
    return context_limit(load_config(runs[0].base_model, trust_remote_code=record.config.trust_remote_code))


def load_view(run_dirs: list[tuple[str | None, str | Path]], trust: Trust = Trust()) -> BankView:
    """The BankView of the runs, its device not yet known (the CPU until the engine's process says)."""
    runs, record = describe_runs(run_dirs, trust)
    return BankView({r.name: r for r in runs}, _tokenizer(runs, record), torch.device("cpu"), _context(runs, record))


def load_bank(run_dirs: list[tuple[str | None, str | Path]], tokenizer=None, trust: Trust = Trust()) -> PrefixBank:
    """Load the shared base once (as the runs were trained: same quantization) and every run's prefix.

    `run_dirs`: (name or None, folder) pairs; `tokenizer`: the base's, when the caller has it already (a
    BankView's), else loaded here."""
    from tasktune.tuning.model import methods
    from tasktune.tuning.model.prefix import WRAPPED_ATTENTION, _set_attention, register_attention
    from tasktune.tuning.model.save import load_adapter

    runs, record = describe_runs(run_dirs, trust)
    first, cfg, quant = runs[0], record.config, record.quantization
    tokenizer = tokenizer or _tokenizer(runs, record)
    model = methods.load_base(cfg, model=first.base_model, quantization=quant, device_map=methods.device_map(quant))
    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        model.to("cuda")
    model.eval()
    base_attention = model.config._attn_implementation or "eager"
    dtype = _compute_dtype(model)
    kv: dict[str, torch.Tensor] = {}
    for run in runs:
        tuner = load_adapter(model, run.run_dir)  # checks the geometry, reads PEFT's format
        with torch.no_grad():
            kv[run.name] = tuner.encoder().to(dtype).contiguous()
        tuner.detach()
    register_attention()
    _set_attention(model, WRAPPED_ATTENTION.get(base_attention, base_attention))
    return PrefixBank(model, tokenizer, {r.name: r for r in runs}, kv)
