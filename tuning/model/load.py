"""Load the frozen base: a causal LM (or sequence classifier) by hub id or local path, 4/8-bit or not, and its tokenizer.

Weights come from safetensors only unless the caller opts in to pickle files (`allow_pickle=True`);
remote code runs only with `trust_remote_code=True`. Errors the user can fix are `ConfigError`s, naming the file at
fault (config.json, tokenizer.json) before anything is written; a hub id loads through tuning/model/hub.py.

Longer than 300 lines because loading a base is checked as one unit here (source, config, weights, tokenizer,
vocabulary) and a run's recorded base is resolved beside it; each check is a small function.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from pathlib import Path

from tasktune.errors import ConfigError, TaskTuneWarning
from tasktune.files import read_text_file
from tasktune.tuning.progress import library_bars_on_terminal_only
from tasktune.tuning.config import DEFAULT_MODEL
from tasktune.tuning.run import METHOD_FILE, RECORD_FILE

TASKS = ("causal-lm", "classification")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _check_source(name_or_path: str) -> Path | None:
    """The local folder, or None for a hub id; a path-like name that does not exist is a ConfigError."""
    if not name_or_path.strip():
        raise ConfigError("empty model name; give a local model folder or a hub id")
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"model path {path} is a file; give the folder that holds config.json")
        return path
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
    if looks_local:
        raise ConfigError(f"model path {path} does not exist")
    if name_or_path == DEFAULT_MODEL:  # the hub's error spoke of a model the user may never have named
        from tasktune import TEMPLATES

        raise ConfigError(f"model {DEFAULT_MODEL} (train's default --model: what `tasktune tiny-model` builds) is not "
                          f"in {Path.cwd()}; train with --model a hub id or a model folder (the tiny base tasktune "
                          f"ships: {TEMPLATES / 'demo' / 'tiny-glm'}), or build it here with `tasktune tiny-model`")
    return None


def _from_pretrained(load, name: str, folder: Path | None, **kwargs):
    """`load(name, **kwargs)` (a `from_pretrained`): a local folder as it is, a hub id from the cache or the hub
    (tuning/model/hub.py: at once, never through a minute of retries when the hub is out of reach)."""
    if folder is not None:
        return load(name, **kwargs)
    from tasktune.tuning.model.hub import hub_load

    return hub_load(load, name, **kwargs)


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (huggingface_hub's validation errors take two)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def _remote_code_error(name: str, text: str, trust_remote_code: bool) -> ConfigError | None:
    if "trust_remote_code" in text and not trust_remote_code:
        return ConfigError(f"{name} needs its own modeling code; pass trust_remote_code=True (--trust-remote-code) "
                           "only if you trust it")
    return None


def load_config(name_or_path, *, trust_remote_code: bool = False):
    """The base's `AutoConfig`; a ConfigError naming its config.json and the field for a config that is missing, not
    a JSON object, or refused by the library (huggingface_hub's strict field types, a missing model_type...)."""
    name = str(name_or_path)
    folder = _check_source(name)
    where = f"{folder / 'config.json'}" if folder is not None else f"{name}'s config.json"
    if folder is not None:
        path = folder / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: missing; a model folder needs its config.json (which names the model_type)")
        try:
            data = json.loads(read_text_file(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: holds a JSON {type(data).__name__}, not an object of settings")
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    try:
        config = _from_pretrained(AutoConfig.from_pretrained, name, folder, trust_remote_code=trust_remote_code)
    except (StrictDataclassError, TypeError, ValueError, KeyError, AttributeError, OSError) as exc:
        text = _one_line(exc)
        raise _remote_code_error(name, text, trust_remote_code) or ConfigError(f"{where}: {text}") from None
    _check_sizes(config, where)
    return config


#: config.json's sizes a model is built from: `num_key_value_heads: 0` was a ZeroDivisionError traceback, and
#: `num_hidden_layers: 0` built a model of no layers that trained with exit 0
SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "head_dim", "max_position_embeddings")


def _check_sizes(config, where: str) -> None:
    for key in SIZES:
        value = getattr(config, key, None)
        values = value if isinstance(value, list) and value else [value]  # (Gemma3n: intermediate_size per layer)
        if value is not None and any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ConfigError(f"{where}: {key}: expected a positive integer, got {value!r:.60}")


def check_vocabulary(name, tokenizer, config, top_id: int, model=None) -> None:
    """ConfigError when token id `top_id` (the largest the data holds) is past the base's token rows (config.json's
    vocab_size, or with `model` its input embedding): it failed the first step (IndexError) after the run folder
    was written. A tokenizer longer than vocab_size alone is no error (Qwen2's adds tokens the data never holds)."""
    vocab = getattr(config, "vocab_size", None)
    rows = model.get_input_embeddings().num_embeddings if model is not None else vocab
    if not isinstance(rows, int) or top_id < rows:
        return
    folder = Path(str(name)).expanduser()
    where = folder / "config.json" if folder.is_dir() else f"{name}'s config.json"
    what = f"vocab_size {vocab:,}" if vocab == rows else f"the input embedding's {rows:,} rows"
    raise ConfigError(f"{where}: {what} is smaller than the tokenizer's {len(tokenizer):,} tokens (the data holds "
                      f"token id {top_id:,}); the model and tokenizer do not belong together, or vocab_size was "
                      "edited")


#: AutoModelForSequenceClassification over a causal LM's checkpoint: its new head is MISSING (score.*; classifier.*
#: in others), the unused language-model head UNEXPECTED (lm_head; embed_out in GPT-NeoX, output_layer in ChatGLM)
_HEAD_ROWS = {"MISSING": re.compile(r"(score|classifier)(\.dense|\.out_proj)?\.(weight|bias)"),
              "UNEXPECTED": re.compile(r"(lm_head|embed_out|(transformer\.)?output_layer)\.(weight|bias)")}


class _HeadReportFilter(logging.Filter):
    """Drop transformers' LOAD REPORT when all it reports is the classification head as MISSING (new by design:
    training learns it, a trained run's adapter holds it) and the language-model head as UNEXPECTED (unused): it told
    every classification train, eval and `serve --router` to "consider training on your downstream task". Any
    other row keeps the report."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.getMessage())
        if "LOAD REPORT" not in text:
            return True
        rows = [re.split(r"\s*\|\s*", line.strip()) for line in text.splitlines() if "|" in line]
        rows = [r for r in rows if len(r) >= 2 and r[0] not in ("Key", "") and not set(r[0]) <= set("-+")]
        return not rows or not all(any(status in r[1] and key.fullmatch(r[0]) for status, key in _HEAD_ROWS.items())
                                   for r in rows)


@contextlib.contextmanager
def _no_head_report(task: str):
    """While a classification base loads, transformers' report of its new head is not printed (_HeadReportFilter)."""
    if task != "classification":
        yield
        return
    target = logging.getLogger("transformers.modeling_utils")
    quiet = _HeadReportFilter()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    has_safe = any((folder / name).exists() for name in SAFE_WEIGHTS)
    has_pickle = any((folder / name).exists() for name in PICKLE_WEIGHTS)
    if not has_safe and has_pickle and not allow_pickle:
        raise ConfigError(
            f"{folder} holds only pickle weights (pytorch_model.bin), which can run code when loaded; convert them "
            "to safetensors, or pass allow_pickle=True (--allow-pickle) if you trust the source"
        )
    if not has_safe and not has_pickle:
        raise ConfigError(f"{folder} has no model weights (model.safetensors or pytorch_model.bin)")
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)


def check_safetensors(path: Path) -> None:
    """ConfigError naming `path` when it is not a whole safetensors file: a header that cannot be read, or tensor
    data that ends past the end of the file (a download or copy cut short). Reads the header only."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(size - 8, 100 << 20):
                raise ValueError(f"the header length {n} does not fit in the file's {size} bytes")
            header = json.loads(handle.read(n).decode("utf-8"))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({exc}); it is damaged or cut short (an "
                          "interrupted download or copy?): download or copy it again") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise ConfigError(f"{path}: truncated: its header describes {need:,} bytes, the file holds {size:,} (an "
                          "interrupted download or copy?): download or copy it again")


def build_quantization(quantization_bit: int | None):
    """BitsAndBytesConfig for 4-bit NF4 (double quant, bf16 compute) or 8-bit LLM.int8, None for full precision."""
    if quantization_bit is None:
        return None
    if quantization_bit not in (4, 8):
        raise ConfigError(f"quantization_bit must be 4, 8 or None, got {quantization_bit!r}")
    try:
        import bitsandbytes  # noqa: F401  (fail here with a clear message, not deep inside from_pretrained)
    except ImportError:
        raise ConfigError(
            f"quantization_bit={quantization_bit} needs bitsandbytes: pip install 'bitsandbytes>=0.45', "
            "or run without quantization"
        ) from None
    import torch
    from transformers import BitsAndBytesConfig

    if quantization_bit == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _resolve_dtype(dtype, quantization_bit):
    import torch

    if dtype is None:
        # Quantized: the non-quantized parts (norms, embeddings) in bf16 like the compute dtype; else as saved.
        return torch.bfloat16 if quantization_bit == 4 else (torch.float16 if quantization_bit == 8 else "auto")
    if isinstance(dtype, str) and dtype != "auto":
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ConfigError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
        return value
    return dtype


def _default_quantized_device_map():
    """bitsandbytes layers must be created on their device: this process's GPU (LOCAL_RANK under torchrun), else CPU."""
    import torch

    from tasktune.envvars import env_number
    from tasktune.flags import Range

    if torch.cuda.is_available():
        return {"": env_number("LOCAL_RANK", 0, Range(int, 0, 1 << 16))}
    return None


def load_model(
    name_or_path,
    *,
    quantization_bit: int | None = None,
    dtype=None,
    trust_remote_code: bool = False,
    device_map=None,
    allow_pickle: bool = False,
    task: str = "causal-lm",
    attn_implementation: str = "sdpa",
    **model_kwargs,
):
    """Load a frozen base model in eval mode. `task`: "causal-lm" (AutoModelForCausalLM) or "classification"
    (AutoModelForSequenceClassification; pass e.g. num_labels=3). `attn_implementation`: "sdpa" or "eager"
    (what the prefix can wrap). Extra keywords go to `from_pretrained`."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    name = str(name_or_path)
    folder = _check_source(name)
    if folder is not None:
        _check_weights(folder, allow_pickle)
    load_config(name, trust_remote_code=trust_remote_code)  # a damaged config.json named before the weights load
    quantization = build_quantization(quantization_bit)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    kwargs = dict(
        dtype=_resolve_dtype(dtype, quantization_bit),
        trust_remote_code=trust_remote_code,
        use_safetensors=None if allow_pickle else True,
        attn_implementation=attn_implementation,
        **model_kwargs,
    )
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if device_map is None and quantization is not None:
        device_map = _default_quantized_device_map()
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        with library_bars_on_terminal_only(), _no_head_report(task):
            model, info = _from_pretrained(auto.from_pretrained, name, folder, output_loading_info=True, **kwargs)
    except RuntimeError as exc:
        if "mismatched_sizes" not in str(exc):
            raise
        where = folder / "config.json" if folder is not None else f"{name}'s config.json"
        raise ConfigError(f"{name}: its weights do not have the shapes {where} gives (an edited vocab_size, "
                          "hidden_size or layer size? the report above lists the tensors)") from None
    except (OSError, ValueError) as exc:
        text = str(exc)
        remote = _remote_code_error(name, text, trust_remote_code)
        if remote is not None:
            raise remote from None
        where = "local folder" if folder is not None else "hub id (is it spelled right, and is the hub reachable?)"
        raise ConfigError(f"could not load model {name} ({where}): {text.splitlines()[0] if text else exc}") from None
    if task == "causal-lm":
        _check_loading_info(name, folder, info)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _check_loading_info(name: str, folder: Path | None, info: dict) -> None:
    """ConfigError when config.json needs weights the files lack: transformers printed a LOAD REPORT and went on with
    them at random values (a GLM folder whose config says llama, `num_hidden_layers` raised) and trained with exit
    0. Tensors of the files the model has no place for are a warning only: the model computes without them, and
    published checkpoints carry extras transformers does not list as ignorable (a draft head, old buffers)."""
    missing, unused = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    where = folder / "config.json" if folder is not None else f"{name}'s config.json"
    if missing:
        also = f"; and {len(unused)} tensor(s) of the files have no place in it ({', '.join(unused[:3])})" \
            if unused else ""
        raise ConfigError(f"{name}: the model {where} describes does not match its weights: {len(missing)} weight(s) "
                          f"it needs are not in the weight files ({', '.join(missing[:3])}){also}; the config was "
                          "edited (model_type, layer counts) or belongs to another model")
    if unused:
        warnings.warn(f"{name}: {len(unused)} tensor(s) of the weight files have no place in the model {where} "
                      f"describes ({', '.join(unused[:3])}); they are not used. If the config was edited (fewer "
                      "layers) or belongs to another model, this is not the model the files hold", TaskTuneWarning,
                      stacklevel=3)


def load_tokenizer(name_or_path, *, trust_remote_code: bool = False, padding_side: str = "left"):
    """AutoTokenizer with a pad token: if the tokenizer has none, pad = eos (the pad positions are masked
    out, so reusing eos is harmless). `padding_side` "left" suits batched generation."""
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    name = str(name_or_path)
    folder = _check_source(name)
    if folder is not None and (folder / "config.json").is_file():
        load_config(name, trust_remote_code=trust_remote_code)  # the tokenizer reads it too: a damage named here
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoTokenizer

    try:
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name, folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, StrictDataclassError) as exc:
        if folder is not None:
            _explain_tokenizer(folder)
        raise ConfigError(f"could not load the tokenizer of {name}: {_one_line(exc)}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"the tokenizer of {name} has neither a pad nor an eos token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


def _explain_tokenizer(folder: Path) -> None:
    """After a failed tokenizer load from `folder`: a ConfigError naming the file at fault, if one is (a tokenizer
    JSON file that is not JSON; no tokenizer file at all); else nothing, and the library's error is reported."""
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = folder / file
        if path.is_file():
            try:
                data = json.loads(read_text_file(path, limit=1 << 30))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: not valid JSON ({exc}); the tokenizer of {folder} cannot load") from None
            if not isinstance(data, dict):  # a JSON list was an AttributeError traceback
                raise ConfigError(f"{path}: holds a JSON {type(data).__name__}, not an object; the tokenizer of "
                                  f"{folder} cannot load")
    if not any((folder / file).is_file() for file in TOKENIZER_FILES):
        looked = f"{folder} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})"
        if not (folder / "config.json").is_file():  # no model folder at all (a run, a data folder): no copying helps
            base, named_in = recorded_base(folder)
            raise ConfigError(f"{looked} and no config.json: it is not a model folder" + (
                f"; it holds an adapter, trained on {base} ({named_in.name}): give that base model" if base else ""))
        raise ConfigError(f"{looked}; copy the model's tokenizer into it")


# -- a run's base: where it is, and loading it as the run was trained -------------------------------------

def base_model_reference(name: str) -> str:
    """How a saved adapter names its base: a local folder as its absolute path (loading then works from any
    working directory), anything else (a hub id) as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


_BASE_KEYS = {"adapter_config.json": "base_model_name_or_path", METHOD_FILE: "base_model"}


def recorded_base(run_dir) -> tuple[str | None, Path]:
    """The base model a saved adapter names (adapter_config.json's base_model_name_or_path, else METHOD_FILE's
    base_model), and the file that names it; None when neither does."""
    folder = Path(run_dir)
    for path in (folder / "adapter_config.json", folder / METHOD_FILE):
        key = _BASE_KEYS[path.name]
        try:
            value = json.loads(read_text_file(path)).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value), path
    return None, folder / "adapter_config.json"


def base_source(given: str, run_dir) -> str:
    """Where to load a run's base model from: the absolute folder its adapter config names, when it exists;
    else the name it was trained with (tasktune_run.json config.model: a hub id, or a path from the current
    directory, used with a warning). A recorded folder that is gone, with no folder under the name given
    either, is a ConfigError naming both."""
    import warnings

    given = str(given)
    recorded, where = recorded_base(run_dir)
    if recorded is None or not Path(recorded).is_absolute():  # a hub id, or a run saved before absolute paths
        return given
    here = Path(given).expanduser()
    if Path(recorded).is_dir():
        if here.is_absolute() and here.is_dir() and here.resolve() != Path(recorded).resolve():  # (shown once)
            warnings.warn(f"{run_dir}: {where.name} names the base {recorded}, but its {RECORD_FILE} was trained on "
                          f"{given} (config.model), which exists too; loading {recorded}. If that is not the base, "
                          f"fix \"{_BASE_KEYS[where.name]}\" in {where}", TaskTuneWarning)
        return recorded
    if recorded != given and here.is_dir():
        warnings.warn(f"{run_dir}: the base model folder it was trained on, {recorded}, no longer exists; loading "
                      f"{here.resolve()} ({given!r}, the name it was trained with, from the current directory)",
                      TaskTuneWarning, stacklevel=2)
        return given
    also = "" if recorded == given else f" and {given!r} (the name given to `tasktune train --model`) is no folder " \
                                        f"from {Path.cwd()} either"
    raise ConfigError(
        f"{run_dir}: its base model folder {recorded} (named in {where}) does not exist any more (moved or "
        f"deleted?){also}; move the model back to {recorded}, or write its new place as "
        f"\"{_BASE_KEYS[where.name]}\" in {where}"
    )


def load_base(cfg, *, quantization: int | None, labels: list[str] | None = None, device_map=None,
              model: str | None = None):
    """The run's frozen base model (causal LM, or a sequence classifier with `labels`) from its TrainConfig;
    `model`: where to load it from instead of `cfg.model` (a run's `base_source`)."""
    from tasktune.tuning.model.load import load_model

    kwargs: dict[str, Any] = {}
    task = cfg.task
    if task == "classification":
        if not labels:
            raise ConfigError("a classification run needs its label list (none recorded)")
        kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)},
                      ignore_mismatched_sizes=True)  # a checkpoint's own head (other label count) is replaced
    model = load_model(model or cfg.model, quantization_bit=quantization, trust_remote_code=cfg.trust_remote_code,
                       allow_pickle=cfg.allow_pickle, device_map=device_map, task=task, **kwargs)
    return model
