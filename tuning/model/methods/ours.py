"""Ours: the P-tuning v2 / prefix-tuning prefix of tasktune.tuning.model.prefix, saved in PEFT's PREFIX_TUNING format."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from .adapter import Adapter


class PrefixAdapter(Adapter):
    """tuning/model/prefix.py's prefix; saved in PEFT's PREFIX_TUNING format by tuning/model/save.py."""

    def __init__(self, model, tuner, method: str):
        super().__init__(model)
        self.tuner, self.method = tuner, method
        self.reserved_positions = tuner.config.pre_seq_len
        self.answer_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.tuner.encoder.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        with self.tuner.disabled():
            yield self.model

    def save_weights(self, folder: Path, base_model: str, extra: dict) -> list[str]:
        from tasktune.tuning.model.save import CONFIG_NAME, ENCODER_NAME, RECORD_NAME, WEIGHTS_NAME, save_adapter

        save_adapter(self.tuner, folder, base_model=base_model, extra=extra)
        return [CONFIG_NAME, WEIGHTS_NAME, RECORD_NAME] + ([ENCODER_NAME] if self.tuner.config.prefix_projection else [])


def attach_prefix(model, cfg, method: str) -> PrefixAdapter:
    from tasktune.tuning.model.prefix import PrefixConfig, attach_prefix as attach

    tuner = attach(model, PrefixConfig(pre_seq_len=cfg.pre_seq_len,
                                              prefix_projection=cfg.prefix_projection or method == "prefix",
                                              prefix_hidden_size=cfg.prefix_hidden_size,
                                              prefix_dropout=cfg.prefix_dropout))
    return PrefixAdapter(model, tuner, method)


def load_prefix(model, folder: Path, info: dict, is_trainable: bool) -> PrefixAdapter:
    from tasktune.tuning.model.save import load_adapter

    return PrefixAdapter(model, load_adapter(model, folder, is_trainable=is_trainable), info["method"])
