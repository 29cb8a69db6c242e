"""Minimal reproduction (no tasktune): does PeftModel.generate use a PREFIX_TUNING adapter's prefix?

A tiny random Llama, a prefix with large random key/values (so that it must change the answer), then greedy
answers three ways: the base model's generate, PEFT's generate, and a greedy loop of PEFT forward passes.
PEFT's generate should equal the forward loop (the prefix applied) and differ from the base.

    python benchmarks/peft_prefix_generate_repro.py   # prints the versions and OK / BROKEN; exit 1 if BROKEN
"""

import sys

import peft
import torch
import transformers
from peft import PrefixTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

torch.manual_seed(0)
config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                     initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
base = LlamaForCausalLM(config).eval()
model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
with torch.no_grad():
    for p in model.prompt_encoder.parameters():
        p.normal_(0, 3.0)
ids = torch.tensor([[1, 5, 9, 14, 22, 31]])
mask = torch.ones_like(ids)
kw = dict(max_new_tokens=8, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None)
with torch.no_grad():
    peft_generate = model.generate(input_ids=ids, attention_mask=mask, **kw)[0, ids.shape[1]:].tolist()
    with model.disable_adapter():
        base_generate = model.generate(input_ids=ids, attention_mask=mask, **kw)[0, ids.shape[1]:].tolist()
    seq = ids
    for _ in range(kw["max_new_tokens"]):  # greedy, one full forward pass per token (no cache)
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    forward_loop = seq[0, ids.shape[1]:].tolist()
ok = peft_generate == forward_loop and forward_loop != base_generate
print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
print(f"base generate:      {base_generate}\npeft generate:      {peft_generate}\npeft forward loop:  {forward_loop}")
print("OK: generate applies the prefix" if ok else "BROKEN: PeftModel.generate does not apply the prefix")
sys.exit(0 if ok else 1)
