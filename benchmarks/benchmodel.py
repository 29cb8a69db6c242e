"""Random-weight GLM models and a character tokenizer for the benchmarks (no weights can be downloaded).

`build_model_dir(size, out)` writes a GLM-architecture model of one of SIZES (ChatGLM3-6B's dimensions
for "6b") with random weights, plus a character-level tokenizer whose vocabulary fills the model's, into
a folder that `tuning.model.load.load_model` / `load_tokenizer` read. On a GPU the weights are initialised in
bf16 on the device (seconds for 6B); the values do not matter for speed or memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

#: name -> GlmConfig keywords. "6b": ChatGLM3-6B (6.24B parameters); "1b": ~1B for issue #3; "tiny": CPU smoke;
#: "narrow28": 6b's layer count at tiny width (op counts on a CPU).
SIZES = {
    "6b": dict(hidden_size=4096, intermediate_size=13696, num_hidden_layers=28, num_attention_heads=32,
               num_key_value_heads=2, head_dim=128, vocab_size=65024, max_position_embeddings=8192),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=2, head_dim=128, vocab_size=65024, max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=2048, max_position_embeddings=1024),
    # 6b's 28 layers at tiny width: the same ops per step as 6b (train_bench.py --count-ops), on a CPU
    "narrow28": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=28, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=2048, max_position_embeddings=1024),
}
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
RECORD = "benchmodel.json"

PLACES = ["济南", "青岛", "烟台", "潍坊", "临沂", "淄博", "威海", "日照", "德州", "聊城", "滨州", "菏泽",
          "枣庄", "东营", "泰安", "邹城"]
CHECKS = ["人数", "安全帽", "设备", "安全"]


def grid_prompts(n: int) -> list[str]:
    """`n` ChatGLM-framed grid-assistant prompts of varied lengths (the reference case's three steps)."""
    prompts = []
    for i in range(n):
        place, check = PLACES[i % len(PLACES)], CHECKS[(i // 3) % len(CHECKS)]
        kind = i % 3
        if kind == 0:
            query = f"步骤#理解并基于输入拆分函数参数*语音#请尝试查看{place}工地的{check}情况" + "，谢谢" * (i % 5)
        elif kind == 1:
            query = (f"步骤#基于函数调用结果进行总结*工单查询#应到{20 + i}人*目标检测#实到{10 + i}人"
                     f"*任务类型#{check}检查" + "*备注#无" * (i % 4))
        else:
            query = "步骤#问候*语音#你好" + "，请简单自我介绍一下" * (1 + i % 3)
        prompts.append(f"[Round 1]\n\n问：{query}\n\n答：")
    return prompts


def char_tokenizer(vocab_size: int, texts: list[str] = ()):
    """A character-level fast tokenizer with exactly `vocab_size` ids: specials, ASCII, the characters of
    `texts` and the grid prompts, then filler tokens `<x123>`, so every id a random model emits decodes to
    a distinct string (answers can be compared as text)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars: dict[str, None] = {}
    for text in [*map(chr, range(32, 127)), "\n", *grid_prompts(48), *texts]:
        for ch in text:
            chars.setdefault(ch, None)
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in chars:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(ch, len(vocab))
    for i in range(len(vocab), vocab_size):
        vocab[f"<x{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>")


def count_parameters(size: str) -> int:
    """Parameters of a SIZES model, computed from its config without building it."""
    s = SIZES[size]
    h, ffn, layers, v = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    q = s["num_attention_heads"] * s["head_dim"]
    kv = s["num_key_value_heads"] * s["head_dim"]
    attention = h * (q + 2 * kv) + (q + 2 * kv) + q * h  # qkv weights + qkv bias + o_proj (no bias)
    mlp = h * 2 * ffn + ffn * h
    return 2 * v * h + h + layers * (attention + mlp + 2 * h)


def build_model_dir(size: str, out: str | Path, *, texts: list[str] = (), seed: int = 0) -> Path:
    """Write a random GLM of `size` (bf16 on a GPU, fp32 on CPU) and its tokenizer to `out`; reuse if built."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    out = Path(out)
    if (out / RECORD).is_file() and json.loads((out / RECORD).read_text())["size"] == size:
        return out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = char_tokenizer(SIZES[size]["vocab_size"], texts)
    config = GlmConfig(**SIZES[size], rms_norm_eps=1e-5, tie_word_embeddings=False,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(seed)
    with torch.device("cuda" if cuda else "cpu"):
        model = GlmForCausalLM._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    n_params = sum(p.numel() for p in model.parameters())
    built = time.perf_counter() - started
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if cuda:
        torch.cuda.empty_cache()
    record = {"size": size, "parameters": n_params, "dtype": str(dtype), "build_seconds": round(built, 1),
              "total_seconds": round(time.perf_counter() - started, 1)}
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"built {size} GLM: {n_params / 1e9:.3f}B parameters in {record['total_seconds']}s -> {out}", flush=True)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build a random-weight GLM + char tokenizer for benchmarks.")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", required=True)
    parser.add_argument("--text-from", help="a data folder (train.json/dev.json): its characters join the vocabulary")
    args = parser.parse_args()
    texts = []
    if args.text_from:
        for name in ("train.json", "dev.json"):
            path = Path(args.text_from) / name
            if path.is_file():
                texts += [r.get("content", "") + r.get("summary", "") for r in json.loads(path.read_text("utf-8"))]
    build_model_dir(args.size, args.out, texts=texts)


def add_model_arguments(parser) -> None:
    """The options every benchmark shares: which random model, where, how quantised, how long a prefix."""
    parser.add_argument("--tiny", action="store_true", help="small random GLM (CPU smoke test)")
    parser.add_argument("--size", choices=sorted(SIZES), default="6b")
    parser.add_argument("--model-dir", help="where the random model is built (reused if already there)")
    parser.add_argument("--quantization-bit", default="4", choices=["4", "8", "none"])
    parser.add_argument("--pre-seq-len", type=int, default=128)
