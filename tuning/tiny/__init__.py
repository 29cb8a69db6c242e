"""`tasktune tiny-model`: build the embedded default base model (a small random GLM + a local tokenizer),
briefly pre-trained as a plain LM on *unpaired* domain text so it writes the domain but does not do the task.

Two phases: a copy warm-up on random strings written twice (a real base model can copy from its context;
a tiny one learns it only there, with tied embeddings and a moderate learning rate), then the domain text:
contents, summaries, two requests naming the same slot values, two answers naming the same place, and "reading"
documents in the chat frame, never a request followed by its answer (measurements: corpus.py, config.py,
benchmarks/copy_probe.py, benchmarks/tiny_sweep.py).

Modules, each importing only those after it: cli (flags, handler) -> build (the folder) -> pretraining, model,
tokenizer, corpus -> config (TinyConfig, shared names).
"""

from tasktune.tuning.tiny.build import build_tiny_model
from tasktune.tuning.tiny.cli import add_arguments, run
from tasktune.tuning.tiny.config import RECORD_FILE, TinyConfig
from tasktune.tuning.tiny.corpus import (Corpus, build_corpus, collect_slot_words, copy_string, generate_records,
                                         reading_answers, read_spec_text)
from tasktune.tuning.tiny.model import make_model
from tasktune.tuning.tiny.pretraining import length_batches, make_rows, pretrain
from tasktune.tuning.tiny.tokenizer import train_tokenizer

__all__ = ["RECORD_FILE", "Corpus", "TinyConfig", "add_arguments", "build_corpus", "build_tiny_model",
           "collect_slot_words", "copy_string", "generate_records", "length_batches", "make_model", "make_rows",
           "pretrain", "read_spec_text", "reading_answers", "run", "train_tokenizer"]
