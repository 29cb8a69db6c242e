"""The tiny model's tokenizer: a char-level-ish BPE trained on the corpus text, slot words as whole tokens."""

from __future__ import annotations

import json

from tasktune.tuning.tiny.config import BOS, EOS, GMASK, MASK, PAD, SPECIAL_TOKENS, UNK


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
