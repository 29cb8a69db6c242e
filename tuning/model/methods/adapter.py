"""The `Adapter` interface every tuning method returns, and the record (METHOD_FILE) each save writes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from tasktune import __version__
from tasktune import files as atomic
from tasktune.errors import ConfigError
from tasktune.files import read_text_file
from tasktune.tuning.model.load import base_model_reference
from tasktune.tuning.run import METHOD_FILE  # written by every method's save(): method, task, labels, base


class Adapter:
    """A tuned model as train/eval/chat see it. Subclasses fill in attach/load/save/disabled."""

    method: str = ""
    task: str = "causal-lm"
    #: context positions the method's virtual tokens take (generation must leave room for them)
    reserved_positions: int = 0
    #: the model's logits line up with the batch's tokens (no virtual tokens in the input) and its forward takes
    #: transformers' `logits_to_keep`: training may then run the LM head on the answer positions only
    answer_logits: bool = False

    def __init__(self, model: nn.Module, labels: list[str] | None = None):
        self.model = model  # what to call: forward, generate
        self.labels = labels

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters, in a fixed order (the optimizer state is saved by position)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Inside the block, the yielded model answers as the untuned base."""
        raise NotImplementedError
        yield  # pragma: no cover

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        """Write the method's weight/config files into `folder`; return their names."""
        raise NotImplementedError

    def save(self, folder, *, base_model: str, extra: dict | None = None) -> Path:
        """Save into `folder` (created if needed): the method's own format, then METHOD_FILE last.

        The saved configs name the base as `base_model_reference(base_model)` (a local folder's absolute path),
        so `AutoPeftModelForCausalLM.from_pretrained(folder)` finds it from any working directory; METHOD_FILE
        keeps the name as given too (`base_model_given`), as tasktune_run.json's config.model does."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        reference = base_model_reference(base_model)
        files = self.save_weights(folder, reference, extra or {})
        for name in files:  # libraries write some files 0600 (safetensors): give them the umask's mode
            atomic.settle(folder / name)
        info = {"method": self.method, "task": self.task, "labels": self.labels, "base_model": reference,
                "base_model_given": base_model, "files": sorted(files), "tasktune_version": __version__,
                "extra": extra or {}}
        atomic.write_json(folder / METHOD_FILE, info)
        return folder


def read_method_info(folder) -> dict[str, Any]:
    """METHOD_FILE of a saved adapter; folders from before it existed are P-tuning v2 (PEFT PREFIX_TUNING)."""
    folder = Path(folder)
    path = folder / METHOD_FILE
    if path.is_file():
        try:
            info = json.loads(read_text_file(path))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(info, dict) or not isinstance(info.get("method"), str):
            raise ConfigError(f"{path}: expected a JSON object with the method's name in \"method\" "
                              f"(as `tasktune train` writes it)")
        return info
    if (folder / "adapter_config.json").is_file():
        return {"method": "ptuning-v2", "task": "causal-lm", "labels": None}
    raise ConfigError(f"{folder}: neither {METHOD_FILE} nor adapter_config.json; not a tasktune adapter folder")


def folder_bytes(folder, files: list[str]) -> int:
    """Bytes of the named files in `folder` (what a method's checkpoint costs on disk)."""
    return sum((Path(folder) / name).stat().st_size for name in files if (Path(folder) / name).is_file())
