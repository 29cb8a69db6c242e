"""The tiny model's settings: TinyConfig (its fields are also `tasktune tiny-model`'s flags) and the names
every part of the build shares (record file, special tokens, the frame text the tokenizer must cover)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from tasktune.errors import ConfigError
from tasktune.flags import BATCH, COUNT, LEARNING_RATE, PROBABILITY, SEED, SIZE, STEPS0, TOKENS, Range

#: Written next to the weights: how this model was built (spec + hash, seed, steps, loss, size).
RECORD_FILE = "tiny_model.json"
PAD, UNK, BOS, EOS, MASK, GMASK = "<pad>", "<unk>", "<bos>", "<eos>", "[MASK]", "[gMASK]"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, MASK, GMASK]
#: Text the tokenizer must always cover: the ChatGLM / Human-Assistant prompt frames, digits, ASCII.
FRAME_TEXT = "[Round 1]\n\n问：\n\n答：\n\nHuman: \n\nAssistant: 0123456789" + "".join(map(chr, range(32, 127)))


def _opt(default: Any, flag: str, help: str, **extra: Any) -> Any:
    """A TinyConfig field that is also a `tasktune tiny-model` flag (as tuning/config.py's `_opt` for train):
    `flag` its name, `help` its --help line, `type=` its argparse type (a Range of tasktune/flags.py for numbers;
    only the flag checks it, __post_init__ keeps its own checks for API callers), `action="store_true"` for a
    switch without a --no- form (other booleans get one). tiny/cli.py turns these into the flags."""
    return field(default=default, metadata={"flag": flag, "help": help, **extra})


@dataclass
class TinyConfig:
    """Size of the tiny GLM, its tokenizer and its LM pre-training (the knobs the demo may tune)."""

    num_layers: int = _opt(6, "--layers", "transformer layers", type=Range(int, 1, 256))
    """Depth. The prefix acts at every layer, so depth is what it has to work with: on the GPU sweep
    (benchmarks/RESULTS.md) ~1,000 P-tuning steps of 32 reached 0.38-0.80 exact match on the argument and summary
    records with 4 layers, 0.75-0.95 with 6 (each over several base seeds)."""
    hidden_size: int = _opt(192, "--hidden", "hidden size", type=SIZE)
    """Width. 192 (3.0M parameters) since 2026-12-06: with the numeracy documents (compare_docs) the P-tuned demo
    reached 92.4 % on the argument and summary records on the CPU, against 84.7 % for hidden 128 without them
    (benchmarks/RESULTS.md, sweep 18); P-tuning's CPU step costs ~1.4x hidden 128's."""
    num_heads: int = _opt(6, "--heads", "attention heads", type=Range(int, 1, 1024))
    num_kv_heads: int = _opt(6, "--kv-heads", "key/value heads (GQA)", type=Range(int, 1, 1024))
    """Key/value heads (fewer than num_heads: grouped-query attention, as GLM-4). The demo base keeps all of them:
    on the GPU sweep (benchmarks/tiny_sweep.py) 2 kv heads of 4 P-tuned to 5-19 % exact match, 4 to 54-73 %."""
    intermediate_size: int = _opt(512, "--ffn", "MLP intermediate size", type=SIZE)
    vocab_size: int = _opt(3000, "--vocab-size", "BPE vocabulary bound", type=Range(int, 64, 1 << 20))
    """Upper bound for the BPE vocabulary (256 byte-fallback tokens come on top)."""
    max_token_chars: int = 4
    """Longest merged token: keeps the BPE char-level-ish, so slot values (places, numbers)
    are spelled the same inside prompts and answers."""
    number_chunks: bool = _opt(False, "--number-chunks",
                               "numbers as tokens of up to 3 digits (as Llama 3) instead of one token per digit")
    """Numbers as chunks of up to 3 digits (merged by BPE) rather than one token per digit. Measured worse on the
    grid demo (dev exact match 11 % against 48 % with single digits): the tuned model must then carry ~70 number
    tokens over like places, and mostly does not."""
    pretrain_steps: int = _opt(4000, "--steps", "LM pre-training steps on the domain text; the copy warm-up "
                                                       "(--copy-warmup-steps, default 600) comes first, on top",
                              type=COUNT)
    """Steps of LM training on the domain documents (after the copy warm-up). At hidden 128 a step costs a
    quarter of hidden 256's, so the model sees the domain text for more epochs in the same time; 6 layers
    need 3,000-4,000 steps (GPU sweep: 2,000 left the P-tuned arguments step at chance on some seeds)."""
    lr: float = _opt(1e-3, "--lr", "peak learning rate", type=LEARNING_RATE)
    """Peak learning rate. 3e-3 and above learn the domain text faster but never learn to copy from the
    context (measured: copy accuracy 0 at 1e-2 and 3e-3, rising at 1e-3), and P-tuning cannot add that later."""
    warmup_steps: int = 50
    batch_size: int = _opt(16, "--batch-size", "rows per step", type=BATCH)
    block_size: int = _opt(256, "--block-size", "tokens per row", type=TOKENS)
    """Longest training row in tokens (a three-round reading document runs to ~250)."""
    pack: bool = _opt(False, "--pack", "pack documents into full rows (faster)", action="store_true")
    """Join documents with eos into full rows (faster, but teaches "ignore what came before eos")."""
    copy_docs: bool = _opt(True, "--copy-docs", "add repeated random strings (copying signal)")
    """Also train on random strings of domain pieces written twice (a copying / induction signal)."""
    copy_warmup_steps: int = _opt(600, "--copy-warmup-steps",
                                  "steps on the copy strings alone before the domain text (0: none)", type=STEPS0)
    """First train this many steps on the copy strings alone (batch copy_batch_size): a small model forms its
    copying heads there; mixed with the domain text from the start, it does not within the step budget."""
    copy_batch_size: int = 32
    para_docs: bool = _opt(True, "--para-docs", "add two requests naming the same slot values, one after the other")
    """Also train on two requests of one step that name the same slot values (e.g. two wordings of a check at
    one place), one after the other: entity repetition as in real text, never a request with its answer."""
    skill_docs: bool = _opt(True, "--skill-docs",
                            "add reading documents in the chat frame: a question answered by itself, its numbers or "
                            "its slot words (never its task answer)")
    """Also train on reading skills in the chat frame: a question answered by itself echoed, by its numbers,
    or by the slot words it names (never by its task answer). Without them the base copies random strings
    (0.84 of tokens) yet never pulls a place out of a question, and P-tuning v2 stays at 0 % exact match."""
    answer_pairs: bool = _opt(True, "--answer-pairs",
                              "add two answers naming the same slot value (and the same numbers), one after the other")
    """Also train on two different answers of one step that name the same slot value and the same numbers (e.g.
    two argument answers for one place, with different check types), one after the other: an answer's slot word
    copied from what came before, never a request with its answer. Without them some 6-layer bases never let the
    prefix name the request's place after "地名为" (GPU seed 5: wrong in 68 of 72 answers; this CPU's seed 42: 71);
    with them every one of 8 base seeds named it in every answer (GPU sweep 12)."""
    round_docs: float = _opt(0.3, "--round-docs", "share of records that add a multi-round reading document (0: none)",
                             type=PROBABILITY)
    """Share of records that also add a multi-round reading document: two or three reading skills (above) in
    ChatGLM's multi-round frame ([Round 1] ... [Round 3]), so the base knows earlier rounds and long contexts.
    Without them every whole-dialogue record (one in ten of dev) came out as garbage after P-tuning (0/30)."""
    compare_docs: bool = _opt(True, "--compare-docs",
                              "add a numeracy skill in the chat frame: a question with numbers answered by how its "
                              "neighbouring numbers compare (never its task answer)")
    """Also train on a numeracy skill (with skill_docs): a question with two or more numbers answered by each pair
    of neighbouring numbers and how they compare (`47与34: 大于`), as any chat model can. The summaries' verdicts
    turn on such comparisons (应到 vs 实到, 实到 vs 佩戴), which the base never learns from unpaired answers in its
    step budget (benchmarks/verdict_probe.py: the verdict at chance after 4,000 LM steps). On by default since the
    wider base (hidden 192) keeps the argument step with it; at hidden 128 it cost the check type on 2 of 4 seeds."""
    number_docs: int = _opt(0, "--number-docs", "plain numeracy documents over random pairs of numbers (0: none)",
                            type=STEPS0)
    """Also train on this many plain numeracy documents (tiny/corpus.py `number_pair_docs`): lines `a与b: 关系` over
    random numbers in the records' range, one relation in three equal. compare_docs' pairs come from the records,
    where the 人数检测 counts are rarely equal: the shipped base ranks 等于 first after 应到A与实到A on 0 of 14
    train questions, and the P-tuned demo's remaining errors are mostly equal counts."""
    n_records: int | None = _opt(None, "--n", "records to generate (default: the generator's)", type=COUNT)
    """Records asked of the data generator; None = its default."""
    data_seed: int | None = _opt(None, "--data-seed",
                                 "seed of the data generator run the documents come from: the seed (and --n) `tasktune "
                                 "data` ran with (default: --seed; set it when --seed differs, so no dev text becomes "
                                 "a document)", type=SEED)
    """Seed of the data-generator run whose train records become the documents (None: the build seed). Keep it (and
    n_records) at what `tasktune data` ran with: the documents then come from that data set's train split only,
    never from its dev split (bases of several seeds for one data set keep this fixed and vary `seed`)."""
    seed: int = _opt(42, "--seed", "seed for data, init and training order", type=SEED)
    tie_embeddings: bool = _opt(True, "--tie-embeddings", "share the input embedding and the output head")
    """Share the input embedding and the output head: a head that moves a token's embedding unchanged
    then raises that same token's logit, so copying from the context is easy to learn (measured after the
    copy warm-up: copy accuracy 0.43 tied, 0.01 untied)."""
    extra: dict = field(default_factory=dict)
    """Further GlmConfig keyword arguments (e.g. initializer_range)."""

    def __post_init__(self) -> None:
        """Every problem at once, each naming the flag that sets the field and its value (`tiny model: --hidden 7:
        must divide by --heads 2; --heads 2: must divide by --kv-heads 6 (the default)`)."""
        problems = []
        if not 0.0 <= self.round_docs <= 1.0:
            problems.append(f"{self._named('round_docs')}: expected a share of the records, in [0, 1]")
        if self.hidden_size % self.num_heads:
            problems.append(f"{self._named('hidden_size')}: must divide by {self._named('num_heads')}")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"{self._named('num_heads')}: must divide by {self._named('num_kv_heads')}")
        for name, least in (("pretrain_steps", 0), ("copy_warmup_steps", 0), ("batch_size", 1),
                            ("copy_batch_size", 1), ("block_size", 8)):
            if getattr(self, name) < least:
                problems.append(f"{self._named(name)}: expected >= {least}")
        if problems:
            raise ConfigError("tiny model: " + "; ".join(problems))

    def _named(self, name: str) -> str:
        """A field as the user set it: its flag (for a field without one, its name) and value, with "(the
        default)" when it has the default value (`--kv-heads 6 (the default)`)."""
        f = next(f for f in fields(self) if f.name == name)
        value = getattr(self, name)
        default = " (the default)" if f.default is not MISSING and value == f.default else ""
        return f"{f.metadata.get('flag', name)} {value}{default}"
