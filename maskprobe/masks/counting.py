"""The fused counting pass behind ``compare``: every count of N masks over one tensor, read once.

Structural overlap needs, per tensor, ``|M_i|``, ``|M_i ∩ M_j|``, each mask's overlap with the union of the
others, and how many weights exactly k masks keep. This module computes all of them in one pass over the
raw bytes of the mask files, without materialising a tensor:

* the files are read with ``os.preadv`` in chunks of :data:`CHUNK` bytes into buffers that are reused, so the
  working set stays in the CPU cache and a 1e9-parameter mask costs no more memory than a small one;
* chunks are spread over threads (numpy releases the GIL in its kernels), by default one per core;
* plain files hold one byte per weight (0 or 1); packed-bit files 8 weights per byte (docs/mask-format.md).
  Both are counted without unpacking when there are two masks; with three or more, packed chunks are unpacked
  chunk by chunk.

The byte layout comes from the safetensors header (an 8-byte length, then JSON with each tensor's dtype, shape
and data offsets); :class:`maskprobe.masks.maskfile.MaskReader` has already validated the file with ``safe_open``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MaskFileError

CHUNK = 1 << 18  # bytes per read and mask: 3 buffers stay in a 1 MiB L2, and 256 KiB amortises the calls


@dataclass(frozen=True)
class Span:
    """Where one tensor's bytes lie in a safetensors file."""

    offset: int
    nbytes: int
    dtype: str


def tensor_spans(path: str | os.PathLike[str]) -> dict[str, Span]:
    """Byte offsets of every tensor in a safetensors file (from its header).

    Raises:
        MaskFileError: the header cannot be read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as exc:
        raise MaskFileError(f"{path}: cannot read the safetensors header ({type(exc).__name__}: {exc})") from None
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = Span(base + int(begin), int(end) - int(begin), str(info["dtype"]))
    return out


@dataclass
class TensorCounts:
    """Raw counts of N masks over one tensor (see :class:`maskprobe.measure.analysis.Counts`)."""

    counts: list[int]
    intersection: list[list[int]]
    in_others: list[int]
    by_k: list[int]


def count_files(
    fds: Sequence[int],
    spans: Sequence[Span],
    numel: int,
    *,
    packed: bool,
    label: str = "",
    workers: int | None = None,
) -> TensorCounts:
    """Count N masks of one tensor straight from open file descriptors.

    Args:
        fds: one open file descriptor per mask file.
        spans: where this tensor's bytes lie in each file.
        numel: weights in the tensor.
        packed: the files hold packed bits (little bit order) instead of one byte per weight.
        label: names the tensor in errors.
        workers: threads (default: one per core, at most 8).

    Raises:
        MaskFileError: a byte other than 0/1 in a plain file, set padding bits, or a short read.
    """
    n = len(fds)
    nbytes = spans[0].nbytes
    if any(s.nbytes != nbytes for s in spans):
        raise MaskFileError(f"{label}: the mask files store this tensor in different sizes")
    starts = list(range(0, nbytes, CHUNK))
    workers = max(1, min(workers or min(8, os.cpu_count() or 1), len(starts)))

    def work(part: int) -> np.ndarray:
        # acc: [counts (n), intersections (n*n), in_others (n), by_k (n+1), bad (1)]
        acc = np.zeros(n + n * n + n + n + 2, dtype=np.int64)
        bufs = [np.empty(CHUNK, dtype=np.uint8) for _ in range(n)]
        tmp = np.empty(CHUNK, dtype=np.uint8)
        for start in starts[part::workers]:
            size = min(CHUNK, nbytes - start)
            views = [b[:size] for b in bufs]
            for fd, span, v in zip(fds, spans, views, strict=True):
                if os.preadv(fd, [v], span.offset + start) != v.nbytes:
                    raise MaskFileError(f"short read at byte {span.offset + start}: the file is truncated")
            if packed:
                _packed_chunk(views, tmp[:size], acc, n, numel - 8 * start)
            else:
                _bool_chunk(views, tmp[:size], acc, n)
        return acc

    if workers == 1:
        total = work(0)
    else:
        with ThreadPoolExecutor(workers) as pool:
            total = sum(pool.map(work, range(workers)))  # type: ignore[assignment]
    if total[-1]:
        what = "has padding bits set" if packed else "holds bytes that are not 0 or 1"
        raise MaskFileError(f"{label}: a mask {what}; the file is damaged")
    counts = [int(x) for x in total[:n]]
    inter = total[n : n + n * n].reshape(n, n)
    inter = [[counts[i] if i == j else int(inter[min(i, j), max(i, j)]) for j in range(n)] for i in range(n)]
    if n == 1:
        in_others, by_k = [0], [numel - counts[0], counts[0]]
    elif n == 2:
        both = inter[0][1]
        in_others, by_k = [both, both], [numel - counts[0] - counts[1] + both, counts[0] + counts[1] - 2 * both, both]
    else:
        in_others = [int(x) for x in total[n + n * n : 2 * n + n * n]]
        by_k = [int(x) for x in total[2 * n + n * n : 3 * n + n * n + 1]]
    return TensorCounts(counts, inter, in_others, by_k)


def _bool_chunk(views: list[np.ndarray], tmp: np.ndarray, acc: np.ndarray, n: int) -> None:
    """One byte per weight. Two masks: counts and the intersection only (by_k follows from them)."""
    bools = [v.view(bool) for v in views]
    # validity first: count_nonzero on bool sums the bytes, so a forged 2 must never reach it
    np.bitwise_or(views[0], views[1] if n > 1 else views[0], out=tmp)
    for v in views[2:]:
        np.bitwise_or(tmp, v, out=tmp)
    if tmp.max(initial=0) > 1:
        acc[-1] += 1
        return
    for i in range(n):
        acc[i] += np.count_nonzero(bools[i])
        for j in range(i + 1, n):
            np.bitwise_and(views[i], views[j], out=tmp)
            acc[n + i * n + j] += np.count_nonzero(tmp.view(bool))
    if n > 2:
        _multi(bools, tmp, acc, n)


def _packed_chunk(views: list[np.ndarray], tmp: np.ndarray, acc: np.ndarray, n: int, valid_bits: int) -> None:
    """8 weights per byte; ``valid_bits`` = weights from this chunk's start to the tensor's end."""
    size = views[0].size
    if valid_bits < 8 * size:  # the tensor's last byte: its padding bits must be 0
        rem = valid_bits % 8
        if rem and any(int(v[-1]) >> rem for v in views):
            acc[-1] += 1
            return
    if n > 2:  # unpacked to one byte per weight, then counted as plain bytes
        bits = [np.unpackbits(v, count=min(valid_bits, 8 * size), bitorder="little") for v in views]
        _bool_chunk(bits, np.empty(bits[0].size, dtype=np.uint8), acc, n)
        return
    for i in range(n):
        acc[i] += _popcount(views[i])
    if n == 2:
        np.bitwise_and(views[0], views[1], out=tmp)
        acc[n + 1] += _popcount(tmp)


def _popcount(v: np.ndarray) -> int:
    """Set bits in a uint8 array (8-byte words where the length allows: 8x fewer elements)."""
    w = v.view(np.uint64) if v.size % 8 == 0 else v
    return int(np.bitwise_count(w).sum(dtype=np.int64))


def _multi(bools: list[np.ndarray], tmp: np.ndarray, acc: np.ndarray, n: int) -> None:
    """Three or more masks: how many masks keep each weight, then by_k and each mask's share of the others."""
    total = tmp
    total[...] = 0
    for b in bools:
        np.add(total, b, out=total, casting="unsafe")
    base = n + n * n
    shared = total > 1
    for i, b in enumerate(bools):
        acc[base + i] += np.count_nonzero(b & shared)
    acc[2 * n + n * n : 3 * n + n * n + 1] += np.bincount(total, minlength=n + 1)[: n + 1]
