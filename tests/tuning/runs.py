"""Helpers for tests that train: a small hand-written data folder, a fast TrainConfig, a Llama-like tokenizer copy."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from tasktune.tuning.config import TrainConfig

PLACES = ["济南", "青岛", "烟台", "潍坊", "临沂", "淄博", "威海", "日照"]
CHECKS = {"人数": "人数检测", "安全": "安全检查", "设备": "设备检查"}
#: how close two batch layouts of one update must come: fp32 on the CPU; on a CUDA GPU `fit` runs bf16 autocast,
#: whose rounding differs between layouts (still far below the 0.03 of ungrouped micro-batches)
EXACT = 2e-3 if torch.cuda.is_available() else 1e-5


def _record(place: str, kind: str) -> dict:
    check = CHECKS[kind]
    return {
        "content": f"步骤#理解并基于输入拆分函数参数*语音#查查{place}的{kind}",
        "summary": f"因为出现地名为{place}, 所以函数一参数为{place}; 因为出现{kind}要求, 所以函数二参数为{check}",
        "meta": {"step": "arguments", "template": "arguments/0", "slots": {"place": place, "check": check},
                 "arguments": {"place": place, "check": check},
                 "answer_pattern": f"^因为出现地名为(?P<place>.+?), 所以函数一参数为(?P=place); "
                                   f"因为出现{kind}要求, 所以函数二参数为(?P<check>.+?)$"},
    }


def write_data(folder: Path) -> Path:
    """train.json (24 records) and dev.json (6 records) in the ChatGLM format with generator meta."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [_record(p, k) for p in PLACES for k in CHECKS]
    (folder / "train.json").write_text(json.dumps(records[:18] + records[21:], ensure_ascii=False), encoding="utf-8")
    (folder / "dev.json").write_text(json.dumps(records[18:21] + records[:3], ensure_ascii=False), encoding="utf-8")
    return folder


def fast_config(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(model=str(model), data=str(data), out=str(out), pre_seq_len=4, max_steps=4,
                  per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=5e-2,
                  save_steps=2, logging_steps=1, max_source_length=160, max_target_length=160,
                  quantization_bit="none", seed=7)
    values.update(overrides)
    return TrainConfig(**values)


def with_bos_and_chat_template(tokenizer):
    """A copy that adds bos to every encoding (as Llama's) and has a chat template that writes bos itself."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tok
