"""`tasktune tiny-model`: build the embedded default base model (a small random GLM + a local tokenizer),
briefly pre-trained as a plain LM on *unpaired* domain text so it writes the domain but does not do the task.

Two phases: a copy warm-up on random strings written twice (a real base model can copy from its context;
a tiny one learns it only there, with tied embeddings and a moderate learning rate), then the domain text:
contents, summaries, two requests naming the same slot values, two answers naming the same place, and "reading"
documents in the chat frame (a question answered by itself echoed, by its numbers, or by the slot words it names),
never a request followed by its answer. The reading documents are what let a prefix pull values out of the
question (benchmarks/copy_probe.py: a place at the first mention in an answer 0/60 without them, 51/60 with them);
chained over two or three rounds of ChatGLM's multi-round frame they let it answer whole dialogues
(benchmarks/tiny_sweep.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tasktune import files as atomic
from tasktune.errors import ConfigError, SpecError

#: Written next to the weights: how this model was built (spec + hash, seed, steps, loss, size).
RECORD_FILE = "tiny_model.json"
PAD, UNK, BOS, EOS, MASK, GMASK = "<pad>", "<unk>", "<bos>", "<eos>", "[MASK]", "[gMASK]"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, MASK, GMASK]
#: Text the tokenizer must always cover: the ChatGLM / Human-Assistant prompt frames, digits, ASCII.
FRAME_TEXT = "[Round 1]\n\n问：\n\n答：\n\nHuman: \n\nAssistant: 0123456789" + "".join(map(chr, range(32, 127)))
SPEC_SUFFIXES = {".yaml", ".yml", ".txt", ".jinja", ".j2", ".json", ".md"}


@dataclass
class TinyConfig:
    """Size of the tiny GLM, its tokenizer and its LM pre-training (the knobs the demo may tune)."""

    num_layers: int = 6
    """Depth. The prefix acts at every layer, so depth is what it has to work with: on the GPU sweep
    (benchmarks/RESULTS.md) ~1,000 P-tuning steps of 32 reached 0.38-0.80 exact match on the argument and summary
    records with 4 layers, 0.75-0.95 with 6 (each over several base seeds)."""
    hidden_size: int = 128
    num_heads: int = 4
    num_kv_heads: int = 4
    """Key/value heads (fewer than num_heads: grouped-query attention, as GLM-4). The demo base keeps all 4: on the
    GPU sweep (benchmarks/tiny_sweep.py) 2 kv heads P-tuned to 5-19 % exact match, 4 to 54-73 %."""
    intermediate_size: int = 352
    vocab_size: int = 3000
    """Upper bound for the BPE vocabulary (256 byte-fallback tokens come on top)."""
    max_token_chars: int = 4
    """Longest merged token: keeps the BPE char-level-ish, so slot values (places, numbers)
    are spelled the same inside prompts and answers."""
    number_chunks: bool = False
    """Numbers as chunks of up to 3 digits (merged by BPE) rather than one token per digit. Measured worse on the
    grid demo (dev exact match 11 % against 48 % with single digits): the tuned model must then carry ~70 number
    tokens over like places, and mostly does not."""
    pretrain_steps: int = 4000
    """Steps of LM training on the domain documents (after the copy warm-up). At hidden 128 a step costs a
    quarter of hidden 256's, so the model sees the domain text for more epochs in the same time; 6 layers
    need 3,000-4,000 steps (GPU sweep: 2,000 left the P-tuned arguments step at chance on some seeds)."""
    lr: float = 1e-3
    """Peak learning rate. 3e-3 and above learn the domain text faster but never learn to copy from the
    context (measured: copy accuracy 0 at 1e-2 and 3e-3, rising at 1e-3), and P-tuning cannot add that later."""
    warmup_steps: int = 50
    batch_size: int = 16
    block_size: int = 256
    """Longest training row in tokens (a three-round reading document runs to ~250)."""
    pack: bool = False
    """Join documents with eos into full rows (faster, but teaches "ignore what came before eos")."""
    copy_docs: bool = True
    """Also train on random strings of domain pieces written twice (a copying / induction signal)."""
    copy_warmup_steps: int = 600
    """First train this many steps on the copy strings alone (batch copy_batch_size): a small model forms its
    copying heads there; mixed with the domain text from the start, it does not within the step budget."""
    copy_batch_size: int = 32
    para_docs: bool = True
    """Also train on two requests of one step that name the same slot values (e.g. two wordings of a check at
    one place), one after the other: entity repetition as in real text, never a request with its answer."""
    skill_docs: bool = True
    """Also train on reading skills in the chat frame: a question answered by itself echoed, by its numbers,
    or by the slot words it names (never by its task answer). Without them the base copies random strings
    (0.84 of tokens) yet never pulls a place out of a question, and P-tuning v2 stays at 0 % exact match."""
    answer_pairs: bool = True
    """Also train on two different answers of one step that name the same slot value and the same numbers (e.g.
    two argument answers for one place, with different check types), one after the other: an answer's slot word
    copied from what came before, never a request with its answer. Without them some 6-layer bases never let the
    prefix name the request's place after "地名为" (GPU seed 5: wrong in 68 of 72 answers; this CPU's seed 42: 71);
    with them every one of 8 base seeds named it in every answer (GPU sweep 12)."""
    round_docs: float = 0.3
    """Share of records that also add a multi-round reading document: two or three reading skills (above) in
    ChatGLM's multi-round frame ([Round 1] ... [Round 3]), so the base knows earlier rounds and long contexts.
    Without them every whole-dialogue record (one in ten of dev) came out as garbage after P-tuning (0/30)."""
    n_records: int | None = None
    """Records asked of the data generator; None = its default."""
    data_seed: int | None = None
    """Seed of the data-generator run whose train records become the documents (None: the build seed). Keep it (and
    n_records) at what `tasktune data` ran with: the documents then come from that data set's train split only,
    never from its dev split (bases of several seeds for one data set keep this fixed and vary `seed`)."""
    seed: int = 42
    tie_embeddings: bool = True
    """Share the input embedding and the output head: a head that moves a token's embedding unchanged
    then raises that same token's logit, so copying from the context is easy to learn (measured after the
    copy warm-up: copy accuracy 0.43 tied, 0.01 untied)."""
    extra: dict = field(default_factory=dict)
    """Further GlmConfig keyword arguments (e.g. initializer_range)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.round_docs <= 1.0:
            raise ConfigError(f"tiny model: round_docs is a share of the records, in [0, 1]; got {self.round_docs}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"tiny model: hidden_size {self.hidden_size} must divide by num_heads {self.num_heads}, "
                f"and num_heads by num_kv_heads {self.num_kv_heads}"
            )
        if min(self.pretrain_steps, self.copy_warmup_steps) < 0 or min(self.batch_size, self.copy_batch_size) < 1 \
                or self.block_size < 8:
            raise ConfigError("tiny model: pretrain_steps, copy_warmup_steps >= 0, batch sizes >= 1, "
                              "block_size >= 8 required")


@dataclass
class Corpus:
    """Unpaired pre-training documents and the text the tokenizer is trained on."""

    documents: list[tuple[str, bool]]
    """(text, ends with eos): a framed prompt stays open after "答：" so the base model learns no answer."""
    tokenizer_text: list[str]
    words: list[str] = field(default_factory=list)
    """Slot values (places, check types) that become whole tokens: the same token ids in the prompt and
    in the answer, so copying them is one step (BPE merges would split "在邹城的" as "在邹|城的")."""
    copies: list[tuple[str, bool]] = field(default_factory=list)
    """The copy strings alone (also inside `documents`): the copy warm-up trains on these."""


# ---------------------------------------------------------------- text


def generate_records(spec_path: Path, seed: int, n: int | None) -> tuple[list[dict], list[dict]]:
    """(train, dev) records from the data generator's Python API."""
    try:
        from tasktune.datagen import generate
    except ImportError as exc:
        raise ConfigError(f"tiny-model needs the data generator (datagen.generate): {exc}") from None
    splits = generate(spec_path, seed=seed, **({"n": n} if n else {}))
    return list(splits.train), list(splits.dev)


def read_spec_text(spec_path: Path) -> list[str]:
    """The spec file and its sibling text files (templates, pools): the tokenizer must know their chars."""
    files = [spec_path] + sorted(
        p for p in spec_path.parent.rglob("*") if p.is_file() and p.suffix in SPEC_SUFFIXES and p != spec_path
    )
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def build_corpus(
    train: list[dict],
    dev: list[dict],
    spec_text: list[str],
    copy_docs: bool = False,
    skill_docs: bool = False,
    rng: random.Random | None = None,
    para_docs: bool = False,
    round_docs: float = 0.0,
    answer_pairs: bool = False,
) -> Corpus:
    """Pre-training documents from the *train* records: each content (raw, and in the ChatGLM frame
    left open after "答："), each summary, as separate documents, never content -> summary.
    `copy_docs` adds, per record, a random string of domain pieces (slot words, digits, characters)
    written twice: repeated text teaches copying from context (induction), as in real corpora.
    `skill_docs` adds generic in-frame skills on the contents (answer = the question echoed, its
    numbers, its slot words): the base model learns to read the question, not the task.
    `para_docs` adds, per record, its content followed by the content of another record of the same step
    with the same slot values (meta.slots), when there is one: the same entity named twice.
    `round_docs` (a share of the records, with skill_docs) adds reading skills chained in the multi-round frame.
    Dev text only feeds the tokenizer's alphabet."""
    from tasktune.tuning.data import format_prompt

    words = collect_slot_words(train + dev)
    rng = rng or random.Random(0)
    chars = sorted({ch for r in train for ch in r["content"] + r["summary"] if not ch.isspace()})
    pool = words + list("0123456789") + chars
    docs: list[tuple[str, bool]] = []  # (text, ends with eos)
    copies: list[tuple[str, bool]] = []
    skills: list[tuple[str, str]] = []  # (question, reading answer)
    for record in train:
        content, summary = record["content"], record["summary"]
        framed = format_prompt(None, content, template="chatglm")
        docs += [(content, True), (framed, False), (summary, True)]
        if copy_docs:
            pieces = copy_string(pool, rng)
            copies.append((f"{pieces}\n{pieces}", True))
        if skill_docs:
            readings = reading_answers(content, words)
            docs += [(framed + answer, True) for answer in readings]
            skills += [(content, answer) for answer in readings]
    if skill_docs and round_docs > 0:
        docs += multi_round_docs(skills, round(round_docs * len(train)), rng)
    if para_docs:
        docs += paraphrase_docs(train, rng)
    if answer_pairs:
        docs += answer_pair_docs(train, words, rng)
    seen: set = set()
    unique = [d for d in docs if not (d in seen or seen.add(d))]
    # the random copy strings stay out of the tokenizer's text: they would teach junk merges
    tok_text = [d for d, _ in unique] + [r[k] for r in dev for k in ("content", "summary")] + spec_text + [FRAME_TEXT]
    unique += copies
    return Corpus(unique, tok_text, words, copies)


def reading_answers(content: str, words: list[str]) -> list[str]:
    """What a reading skill answers to a question: the question echoed, its numbers, the slot words it names."""
    numbers = re.findall(r"\d+", content)
    found = [w for w in words if w in content]
    return [content] + ([" ".join(numbers)] if numbers else []) + ([", ".join(found)] if found else [])


def multi_round_docs(skills: list[tuple[str, str]], n: int, rng: random.Random) -> list[tuple[str, bool]]:
    """n dialogues of 2 or 3 rounds in the ChatGLM frame, each round a random (question, reading answer)."""
    from tasktune.tuning.data import format_prompt

    docs = []
    for _ in range(n if skills else 0):
        rounds = [rng.choice(skills) for _ in range(rng.randint(2, 3))]
        (query, answer), history = rounds[-1], rounds[:-1]
        docs.append((format_prompt(None, query, history, template="chatglm") + answer, True))
    return docs


def copy_string(pool: list[str], rng: random.Random) -> str:
    """4 to 12 random pieces of `pool` joined: what a copy document writes twice."""
    return "".join(rng.choice(pool) for _ in range(rng.randint(4, 12)))


def paraphrase_docs(records: list[dict], rng: random.Random) -> list[tuple[str, bool]]:
    """Per record: its content, a newline, and the content of another record of the same step whose slot
    values are all equal (datagen's meta.step / meta.slots); records without a twin add nothing."""
    groups: dict[str, list[str]] = {}
    for record in records:
        meta = record.get("meta") or {}
        if meta.get("slots"):
            key = json.dumps([meta.get("step"), meta["slots"]], sort_keys=True, ensure_ascii=False)
            groups.setdefault(key, []).append(record["content"])
    docs = []
    for key in sorted(groups):
        contents = groups[key]
        for content in contents:
            others = [c for c in contents if c != content]
            if others:
                docs.append((f"{content}\n{rng.choice(others)}", True))
    return docs


def answer_pair_docs(records: list[dict], words: list[str], rng: random.Random) -> list[tuple[str, bool]]:
    """Per record: its answer, a newline, and a different answer of the same step that names one of the same
    slot words (the rarest one it names: a place before a check type) and the same numbers, if any (answers
    whose numbers differ would teach that a number is not repeated: measured, the P-tuned summaries then miscopy
    their numbers); records without such a twin add nothing."""
    words = set(words)
    groups: dict[tuple, set[str]] = {}
    keys_of: list[list[tuple]] = []
    for record in records:
        meta = record.get("meta") or {}
        summary = record["summary"]
        numbers = tuple(re.findall(r"\d+", summary))  # a pair never contradicts a number: same numbers or none
        keys = [(meta.get("step"), numbers, v) for v in (meta.get("slots") or {}).values()
                if isinstance(v, str) and v in words and v in summary]
        for key in keys:
            groups.setdefault(key, set()).add(summary)
        keys_of.append(keys)
    docs = []
    for record, keys in zip(records, keys_of):
        # the rarest shared word (a place rather than a check type): the pair then repeats a specific entity
        for key in sorted(keys, key=lambda k: (len(groups[k]), k[2])):
            options = sorted(groups[key] - {record["summary"]})
            if options:
                docs.append((f"{record['summary']}\n{rng.choice(options)}", True))
                break
    return docs


def collect_slot_words(records: list[dict]) -> list[str]:
    """String slot values (datagen's meta.slots) of two or more characters that occur in the records' text."""
    text = "\n".join(r.get("content", "") + "\n" + r.get("summary", "") for r in records)
    words = {
        value
        for record in records
        for value in ((record.get("meta") or {}).get("slots") or {}).values()
        if isinstance(value, str) and len(value) >= 2 and not value.isdigit()
    }
    words = {w for w in words if w in text}
    return sorted(words)


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int, max_token_chars: int = 4, words: list[str] = (),
                    number_chunks: bool = False):
    """A char-level-ish BPE (digits and punctuation split off, byte fallback for unseen chars),
    wrapped as a PreTrainedTokenizerFast with no chat template (so the ChatGLM Jinja frame is used).
    `number_chunks`: numbers split into chunks of up to 3 digits that BPE may merge (as Llama 3's tokenizer),
    instead of one token per digit."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated") if number_chunks
            else pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    alphabet = sorted(set("".join(texts)))
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, len(alphabet) + len(SPECIAL_TOKENS)),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        max_token_length=max_token_chars,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # Byte fallback (as Llama's tokenizer): a char never seen in training becomes <0xNN> bytes, not <unk>.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    if words:  # matched before BPE, anywhere in the text
        tok.add_tokens([AddedToken(w, normalized=False) for w in words])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        mask_token=MASK,
        additional_special_tokens=[GMASK],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------- model


def make_model(cfg: TinyConfig, tokenizer):
    """A randomly initialised GlmForCausalLM of `cfg`'s size (seeded by cfg.seed)."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(cfg.seed)
    config = GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
        **cfg.extra,
    )
    model = GlmForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def make_rows(docs: list[tuple[str, bool]], tokenizer, cfg: TinyConfig, rng: random.Random) -> list[list[int]]:
    """One shuffled pass over the documents as token rows: one document per row (cut at block_size),
    or with cfg.pack, all joined by eos and cut into rows of block_size."""
    order = list(docs)
    rng.shuffle(order)
    ids = tokenizer([text for text, _ in order], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    rows = [doc + [eos] if closed else doc for doc, (_, closed) in zip(ids, order)]
    if not cfg.pack:
        rows = [row[: cfg.block_size] for row in rows if len(row) > 1]
        return length_batches(rows, cfg.batch_size, rng)
    stream = [t for row in rows for t in row]
    stream = stream * math.ceil(cfg.block_size / max(len(stream), 1)) if len(stream) < cfg.block_size else stream
    return [stream[i : i + cfg.block_size] for i in range(0, len(stream) - cfg.block_size + 1, cfg.block_size)]


def length_batches(rows: list[list[int]], batch_size: int, rng: random.Random, window: int = 16) -> list[list[int]]:
    """The rows reordered so that each run of batch_size rows (counted from the end: `pretrain` pops rows off
    the end) holds rows of similar length, the batches shuffled: this saves most of the padding (multi-round
    documents are long)."""
    from tasktune.tuning.data import group_by_length

    batches = group_by_length(rows, len, batch_size, window)
    rng.shuffle(batches)
    batches.sort(key=lambda b: len(b) == batch_size)  # a short batch goes first, so the end stays aligned
    return [row for batch in batches for row in batch]


def pretrain(model, tokenizer, docs: list[tuple[str, bool]], cfg: TinyConfig, progress: bool = True,
             desc: str = "pre-training tiny LM") -> float:
    """Plain next-token LM training on the documents; returns the mean loss of the last 20 steps."""
    import torch

    from tasktune.tuning.progress import progress_bar

    if cfg.pretrain_steps == 0 or not docs:
        return float("nan")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warmup, then cosine down to 10%
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.pretrain_steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    model.train()
    rows: list[list[int]] = []
    recent: list[float] = []
    bar = progress_bar(cfg.pretrain_steps, desc, unit="step", disable=not progress)
    for step in range(cfg.pretrain_steps):
        while len(rows) < cfg.batch_size:  # a fresh shuffle of the documents each pass
            fresh = make_rows(docs, tokenizer, cfg, rng)
            if not fresh:
                raise ConfigError("tiny model: no pre-training document is longer than one token")
            rows += fresh
        picked = [rows.pop() for _ in range(cfg.batch_size)]
        width = max(map(len, picked))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in picked], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in picked], device=device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-20:]
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.update(1)
    bar.close()
    model.eval()
    return sum(recent) / len(recent)


# ---------------------------------------------------------------- build + save


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished tmp folder to out; an existing out is replaced only if it is a tiny model."""
    if out.exists():
        if not (out / RECORD_FILE).is_file() and any(out.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"{out}: exists and is not a tiny model folder; not overwriting it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _save_quietly(model, folder: Path) -> None:
    """save_pretrained without transformers' "Writing model shards" bar (one shard: a bar says nothing)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"tiny model: --device {device}, but torch sees no CUDA device here; use --device cpu")


def build_tiny_model(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 42,
    pretrain_steps: int | None = None,
    config: TinyConfig | None = None,
    records: tuple[list[dict], list[dict]] | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Build tokenizer + tiny GLM for `spec_path`, pre-train it on unpaired text, save it to `out_dir`.

    `records` = (train, dev) record lists skips the data generator (tests). `device`: where to pre-train
    ("cpu" is bit-reproducible for a seed; "cuda" is faster but not bit-identical). Writes atomically:
    a failure leaves no half-built folder. Returns the output folder.
    """
    from tasktune.datagen.spec import resolve_spec

    spec_path, out = resolve_spec(spec_path), Path(out_dir)
    if not spec_path.is_file():
        raise SpecError(f"{spec_path}: no such spec file")
    _check_device(device)
    cfg = config or TinyConfig()
    cfg.seed = seed
    if pretrain_steps is not None:
        cfg.pretrain_steps = pretrain_steps
    data_seed = seed if cfg.data_seed is None else cfg.data_seed
    train, dev = records if records is not None else generate_records(spec_path, data_seed, cfg.n_records)
    if not train:
        raise SpecError(f"{spec_path}: the data generator produced no training records")
    corpus = build_corpus(
        train, dev, read_spec_text(spec_path), cfg.copy_docs, cfg.skill_docs, random.Random(seed), cfg.para_docs,
        cfg.round_docs, cfg.answer_pairs,
    )
    started = time.perf_counter()
    tokenizer = train_tokenizer(corpus.tokenizer_text, cfg.vocab_size, cfg.max_token_chars, corpus.words,
                                cfg.number_chunks)
    model = make_model(cfg, tokenizer).to(device)
    copy_loss = float("nan")
    copy_steps = cfg.copy_warmup_steps if corpus.copies else 0
    if copy_steps:  # phase 1: learn to copy from the context
        warm = replace(cfg, pretrain_steps=copy_steps, batch_size=cfg.copy_batch_size,
                       warmup_steps=min(cfg.warmup_steps, max(1, copy_steps // 10)))
        copy_loss = pretrain(model, tokenizer, corpus.copies, warm, progress, desc="copy warm-up")
    loss = pretrain(model, tokenizer, corpus.documents, cfg, progress)  # phase 2: the domain text
    seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
          f"{copy_steps} copy + {cfg.pretrain_steps} LM steps in "
          f"{seconds:.0f}s, final LM loss {loss:.3f}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save_quietly(model.to("cpu"), tmp)
        tokenizer.save_pretrained(tmp)
        record = {
            "spec": str(spec_path),
            "spec_sha256": hashlib.sha256(spec_path.read_bytes()).hexdigest(),
            "seed": seed,
            "data_seed": None if records is not None else data_seed,  # None: records were passed in
            "pretrain_steps": cfg.pretrain_steps,
            "final_loss": None if math.isnan(loss) else round(loss, 4),
            "copy_warmup_loss": None if math.isnan(copy_loss) else round(copy_loss, 4),
            "parameters": n_params,
            "vocab_size": len(tokenizer),
            "documents": len(corpus.documents),
            "seconds": round(seconds, 1),
            "device": device,
            "config": asdict(cfg),
        }
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        atomic.settle(tmp)  # fsync'ed, and the umask's modes (safetensors writes the weights 0600)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------- CLI (wired by tuning/cli.py)


def add_arguments(parser) -> None:
    """The `tasktune tiny-model` options."""
    import argparse

    from tasktune.flags import BATCH, COUNT, LEARNING_RATE, PROBABILITY, SEED, SIZE, STEPS0, TOKENS, Range

    d = TinyConfig()
    parser.add_argument("--spec", default="grid",
                        help="task spec whose text the model learns: a YAML path or a built-in name (default: grid)")
    parser.add_argument("--out", default=Path("models/tiny-glm"), type=Path, help="output model folder")
    parser.add_argument("--seed", type=SEED, default=42, help="seed for data, init and training order")
    parser.add_argument("--steps", type=COUNT, default=d.pretrain_steps, help="LM pre-training steps on the domain text")
    parser.add_argument("--copy-warmup-steps", type=STEPS0, default=d.copy_warmup_steps,
                        help="steps on the copy strings alone before the domain text (0: none)")
    parser.add_argument("--layers", type=Range(int, 1, 256), default=d.num_layers, help="transformer layers")
    parser.add_argument("--hidden", type=SIZE, default=d.hidden_size, help="hidden size")
    parser.add_argument("--heads", type=Range(int, 1, 1024), default=d.num_heads, help="attention heads")
    parser.add_argument("--kv-heads", type=Range(int, 1, 1024), default=d.num_kv_heads, help="key/value heads (GQA)")
    parser.add_argument("--ffn", type=SIZE, default=d.intermediate_size, help="MLP intermediate size")
    parser.add_argument("--vocab-size", type=Range(int, 64, 1 << 20), default=d.vocab_size, help="BPE vocabulary bound")
    parser.add_argument("--lr", type=LEARNING_RATE, default=d.lr, help="peak learning rate")
    parser.add_argument("--batch-size", type=BATCH, default=d.batch_size, help="rows per step")
    parser.add_argument("--block-size", type=TOKENS, default=d.block_size, help="tokens per row")
    parser.add_argument("--n", type=COUNT, default=None, help="records to generate (default: the generator's)")
    parser.add_argument("--pack", action="store_true", help="pack documents into full rows (faster)")
    flag = argparse.BooleanOptionalAction
    parser.add_argument("--copy-docs", action=flag, default=d.copy_docs,
                        help="add repeated random strings (copying signal)")
    parser.add_argument("--para-docs", action=flag, default=d.para_docs,
                        help="add two requests naming the same slot values, one after the other")
    parser.add_argument("--skill-docs", action=flag, default=d.skill_docs,
                        help="add reading documents in the chat frame: a question answered by itself, "
                             "its numbers or its slot words (never its task answer)")
    parser.add_argument("--answer-pairs", action=flag, default=d.answer_pairs,
                        help="add two answers naming the same slot value (and the same numbers), one after the other")
    parser.add_argument("--data-seed", type=SEED, default=None,
                        help="seed of the data generator run the documents come from: the seed (and --n) `tasktune "
                             "data` ran with (default: --seed; set it when --seed differs, so no dev text becomes a "
                             "document)")
    parser.add_argument("--round-docs", type=PROBABILITY, default=d.round_docs,
                        help="share of records that add a multi-round reading document (0: none)")
    parser.add_argument("--device", default="cpu", type=_device,
                        help="where to pre-train: cpu (bit-reproducible for a seed) or cuda (faster, not bit-identical)")
    parser.add_argument("--number-chunks", action=flag, default=d.number_chunks,
                        help="numbers as tokens of up to 3 digits (as Llama 3) instead of one token per digit")
    parser.add_argument("--tie-embeddings", action=flag, default=d.tie_embeddings,
                        help="share the input embedding and the output head")


def _device(text: str) -> str:
    """argparse `type=` for --device: cpu, cuda or cuda:N (refused with the flag named, not a torch traceback)."""
    import argparse
    import re

    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", text.strip()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text.strip()


def run(args) -> int:
    """Handler for `tasktune tiny-model`."""
    from tasktune.flags import check_output_folder

    check_output_folder(args.out, "--out")
    cfg = TinyConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=args.ffn,
        vocab_size=args.vocab_size,
        pretrain_steps=args.steps,
        lr=args.lr,
        warmup_steps=min(TinyConfig.warmup_steps, max(1, args.steps // 10)),
        batch_size=args.batch_size,
        block_size=args.block_size,
        n_records=args.n,
        pack=args.pack,
        copy_docs=args.copy_docs,
        copy_warmup_steps=args.copy_warmup_steps,
        para_docs=args.para_docs,
        answer_pairs=args.answer_pairs,
        data_seed=args.data_seed,
        skill_docs=args.skill_docs,
        round_docs=args.round_docs,
        tie_embeddings=args.tie_embeddings,
        number_chunks=args.number_chunks,
    )
    out = build_tiny_model(args.spec, args.out, seed=args.seed, config=cfg, device=args.device)
    print(f"wrote {out}")
    return 0
