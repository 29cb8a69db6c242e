"""Shared fixtures for tuning tests: tiny random causal LMs (GLM, GLM4, Llama, Qwen2) saved with a tiny tokenizer.

Use the session-scoped factory `tiny_model_dir(arch, pad_token=True)` -> Path of a folder that
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` (and `tuning.model.load`) read.
Every model has 2 layers and grouped-query attention (4 query heads, 2 key/value heads, head_dim 16).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ARCHS = ("glm", "glm4", "llama", "qwen2")

# Text the byte-level BPE learns merges from: the grid-assistant prompts plus a little English.
_CORPUS = [
    "步骤#问候*语音#你好", "步骤#理解并基于输入拆分函数参数*语音#请尝试查看济南的工地的人数情况",
    "因为出现地名为济南, 所以函数一参数为济南; 因为出现人数要求, 所以函数二参数为人数检测",
    "步骤#基于函数调用结果进行总结*工单查询#应到47人*目标检测#实到34人*任务类型#人数检测",
    "[人数检测] 应到47人, 实到34人, 有人缺勤", "[安全检查] 实到12人, 均佩戴安全帽",
    "您好,我是电网大模型的语言核心,用于拆解执行行为库并向您汇报结果",
    "hello world, the quick brown fox jumps over the lazy dog 0123456789",
]

_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    # Larger than the usual 0.02 so greedy decoding of a random model has clear winners
    # (ties would make batched-vs-single comparisons flaky).
    initializer_range=0.2,
)


def build_tiny_tokenizer(out_dir: Path, *, pad_token: bool = True):
    """Train a byte-level BPE (~300 tokens) on a tiny corpus and save it as a fast tokenizer in `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"] if pad_token else ["<bos>", "<eos>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>" if pad_token else None
    )
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_config(arch: str, tokenizer, **sizes):
    """A 2-layer GQA config of `arch` whose vocabulary matches `tokenizer`; `sizes` override _SIZES."""
    from transformers import Glm4Config, GlmConfig, LlamaConfig, Qwen2Config

    classes = {"glm": GlmConfig, "glm4": Glm4Config, "llama": LlamaConfig, "qwen2": Qwen2Config}
    if arch not in classes:
        raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return classes[arch](
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id, tie_word_embeddings=False, **{**_SIZES, **sizes},
    )


def build_tiny_model_dir(out_dir: Path, arch: str, *, pad_token: bool = True, seed: int = 0, **sizes) -> Path:
    """Save a random tiny `arch` model (fp32, safetensors) and its tokenizer into `out_dir`; `sizes` override
    _SIZES (e.g. max_position_embeddings)."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(out_dir, pad_token=pad_token)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_tiny_config(arch, tokenizer, **sizes), dtype=torch.float32)
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: `tiny_model_dir("llama")` -> Path of a saved tiny model + tokenizer (built once per session)."""
    cache: dict[tuple[str, bool], Path] = {}

    def make(arch: str = "glm", *, pad_token: bool = True) -> Path:
        key = (arch, pad_token)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{arch}{'' if pad_token else '-nopad'}")
            cache[key] = build_tiny_model_dir(folder, arch, pad_token=pad_token)
        return cache[key]

    return make
