"""The run folder's one owner: its file names, the typed run record, loading and checking a finished run.

    run = RunFolder("runs/grid")
    record = run.record()          # RunRecord: .config is a TrainConfig, .quantization, .labels, .steps ...
    record.config.model, record.config.max_source_length

Training writes the record (tuning/training/train.py: `RunFolder.write_record`); evaluation, chat, classification, the
server and `tasktune.Assistant` read it only through here. Checkpoints (checkpoints/, fingerprint.json) belong
to tuning/training/checkpoint.py and the adapter files to tuning/model/save.py / tuning/model/methods/; their names are listed here
so that a newcomer sees every file of a run in one place. What a run records so it can be reproduced (data
hashes, versions) is computed here too; files are written with tasktune.files, the one writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasktune.errors import ConfigError, quoted
from tasktune.files import read_text_file

#: What training records about a run (config, fingerprint, environment, results).
RECORD_FILE = "tasktune_run.json"
#: The logged losses, one entry per logging step.
HISTORY_FILE = "train_history.json"
#: The loss curve.
LOSS_PLOT = "loss.png"
#: TensorBoard event files.
LOGS_DIR = "logs"
#: `tasktune eval`'s report, metrics and predictions.
EVAL_DIR = "eval"
#: PEFT's adapter files at the run folder's root (prefix, prompt, LoRA methods).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: Which method wrote the adapter (every method's save writes it).
METHOD_FILE = "tasktune_method.json"


@dataclass(frozen=True)
class Trust:
    """What the person running a command lets a base model do when it is loaded for a finished run: run the model
    folder's own Python code, load pickle weights. A run folder never grants these: its record says what training
    was allowed, and a folder can come from anyone (an edited record ran a planted modeling file). Readers pass
    the user's own `--trust-remote-code` / `--allow-pickle`, or nothing (both off)."""

    remote_code: bool = False
    pickle: bool = False

    @staticmethod
    def add_flags(parser) -> None:
        """`--trust-remote-code` and `--allow-pickle` on a command that loads a finished run's base."""
        parser.add_argument("--trust-remote-code", action="store_true",
                            help="let the base model folder's own Python code run (off; a run folder's record "
                                 "never turns it on)")
        parser.add_argument("--allow-pickle", action="store_true",
                            help="allow the base's .bin/.pt (pickle) weights (off: safetensors only, whatever the "
                                 "run folder's record says)")

    @classmethod
    def from_args(cls, args) -> "Trust":
        return cls(bool(args.trust_remote_code), bool(args.allow_pickle))


@dataclass(frozen=True)
class RunRecord:
    """A finished run as training recorded it. `config` is the TrainConfig the run trained with."""

    config: Any  # TrainConfig (imported lazily: config.py pulls in the flag machinery)
    quantization: int | None = None
    labels: list[str] | None = None
    steps: int | None = None
    final_loss: float | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole JSON, for what is not typed here

    @property
    def task(self) -> str:
        return self.config.task

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> "RunRecord":
        from tasktune.tuning.config import TrainConfig

        raw_config = data.get("config")
        if not isinstance(raw_config, dict) or "model" not in raw_config:
            raise ConfigError(f"{where}: no `config` with the base `model`; not a tasktune run record")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in raw_config.items() if k in known}  # keys of other versions are ignored
        try:
            config = TrainConfig(**values)
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: config: {exc}") from None
        _check_fields(data, where)
        quant = data.get("quantization")
        return cls(config=config, quantization=int(quant) if quant is not None else None, labels=data.get("labels"),
                   steps=data.get("steps"), final_loss=data.get("final_loss"),
                   fingerprint=data.get("fingerprint") or {}, raw=data)

    def to_dict(self) -> dict[str, Any]:
        return {**self.raw, "config": self.config.to_dict()}


def _check_fields(data: dict[str, Any], where: Path) -> None:
    """The record's own fields that readers act on, of the shapes training writes: a `fingerprint` list was an
    AttributeError traceback in eval, `quantization: "x"` loaded the base unquantised without a word and
    `quantization: 3` was refused without naming this file."""
    quant = data.get("quantization")
    if quant is not None and (isinstance(quant, bool) or quant not in (4, 8, "4", "8")):
        raise ConfigError(f"{where}: quantization: expected 4, 8 or null (what training wrote), got {quant!r:.60}")
    labels = data.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise ConfigError(f"{where}: labels: expected a list of label names or null, got {labels!r:.60}")
    for key, kind, what in (("fingerprint", dict, "an object"), ("steps", int, "an integer"),
                            ("final_loss", (int, float), "a number")):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ConfigError(f"{where}: {key}: expected {what} or null, got {type(value).__name__} {value!r:.60}")


class RunFolder:
    """A run folder: where each of its files lives, and its record, loaded and checked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def record_path(self) -> Path:
        return self.path / RECORD_FILE

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def check(self) -> None:
        """A finished run folder: it exists and holds an adapter (PEFT's files or a method record)."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file, not a run folder (give the folder `tasktune train --out` "
                              f"wrote)")
        if not self.path.is_dir():
            raise ConfigError(f"run folder not found: {self.path}")
        missing = [name for name in ADAPTER_FILES if not (self.path / name).is_file()]
        if missing and not (self.path / METHOD_FILE).is_file():
            raise ConfigError(f"{self.path}: no adapter ({', '.join(missing)} missing). Train first: "
                              f"`tasktune train --out {self.path}`, or point at a finished run folder.")

    def raw_record(self) -> dict[str, Any]:
        """The record's JSON as written (for code that passes it on whole)."""
        path = self.record_path
        if not path.is_file():
            raise ConfigError(f"{self.path}: no {RECORD_FILE} — not a finished tasktune run folder "
                              f"(train one with `tasktune train --out {self.path}`)")
        return read_json_object(path, "; re-run `tasktune train` to rewrite it")

    def record(self, *, task: str | None = None, refusal: str = "", trust: Trust = Trust()) -> RunRecord:
        """The checked, typed record of a finished run. With `task`: a run of another task is refused with a
        ConfigError whose message is `refusal` formatted with {run} (this folder) and {task} (the run's task).
        Its config's `trust_remote_code` and `allow_pickle` are `trust`'s, whatever the record says (`Trust`)."""
        self.check()
        record = RunRecord.from_dict(self.raw_record(), self.record_path)
        self._check_agreement(record)
        if task is not None and record.task != task:
            raise ConfigError(refusal.format(run=self.path, task=record.task))
        config = dataclasses.replace(record.config, trust_remote_code=trust.remote_code, allow_pickle=trust.pickle)
        return dataclasses.replace(record, config=config)

    def _check_agreement(self, record: RunRecord) -> None:
        """The record's settings that readers act on are usable, and the facts it shares with METHOD_FILE (the
        adapter's record, which loading follows) agree: an edited `method` or `task` in either was evaluated as
        the other said, with exit 0, and a bad `config.prompt_template` was refused without naming this file."""
        from tasktune.errors import DataError
        from tasktune.tuning.data import check_prompt_template

        try:  # (a classification run reads no prompt template)
            if record.config.task == "causal-lm":
                check_prompt_template(record.config.prompt_template)
        except DataError as exc:
            raise ConfigError(f"{self.record_path}: config.prompt_template: {exc}") from None
        path = self.path / METHOD_FILE
        if not path.is_file():  # a folder from before METHOD_FILE: P-tuning v2 (read_method_info)
            return
        info = read_json_object(path)
        for key, recorded in (("method", record.config.method), ("task", record.config.task),
                              ("labels", record.labels)):
            said = info.get(key)
            if said is not None and recorded is not None and said != recorded:
                field = "labels" if key == "labels" else f"config.{key}"
                raise ConfigError(f"{path}: {key} is {said!r} but {self.record_path} has {field} {recorded!r}: the "
                                  "run folder's records disagree (one was edited, or files of two runs were mixed); "
                                  "restore the edited file, or re-run `tasktune train`")

    def write_record(self, record: dict[str, Any]) -> Path:
        from tasktune.files import write_json

        write_json(self.record_path, record)
        return self.record_path


def split_run_name(item: str | Path) -> tuple[str | None, str]:
    """A RUN_DIR or NAME=RUN_DIR argument (`tasktune serve`'s, `Assistant.from_run`'s) -> (NAME or None, RUN_DIR).
    A folder that exists under the whole text is a RUN_DIR, "=" in its name or not; ConfigError for an empty NAME
    or RUN_DIR."""
    text = str(item)
    name, sep, path = text.partition("=")
    try:
        whole = Path(text).exists()
    except OSError:  # a name too long to be a path (ENAMETOOLONG) is no folder
        whole = False
    if not sep or whole:
        return None, text
    if not (name.strip() and path):
        raise ConfigError(f"{quoted(text)}: expected RUN_DIR or NAME=RUN_DIR with a name and a folder")
    return name, path


# -- what a run records so it can be reproduced ------------------------------------------------------------

DATA_FILES = ("train.json", "dev.json", "train.jsonl", "dev.jsonl")


def read_json_object(path: Path, hint: str = "") -> dict[str, Any]:
    """A run folder's JSON file, which must hold an object: ConfigError naming the file (and `hint`, what to do)
    for text that is not JSON or JSON of another shape (`[]`, `null`: callers' `.get` failed on them). A missing
    file is the caller's to report (OSError)."""
    try:
        data = json.loads(read_text_file(path))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]}){hint}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(data: str | Path) -> dict[str, str]:
    """sha256 of each data file (a folder's train/dev files, or one file), plus the spec hash if recorded."""
    data = Path(data)
    files = [data] if data.is_file() else [data / name for name in DATA_FILES if (data / name).is_file()]
    out = {p.name: sha256_file(p)[:16] for p in files}
    stats = (data if data.is_dir() else data.parent) / "stats.json"
    if stats.is_file():
        try:
            spec_hash = json.loads(read_text_file(stats)).get("spec_sha256")
        except (ValueError, AttributeError):
            spec_hash = None
        if spec_hash:
            out["spec_sha256"] = str(spec_hash)
    return out


def environment_info() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__}
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    from tasktune import __version__

    info["tasktune"] = __version__
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return info
