"""Helpers for task batches: a tensor, or a tuple/list/dict of tensors with the batch along dim 0."""

from __future__ import annotations

from typing import Any

import torch


def to_device(batch: Any, device: torch.device | str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else ()
    for v in items:
        n = batch_size_of(v)
        if n:
            return n
    return 0


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Split along dim 0 into ``parts`` chunks (sizes differ by at most one); non-tensors are repeated."""
    if isinstance(batch, torch.Tensor):
        return list(torch.tensor_split(batch, parts, dim=0)) if batch.dim() else [batch] * parts
    if isinstance(batch, dict):
        split = {k: split_batch(v, parts) for k, v in batch.items()}
        return [{k: split[k][i] for k in batch} for i in range(parts)]
    if isinstance(batch, list | tuple):
        cols = [split_batch(v, parts) for v in batch]
        return [type(batch)(c[i] for c in cols) for i in range(parts)]
    return [batch] * parts
