"""Save and load a prefix adapter in PEFT's PREFIX_TUNING format, plus a tasktune reproduction record.

A folder holds `adapter_config.json` + `adapter_model.safetensors` (key `prompt_embeddings`, shape
(P, num_layers * 2 * kv_heads * head_dim), the projection already applied, as peft saves with
inference_mode=True), so `peft.PeftModel.from_pretrained(base, folder)` loads it. With a projection, the
MLP weights go to `tasktune_prefix_encoder.safetensors` too, so training can resume. `tasktune_adapter.json`
records how the adapter was made (base model, prefix options, geometry, caller's `extra`, weight hash).
Loading checks that hash: a weight file that differs from its record (a flipped bit, a bad copy) is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from tasktune import __version__
from tasktune import files as atomic
from tasktune.files import read_text_file
from tasktune.tuning.model.methods.peft_files import check_adapter_config
from tasktune.tuning.model.tensors import read_tensors
from tasktune.tuning.run import read_json_object, sha256_file
from tasktune.errors import ConfigError, TaskTuneWarning
from tasktune.tuning.model.prefix import PrefixConfig, PrefixTuner, attach_prefix, read_prefix_shape

CONFIG_NAME = "adapter_config.json"  # peft's file names
WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHTS_KEY = "prompt_embeddings"
ENCODER_NAME = "tasktune_prefix_encoder.safetensors"  # full encoder (projection MLP), ours only
RECORD_NAME = "tasktune_adapter.json"
RECORD_FORMAT = 1
#: the records of saves begun since the last one that finished (a JSON list, newest last): written before the
#: weights move in, removed once the record has; they tell new weights with an old record (a save that died
#: between the two) from a damaged weight file
PENDING_RECORD_NAME = f".{RECORD_NAME}.pending"
STAGING_PREFIX = ".tasktune-save-"  # + "<pid>-": the staging folder of a save in progress


def _task_type(model) -> str:
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


def build_peft_config(tuner: PrefixTuner, base_model: str):
    """The peft `PrefixTuningConfig` that describes `tuner` (inference_mode: weights are the final K/V)."""
    from peft import PrefixTuningConfig

    shape, cfg = tuner.shape, tuner.config
    return PrefixTuningConfig(
        task_type=_task_type(tuner.model),
        base_model_name_or_path=base_model,
        num_virtual_tokens=cfg.pre_seq_len,
        num_layers=shape.num_layers,
        num_attention_heads=shape.num_kv_heads,  # peft's GQA rule: kv heads, token_dim = kv_heads * head_dim
        token_dim=shape.token_dim,
        num_transformer_submodules=1,
        encoder_hidden_size=cfg.prefix_hidden_size if cfg.prefix_projection else shape.token_dim,
        prefix_projection=cfg.prefix_projection,
        inference_mode=True,
    )


def save_adapter(tuner: PrefixTuner, out_dir, *, base_model: str, extra: dict | None = None) -> Path:
    """Write the adapter into `out_dir` (created if needed; other files there are left alone); return it.

    Files are written to a temporary folder inside `out_dir`, then moved in one by one with os.replace
    (weights first, record last), so every file is always complete: an interrupted save leaves the previous
    adapter loadable (at worst new weights with the old record; the new record, added first to
    PENDING_RECORD_NAME, vouches for them, and `load_adapter` warns). A process killed mid-save leaves its
    temporary folder behind; the next save into the folder removes it.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep_dead_staging(out)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out) as tmp:
        staging = Path(tmp)
        with torch.no_grad():
            flat = tuner.encoder.flat().detach().to("cpu", torch.float32).contiguous()
            save_file({WEIGHTS_KEY: flat}, staging / WEIGHTS_NAME, metadata={"format": "pt"})
            names = [WEIGHTS_NAME]
            if tuner.config.prefix_projection:
                state = {k: v.detach().to("cpu").contiguous() for k, v in tuner.encoder.state_dict().items()}
                save_file(state, staging / ENCODER_NAME, metadata={"format": "pt"})
                names.append(ENCODER_NAME)
        build_peft_config(tuner, base_model).save_pretrained(str(staging))
        names.append(CONFIG_NAME)
        record = {
            "format": RECORD_FORMAT,
            "tasktune_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_model": base_model,
            "prefix": dataclasses.asdict(tuner.config),
            "shape": dataclasses.asdict(tuner.shape),
            "sha256": {name: sha256_file(staging / name) for name in names if name.endswith(".safetensors")},
            "extra": extra or {},
        }
        atomic.write_json(staging / RECORD_NAME, record, atomic=False)
        names.append(RECORD_NAME)
        pending = out / PENDING_RECORD_NAME
        atomic.write_json(staging / PENDING_RECORD_NAME, _pending_records(out) + [record], indent=None,
                          atomic=False)
        atomic.settle(staging)  # fsync'ed, and the umask's modes (safetensors writes its files 0600)
        os.replace(staging / PENDING_RECORD_NAME, pending)  # first: it vouches for the weights that follow
        for name in names:
            os.replace(staging / name, out / name)
        pending.unlink()  # the record is in place: nothing left to vouch for
        if not tuner.config.prefix_projection and (out / ENCODER_NAME).exists():
            (out / ENCODER_NAME).unlink()  # stale MLP from an earlier projection run
    return out


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows: count every writer as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):  # not a pid
        return False
    return True


def sweep_dead_staging(folder: Path) -> list[Path]:
    """Remove the staging folders (STAGING_PREFIX) that saves killed mid-way left in `folder`; return them.

    A staging folder is named after the pid of its writer; it is dead when that process is gone (a folder
    from an older tasktune, without a pid, counts as dead). Live writers' folders are left alone, and so is
    anything that is not a real folder of this user (a symbolic link is never followed: issue 21).
    """
    swept = []
    for path in Path(folder).glob(f"{STAGING_PREFIX}*"):
        match = re.match(re.escape(STAGING_PREFIX) + r"(\d+)-", path.name)
        if atomic.real_dir(path) and atomic.owned(path) and not (match and _pid_alive(int(match.group(1)))):
            atomic.remove_tree(path)
            swept.append(path)
    return swept


def _read_json(path: Path) -> dict:
    """An adapter folder's JSON file, which must hold an object."""
    try:
        return read_json_object(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (not an adapter folder written by tasktune or peft)") from None


def _check_record(record: dict, peft_config: dict, folder: Path) -> None:
    """The record of a save this version can read, agreeing with adapter_config.json (a hand-edited record
    of another format, or one whose prefix length disagreed with the weights' config, was loaded as found)."""
    path = folder / RECORD_NAME
    version = record.get("format", RECORD_FORMAT)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= RECORD_FORMAT:
        raise ConfigError(f"{path}: format {version!r} is not one this tasktune reads (1 to {RECORD_FORMAT}); "
                          f"it was written by another version, or edited")
    saved = record.get("prefix") if isinstance(record.get("prefix"), dict) else {}
    shape = record.get("shape") if isinstance(record.get("shape"), dict) else {}
    # (field of the record, its value, adapter_config.json's key, its value): every fact written twice must agree;
    # an edited `shape.num_layers` was ignored
    pairs = [("prefix.pre_seq_len", saved.get("pre_seq_len"), "num_virtual_tokens"),
             ("prefix.prefix_projection", saved.get("prefix_projection"), "prefix_projection"),
             ("shape.num_layers", shape.get("num_layers"), "num_layers"),
             ("shape.num_kv_heads", shape.get("num_kv_heads"), "num_attention_heads")]
    if isinstance(shape.get("num_kv_heads"), int) and isinstance(shape.get("head_dim"), int):
        pairs.append(("shape.num_kv_heads * shape.head_dim", shape["num_kv_heads"] * shape["head_dim"], "token_dim"))
    if saved.get("prefix_projection") is True:
        pairs.append(("prefix.prefix_hidden_size", saved.get("prefix_hidden_size"), "encoder_hidden_size"))
    for field, value, key in pairs:
        if value is not None and value != peft_config.get(key):
            raise ConfigError(f"{path}: {field} is {value!r} but {CONFIG_NAME}'s {key} is {peft_config.get(key)!r}; "
                              "the folder is damaged, or one of the two was edited")


def _check_geometry(peft_config: dict, model, config_path: Path) -> None:
    shape = read_prefix_shape(model.config)
    want = {
        "num_layers": shape.num_layers,
        "num_attention_heads": shape.num_kv_heads,
        "token_dim": shape.token_dim,
    }
    got = {key: peft_config.get(key) for key in want}
    if got != want:
        raise ConfigError(
            f"{config_path}: adapter made for a different base model: it has {got['num_layers']} layers x "
            f"{got['num_attention_heads']} kv heads (token_dim {got['token_dim']}), the model has "
            f"{want['num_layers']} layers x {want['num_attention_heads']} kv heads (token_dim {want['token_dim']})"
        )


def load_adapter(model, adapter_dir, *, is_trainable: bool = False) -> PrefixTuner:
    """Attach the prefix saved in `adapter_dir` (by `save_adapter` or peft) to `model`.

    Not trainable: the encoder is the flat (P, width) prompt_embeddings, frozen (as peft's inference_mode).
    Trainable: the encoder trains on; a projection adapter then needs ENCODER_NAME (tasktune-saved).
    """
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise ConfigError(f"adapter folder {folder} does not exist")
    config_path = folder / CONFIG_NAME
    peft_config = _read_json(config_path)
    if peft_config.get("peft_type") != "PREFIX_TUNING":
        raise ConfigError(f"{config_path}: peft_type is {peft_config.get('peft_type')!r}, expected 'PREFIX_TUNING'")
    check_adapter_config(peft_config, config_path, folder / WEIGHTS_NAME)  # sizes PEFT and torch take (4.0: TypeError)
    if peft_config.get("num_transformer_submodules", 1) != 1:
        raise ConfigError(f"{config_path}: encoder-decoder prefixes (num_transformer_submodules=2) are not supported")
    _check_geometry(peft_config, model, config_path)
    record = _read_json(folder / RECORD_NAME) if (folder / RECORD_NAME).exists() else {}
    pre_seq_len = peft_config.get("num_virtual_tokens")
    projection = bool(peft_config.get("prefix_projection", False))
    weights_path = folder / WEIGHTS_NAME
    weights = read_tensors(weights_path, {WEIGHTS_KEY})
    record = _verified_record(record, folder)
    saved = record.get("prefix", {})
    flat = weights.get(WEIGHTS_KEY)
    shape = read_prefix_shape(model.config)
    if flat is None or tuple(flat.shape) != (pre_seq_len, shape.width):
        found = None if flat is None else tuple(flat.shape)
        raise ConfigError(
            f"{weights_path}: expected '{WEIGHTS_KEY}' of shape ({pre_seq_len}, {shape.width}) "
            f"(pre_seq_len={pre_seq_len} from {CONFIG_NAME}), found {found}"
        )
    _check_record(record, peft_config, folder)
    resume_projection = is_trainable and projection
    config = PrefixConfig(
        pre_seq_len=pre_seq_len,
        prefix_projection=resume_projection,
        prefix_hidden_size=int(saved.get("prefix_hidden_size") or peft_config.get("encoder_hidden_size") or 512),
        prefix_dropout=float(saved.get("prefix_dropout", 0.0)),
    )
    if resume_projection and not (folder / ENCODER_NAME).is_file():
        raise ConfigError(
            f"{folder}: a prefix_projection adapter without {ENCODER_NAME} (the MLP weights) cannot resume "
            "training; load it with is_trainable=False, or train a new adapter"
        )
    tuner = attach_prefix(model, config)
    state = read_tensors(folder / ENCODER_NAME) if resume_projection else {"embedding.weight": flat}
    try:
        tuner.encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        tuner.detach()
        raise ConfigError(f"{folder}: encoder weights do not fit the saved config: {exc}") from None
    tuner.encoder.requires_grad_(is_trainable)
    return tuner


def _pending_records(folder: Path) -> list[dict]:
    try:
        records = json.loads(read_text_file(Path(folder) / PENDING_RECORD_NAME))
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _hashes(record: dict) -> dict:
    hashes = record.get("sha256") if isinstance(record, dict) else None
    return hashes if isinstance(hashes, dict) else {}


def _mismatched(hashes: dict, folder: Path) -> list[str]:
    """The recorded files present in `folder` whose sha256 differs from `hashes`."""
    return [name for name, digest in hashes.items()
            if (folder / name).is_file() and sha256_file(folder / name) != digest]


def _verified_record(record: dict, folder: Path) -> dict:
    """`record` once the weight files match its sha256s; else the pending record of an interrupted save
    that explains them (with a warning); else a ConfigError naming the file and what to do."""
    bad = _mismatched(_hashes(record), folder)
    if not bad:
        return record
    for pending in reversed(_pending_records(folder)):
        if _hashes(pending) and not _mismatched(_hashes(pending), folder):
            warnings.warn(
                f"{folder}: an interrupted save moved in new weights but not their record ({RECORD_NAME}); "
                f"loading them, as the save's pending record ({PENDING_RECORD_NAME}) describes them",
                TaskTuneWarning, stacklevel=3,
            )
            return pending
    path = folder / bad[0]
    if folder.parent.name == "checkpoints":
        fix = f"delete {folder} to resume from an older checkpoint"
    elif (folder / "checkpoints").is_dir():
        fix = "re-run the same `tasktune train` command to rewrite it from the run's last checkpoint"
    else:
        fix = "restore it from a copy, or save the adapter again"
    raise ConfigError(
        f"{path}: its sha256 differs from the one {folder / RECORD_NAME} recorded when it was saved, so the "
        f"file is damaged (a flipped bit, a bad disk or copy) or was changed since; {fix}. (If you changed it "
        f"on purpose, delete its entry under \"sha256\" in {RECORD_NAME}.)"
    )
