"""Helpers for task batches: a tensor, or a tuple/list/dict of tensors with the batch along dim 0."""

from __future__ import annotations

from typing import Any

import torch


def rebuild(batch: list[Any] | tuple[Any, ...], items: Any) -> Any:
    """A list/tuple of ``batch``'s type holding ``items`` (a NamedTuple takes its fields as arguments)."""
    return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)


def to_device(batch: Any, device: torch.device | str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return rebuild(batch, [to_device(v, device) for v in batch])
    return batch


def _size(batch: Any) -> tuple[int, bool]:
    """The batch size and whether a tensor's dim 0 gave it (a 0-d tensor counts as one example only when no
    tensor has a dim 0: split_batch repeats 0-d tensors, they are not examples)."""
    if isinstance(batch, torch.Tensor):
        return (int(batch.shape[0]), True) if batch.dim() else (1, False)
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else ()
    fallback = 0
    for v in items:
        n, along_dim0 = _size(v)
        if n and along_dim0:
            return n, True
        fallback = fallback or n
    return fallback, False


def batch_size_of(batch: Any) -> int:
    """Examples in ``batch``: dim 0 of its first tensor that has one and is not empty (1 for a lone 0-d tensor,
    0 when it holds no tensor)."""
    return _size(batch)[0]


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Split along dim 0 into ``parts`` chunks (sizes differ by at most one); non-tensors are repeated."""
    if isinstance(batch, torch.Tensor):
        return list(torch.tensor_split(batch, parts, dim=0)) if batch.dim() else [batch] * parts
    if isinstance(batch, dict):
        split = {k: split_batch(v, parts) for k, v in batch.items()}
        return [{k: split[k][i] for k in batch} for i in range(parts)]
    if isinstance(batch, list | tuple):
        cols = [split_batch(v, parts) for v in batch]
        return [rebuild(batch, [c[i] for c in cols]) for i in range(parts)]
    return [batch] * parts
