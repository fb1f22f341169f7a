"""The two SCAN models of Csordás et al. (2021, §5): an LSTM encoder-decoder and a Transformer.

Both take ``src`` (B, S) int64 (words then ``<eos>``, padded with 0; :mod:`sample_tasks.scan_data`) and either

* ``tgt`` (B, T) int64 (actions then ``<eos>``, padded with -1): teacher forcing, returns logits (B, T, 7) where
  position ``t`` predicts ``tgt[:, t]`` from ``<sos> tgt[:, :t]``; or
* ``max_len=n`` (no ``tgt``): greedy decoding, returns the predicted tokens (B, n) (after a sequence's first
  ``<eos>`` the predictions are meaningless; the task reads up to it).

Every weight is a named parameter of a standard module (``nn.Embedding``, ``nn.LSTM``, ``nn.Linear``,
``nn.LayerNorm``), so that ``torch.func.functional_call`` (maskprobe's ``MaskedModel``) can replace any of
them; embeddings are named ``*embedding*`` and stay unmasked by maskprobe's default selection.

``LSTMSeq2Seq`` follows the paper's code (``models/encoder_decoder.py``): no attention; the encoder's final
(h, c) of every layer starts the decoder; input and output embeddings of size ``embedding``; dropout on the
embeddings and between layers. ``TransformerSeq2Seq`` follows ``models/transformer_enc_dec.py`` and
``layers/transformer``: post-norm layers (attention, add, LayerNorm; ReLU feed-forward, add, LayerNorm),
sinusoidal positions added to unscaled embeddings, bias-free attention projections, a linear output layer.
The attention is written out here (``ScanAttention``) rather than taken from ``nn.MultiheadAttention`` /
``nn.TransformerEncoderLayer``: it has separate query/key/value/output weights to mask and no fused
inference fast path that would run other code in evaluation than in training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sample_tasks.scan_data import IN_TOKENS, N_CLASSES, OUT_TOKENS, SRC_PAD, TGT_SOS

N_IN, N_OUT = len(IN_TOKENS), len(OUT_TOKENS)  # embedding rows: input words, output tokens incl. <sos>


def decoder_input(tgt: Tensor) -> Tensor:
    """``<sos> tgt[:, :-1]`` with padding replaced by ``<eos>`` (those positions are never scored)."""
    prev = tgt[:, :-1].clamp(min=0)
    return torch.cat([torch.full_like(tgt[:, :1], TGT_SOS), prev], dim=1)


class LSTMSeq2Seq(nn.Module):
    """LSTM encoder-decoder without attention (the paper: 2 layers x 200 units, embeddings of 16)."""

    def __init__(self, hidden: int = 200, layers: int = 2, embedding: int = 16, dropout: float = 0.5):
        super().__init__()
        self.in_embedding = nn.Embedding(N_IN, embedding)
        self.out_embedding = nn.Embedding(N_OUT, embedding)
        between = dropout if layers > 1 else 0.0
        self.encoder = nn.LSTM(embedding, hidden, layers, batch_first=True, dropout=between)
        self.decoder = nn.LSTM(embedding, hidden, layers, batch_first=True, dropout=between)
        self.output = nn.Linear(hidden, N_CLASSES)
        self.drop = nn.Dropout(dropout)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        lengths = (src != SRC_PAD).sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.in_embedding(src)), lengths, True, enforce_sorted=False)
        _, state = self.encoder(packed)
        return state

    def forward(self, src: Tensor, tgt: Tensor | None = None, max_len: int = 0) -> Tensor:
        state = self.encode(src)
        if tgt is not None:
            out, _ = self.decoder(self.drop(self.out_embedding(decoder_input(tgt))), state)
            return self.output(out)
        token = torch.full((src.shape[0], 1), TGT_SOS, dtype=torch.int64, device=src.device)
        preds = []
        for _ in range(max_len):
            out, state = self.decoder(self.drop(self.out_embedding(token)), state)
            token = self.output(out).argmax(-1)
            preds.append(token)
        return torch.cat(preds, 1) if preds else token[:, :0]


class ScanAttention(nn.Module):
    """Multi-head scaled dot-product attention with bias-free query, key, value and output projections."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values of ``memory`` (B, T, d), split into heads: two (B, heads, T, d / heads)."""
        return self._heads(self.key(memory)), self._heads(self.value(memory))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None) -> Tensor:
        """``x`` (B, T_x, d) attends over keys/values from :meth:`keys_values`; ``allowed`` (B or 1, T_x, T_mem)
        bool is True where a query may attend (None: everywhere)."""
        mask = None if allowed is None else allowed.unsqueeze(1)
        p = self.dropout if self.training else 0.0
        h = F.scaled_dot_product_attention(self._heads(self.query(x)), k, v, attn_mask=mask, dropout_p=p)
        return self.out(h.transpose(1, 2).reshape(x.shape))

    def forward(self, x: Tensor, memory: Tensor, allowed: Tensor | None) -> Tensor:
        return self.attend(x, *self.keys_values(memory), allowed)


class ScanLayer(nn.Module):
    """One post-norm Transformer layer: self-attention, optional cross-attention, ReLU feed-forward."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float, cross: bool):
        super().__init__()
        self.self_attn = ScanAttention(d_model, heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = ScanAttention(d_model, heads, dropout) if cross else None
        self.norm_cross = nn.LayerNorm(d_model) if cross else None
        self.linear1 = nn.Linear(d_model, ff)
        self.linear2 = nn.Linear(ff, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.linear1.weight, gain=nn.init.calculate_gain("relu"))
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, x: Tensor, allowed: Tensor, memory: Tensor | None = None, memory_allowed: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x, x, allowed)))
        if self.cross_attn is not None:
            x = self.norm_cross(x + self.drop(self.cross_attn(x, memory, memory_allowed)))
        return self._feed_forward(x)

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.norm2(x + self.drop(self.linear2(self.drop(F.relu(self.linear1(x))))))

    def step(self, x: Tensor, cache: list[Tensor], memory_kv: tuple[Tensor, Tensor], memory_allowed: Tensor) -> Tensor:
        """One new decoder position ``x`` (B, 1, d); ``cache`` holds this layer's self-attention keys and values
        of the earlier positions (extended in place). The same result as :meth:`forward` on the whole prefix."""
        k, v = self.self_attn.keys_values(x)
        if cache:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        cache[:] = [k, v]
        x = self.norm1(x + self.self_attn.attend(x, k, v, None))
        x = self.norm_cross(x + self.cross_attn.attend(x, *memory_kv, memory_allowed))
        return self._feed_forward(x)


def sinusoids(length: int, d_model: int) -> Tensor:
    """(length, d_model) sinusoidal position encoding (sin on even, cos on odd channels)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe


class TransformerSeq2Seq(nn.Module):
    """Transformer encoder-decoder (the paper: d_model 100, 3 + 3 layers, 4 heads, feed-forward 200)."""

    def __init__(
        self, d_model: int = 100, layers: int = 3, heads: int = 4, ff: int = 200, dropout: float = 0.1, max_len: int = 64
    ):
        super().__init__()
        self.in_embedding = nn.Embedding(N_IN, d_model)
        self.out_embedding = nn.Embedding(N_OUT, d_model)
        self.encoder = nn.ModuleList(ScanLayer(d_model, heads, ff, dropout, cross=False) for _ in range(layers))
        self.decoder = nn.ModuleList(ScanLayer(d_model, heads, ff, dropout, cross=True) for _ in range(layers))
        self.output = nn.Linear(d_model, N_CLASSES)
        nn.init.xavier_uniform_(self.output.weight)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("positions", sinusoids(max_len, d_model), persistent=False)

    def _embed(self, table: nn.Embedding, tokens: Tensor) -> Tensor:
        return self.drop(table(tokens) + self.positions[: tokens.shape[1]])

    def _decode(self, y: Tensor, memory: Tensor, memory_allowed: Tensor) -> Tensor:
        t = y.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=y.device).tril().unsqueeze(0)
        cross = memory_allowed.expand(-1, t, -1)
        for layer in self.decoder:
            y = layer(y, causal, memory, cross)
        return self.output(y)

    def forward(self, src: Tensor, tgt: Tensor | None = None, max_len: int = 0) -> Tensor:
        keys = (src != SRC_PAD).unsqueeze(1)  # (B, 1, S): which source positions may be attended
        memory = self._embed(self.in_embedding, src)
        for layer in self.encoder:
            memory = layer(memory, keys)
        if tgt is not None:
            return self._decode(self._embed(self.out_embedding, decoder_input(tgt)), memory, keys)
        # greedy: one position at a time, with each layer's self-attention keys/values cached
        memory_kv = [layer.cross_attn.keys_values(memory) for layer in self.decoder]
        caches: list[list[Tensor]] = [[] for _ in self.decoder]
        token = torch.full((src.shape[0], 1), TGT_SOS, dtype=torch.int64, device=src.device)
        preds = []
        for i in range(max_len):
            y = self.drop(self.out_embedding(token) + self.positions[i : i + 1])
            for layer, cache, kv in zip(self.decoder, caches, memory_kv, strict=True):
                y = layer.step(y, cache, kv, keys)
            token = self.output(y).argmax(-1)
            preds.append(token)
        return torch.cat(preds, 1) if preds else token[:, :0]


def build(model: str, hidden: int, layers: int, embedding: int, heads: int, ff: int, dropout: float) -> nn.Module:
    """``lstm`` -> :class:`LSTMSeq2Seq` (hidden, layers, embedding); ``transformer`` -> :class:`TransformerSeq2Seq`
    (hidden = d_model, layers per side, heads, ff)."""
    if model == "lstm":
        return LSTMSeq2Seq(hidden, layers, embedding, dropout)
    if model == "transformer":
        return TransformerSeq2Seq(hidden, layers, heads, ff, dropout)
    raise ValueError(f"unknown model {model!r} (lstm or transformer)")
