"""Tiny Hugging Face models and tokenizers made on the fly for the built-in tasks' tests (nothing downloaded).

A word-level tokenizer (``tokenizers`` WordLevel, wrapped as ``PreTrainedTokenizerFast``) is built from the
words of two small deterministic domains (animal sentences, number sentences) and saved with
``save_pretrained`` beside each model: GPT-2 (``GPT2LMHeadModel``), BERT (``BertForMaskedLM``,
``BertForSequenceClassification``, ``BertModel``) and a plain LSTM language model (:func:`tiny_lstm`, a
weights-only ``torch.save`` file whose architecture comes from ``--model``).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "mouse"]
VERBS = ["runs", "sleeps", "eats", "jumps", "sits", "swims"]
PLACES = ["home", "outside", "fast", "slowly", "today", "again"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
COLORS = ["red", "green", "blue", "yellow", "black", "white"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<eos>"]
WORDS = sorted({*ANIMALS, *VERBS, *PLACES, *NUMBERS, *COLORS, "the", "a", "plus", "is", "and", "sky", "looks", "paint"})


def animal_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"the {rng.choice(ANIMALS)} {rng.choice(VERBS)} {rng.choice(PLACES)}" for _ in range(n)]


def number_lines(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(NUMBERS)} plus {rng.choice(NUMBERS)} is {rng.choice(NUMBERS)}" for _ in range(n)]


def color_lines(n: int, seed: int = 2) -> list[str]:
    rng = random.Random(seed)
    return [f"the sky looks {rng.choice(COLORS)} and {rng.choice(COLORS)}" for _ in range(n)]


def tokenizer(bert: bool):
    """A WordLevel tokenizer over :data:`WORDS`; ``bert``: ``[CLS] ... [SEP]`` around each text and a mask token."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    raw = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = Whitespace()
    if bert:
        raw.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", eos_token="<eos>", pad_token="[PAD]")


VOCAB = len(SPECIALS) + len(WORDS)
LABELS = ["animal", "number", "color"]


def bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=32, pad_token_id=0, **extra)  # fmt: skip


def make_model(kind: str, folder: Path, seed: int = 0) -> Path:
    """Save a tiny ``kind`` (gpt2, bert-mlm, bert-cls, bert) model and its tokenizer into ``folder``."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "gpt2":
        config = tf.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=5,
                               eos_token_id=5)  # fmt: skip
        model = tf.GPT2LMHeadModel(config)
    elif kind == "bert-mlm":
        model = tf.BertForMaskedLM(bert_config())
    elif kind == "bert-cls":
        model = tf.BertForSequenceClassification(
            bert_config(num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
        )
    elif kind == "bert":
        model = tf.BertModel(bert_config())
    else:
        raise ValueError(kind)
    model.eval().save_pretrained(folder)
    tokenizer(bert=kind != "gpt2").save_pretrained(folder)
    return folder


def labelled_rows(per_class: int = 30, seed: int = 0) -> list[dict[str, str]]:
    """``{"text", "label"}`` rows of the three domains (:data:`LABELS`), interleaved so every split holds each class."""
    lines = {"animal": animal_lines(per_class, seed), "number": number_lines(per_class, seed + 1),
             "color": color_lines(per_class, seed + 2)}  # fmt: skip
    return [{"text": lines[label][i], "label": label} for i in range(per_class) for label in LABELS]


class TinyLSTM(nn.Module):
    """Embedding -> 1-layer LSTM -> linear head: next-token logits (batch, time, vocab); called as ``model(ids)``."""

    def __init__(self, vocab: int = VOCAB, size: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, size)
        self.lstm = nn.LSTM(size, size, batch_first=True)
        self.head = nn.Linear(size, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(ids))[0])


def tiny_lstm(vocab: str = str(VOCAB)) -> nn.Module:
    """The ``--model`` factory of :class:`TinyLSTM` (``--model-arg`` values arrive as strings)."""
    return TinyLSTM(int(vocab))


def make_lstm(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """``(checkpoint, tokenizer folder)``: a TinyLSTM state dict and the plain word tokenizer beside it."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "lstm.pt"
    torch.save(TinyLSTM().state_dict(), ckpt)
    tok = folder / "tokenizer"
    tokenizer(bert=False).save_pretrained(tok)
    return ckpt, tok


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


LSTM_MODEL = f"{Path(__file__).resolve().parent / 'builtin_helpers.py'}:tiny_lstm"
FAST = ["--steps", "3", "--batch-size", "8", "--lr", "0.1", "-q"]
