"""Tokens and batches for the built-in tasks, in one place: truncation, chunking, padding, the seeded streams, and
how a batch is fed to the model.

A batch is a dict of CPU tensors with the examples along dim 0: ``input_ids`` and ``attention_mask`` (long,
right-padded to the longest example of the batch), ``index`` (each example's position in the task's list) and
whatever the task adds (``labels``). The train stream is endless and seeded: it walks through a fresh
permutation of the examples per epoch, drawn from the engine's generator, and every batch holds exactly
``batch_size`` examples (an epoch's tail continues into the next permutation). The eval stream is finite and in
order: the same batches on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

Batch = dict[str, Tensor]


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens (BERT's ``[CLS] ... [SEP]``), cut at
    ``max_length``."""
    from ..loading.hf_folder import quiet_transformers

    if not texts:
        return []
    with quiet_transformers():
        out = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    return [list(ids) for ids in out["input_ids"]]


def chunks(tokenizer: Any, texts: Sequence[str], size: int) -> list[list[int]]:
    """Running text cut into examples of ``size`` tokens: each text's tokens (no special tokens), the texts joined
    by the end-of-text token where the tokenizer has one; a last piece shorter than 2 tokens is dropped."""
    from ..loading.hf_folder import quiet_transformers

    with quiet_transformers():
        pieces = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    sep = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for k, ids in enumerate(pieces):
        if k and sep is not None:
            stream.append(int(sep))
        stream.extend(int(i) for i in ids)
    out = [stream[i : i + size] for i in range(0, len(stream), size)]
    return [c for c in out if len(c) >= 2]


def pad_id(tokenizer: Any) -> int:
    """The id padding positions hold (GPT-2 has no pad token: its end-of-text id; padding is masked anyway)."""
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def collate(seqs: Sequence[Sequence[int]], pad: int) -> Batch:
    """``input_ids`` and ``attention_mask`` (long, right-padded to the longest sequence)."""
    width = max((len(s) for s in seqs), default=1)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[row, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def train_stream(n: int, batch_size: int, generator: torch.Generator, make: Callable[[list[int]], Batch]) -> Iterator[Batch]:
    """Endless batches of exactly ``batch_size`` examples: ``make(indices)`` over seeded permutations of ``n``."""
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        take, order = order[:batch_size], order[batch_size:]
        yield make(take)


def eval_stream(n: int, batch_size: int, make: Callable[[list[int]], Batch]) -> Iterator[Batch]:
    """The ``n`` examples in order, ``batch_size`` at a time (the last batch may be smaller)."""
    for start in range(0, n, max(1, batch_size)):
        yield make(list(range(start, min(n, start + batch_size))))


def position_limit(module: Any) -> int:
    """The longest input the model's position embeddings allow (``max_position_embeddings``, GPT-2's
    ``n_positions``), or 0 when its config says nothing (a plain module, rotary models without a limit)."""
    config = getattr(module, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def is_hf(module: Any) -> bool:
    """A Hugging Face model (called with keyword arguments, returns a ModelOutput)."""
    return hasattr(module, "config") and hasattr(module, "main_input_name")


def run(model: Any, batch: Batch, *, hidden_states: bool = False, unmasked: bool = False) -> Any:
    """Call ``model`` on a batch: a Hugging Face model as ``model(input_ids=..., attention_mask=...)`` (with
    ``output_hidden_states``), any other module as ``model(input_ids)``. ``unmasked``: the frozen network without
    the masks (``model.unmasked``), no gradient."""
    module = getattr(model, "module", model)
    # unmasked on a bare module: the module itself, without gradient
    call = (getattr(model, "unmasked", None) or torch.no_grad()(module)) if unmasked else model
    if is_hf(module):
        extra = {"output_hidden_states": True} if hidden_states else {}
        return call(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
    return call(batch["input_ids"])


def token_totals(scores: Iterable[tuple[Tensor, Tensor, Tensor]]) -> tuple[int, int, float]:
    """``(tokens, right, nll_sum)`` over batches of per-position ``(nll, keep, hit)``: the positions kept, how many
    of them the top prediction got right, and their summed negative log-likelihood (float64)."""
    total = right = 0
    nll_sum = 0.0
    for nll, keep, hit in scores:
        total += int(keep.sum())
        right += int((hit & keep).sum())
        nll_sum += float((nll * keep).sum(dtype=torch.float64))
    return total, right, nll_sum


def logits_of(out: Any) -> Tensor:
    """The logits of a model's output: a tensor itself, a ModelOutput's ``logits``, a tuple's first item."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"the model's output ({type(out).__name__}) has no logits")
