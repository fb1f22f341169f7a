"""Structural overlap of N masks: counts per tensor and in total (DESIGN §3, docs/metrics.md).

:func:`count_files` streams the mask files tensor by tensor with :mod:`maskprobe.masks.counting`, so masks of
billion-parameter models compare in bounded memory; :func:`count_arrays` counts masks already in memory (the
ablation needs them there anyway). Totals are sums of counts over tensors, never means of per-tensor ratios.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MaskFileError
from ..masks.layout import Layout, names_layout
from ..masks.maskfile import MaskReader
from .analysis import excess, iomin, iou, nanmean, ratio


@dataclass
class Counts:
    """Counts for one tensor (or a sum of tensors) over N masks.

    ``expected`` is ``E|M_i ∩ M_j|`` for independent random masks with the same number of weights in each
    tensor: ``|M_i| |M_j| / n`` per tensor, summed over tensors for a total. Chance levels of IoU and IoMin
    follow from it (docs/metrics.md).
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    counts: list[int]  # |M_i|
    intersection: list[list[int]]  # |M_i ∩ M_j| (diagonal = |M_i|)
    in_others: list[int]  # |M_i ∩ union of the other masks|
    by_k: list[int] = field(default_factory=list)  # weights kept by exactly k masks, k = 0..N
    role: str = "hidden"  # input / hidden / output layer, or "total"
    expected: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.expected:
            n = len(self.counts)
            self.expected = [
                [self.counts[i] * self.counts[j] / self.numel if self.numel else 0.0 for j in range(n)] for i in range(n)
            ]

    @property
    def n(self) -> int:
        return len(self.counts)

    def density(self, i: int) -> float:
        return ratio(self.counts[i], self.numel)

    def iou(self, i: int, j: int) -> float:
        return iou(self.intersection[i][j], self.counts[i], self.counts[j])

    def iomin(self, i: int, j: int) -> float:
        return iomin(self.intersection[i][j], self.counts[i], self.counts[j])

    def chance_iou(self, i: int, j: int) -> float:
        """IoU of independent random masks with these per-tensor counts: pq/(p+q-pq) for one tensor."""
        e = self.expected[i][j]
        return ratio(e, self.counts[i] + self.counts[j] - e)

    def chance_iomin(self, i: int, j: int) -> float:
        """IoMin of independent random masks with these per-tensor counts: max(p, q) for one tensor."""
        return ratio(self.expected[i][j], min(self.counts[i], self.counts[j]))

    def excess_iou(self, i: int, j: int) -> float:
        return excess(self.iou(i, j), self.chance_iou(i, j))

    def excess_iomin(self, i: int, j: int) -> float:
        return excess(self.iomin(i, j), self.chance_iomin(i, j))

    def shared(self, i: int, j: int) -> float:
        """|M_i ∩ M_j| / |M_i|: the fraction of mask i that mask j also keeps (the paper's "total shared")."""
        return ratio(self.intersection[i][j], self.counts[i])

    def share_of_others(self, i: int) -> float:
        """|M_i ∩ union of the other masks| / |M_i|."""
        return ratio(self.in_others[i], self.counts[i])

    def matrix(self, fn: str) -> list[list[float]]:
        f = getattr(self, fn)
        return [[f(i, j) for j in range(self.n)] for i in range(self.n)]

    def empty(self, i: int, j: int) -> bool:
        return self.counts[i] == 0 or self.counts[j] == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "shape": list(self.shape),
            "numel": self.numel,
            "counts": self.counts,
            "density": [self.density(i) for i in range(self.n)],
            "intersection": self.intersection,
            "union": [[self.counts[i] + self.counts[j] - self.intersection[i][j] for j in range(self.n)] for i in range(self.n)],
            **{k: self.matrix(k) for k in ("iou", "iomin", "shared", "chance_iou", "chance_iomin", "excess_iou", "excess_iomin")},
            "share_of_others": [self.share_of_others(i) for i in range(self.n)],
            "by_k": self.by_k,
        }


def count_tensor(name: str, arrays: Sequence[np.ndarray], role: str = "hidden") -> Counts:
    """Counts for one tensor over N in-memory bool arrays of the same shape."""
    n = len(arrays)
    flat = [np.ascontiguousarray(a, dtype=bool).reshape(-1) for a in arrays]
    counts = [int(np.count_nonzero(a)) for a in flat]
    inter = [[int(np.count_nonzero(flat[i] & flat[j])) if i != j else counts[i] for j in range(n)] for i in range(n)]
    total = np.zeros(flat[0].shape, dtype=np.int64)
    for a in flat:
        total += a
    by_k = np.bincount(total, minlength=n + 1)[: n + 1].tolist()
    in_others = [int(np.count_nonzero(flat[i] & (total > 1))) for i in range(n)]
    return Counts(name, tuple(arrays[0].shape), int(flat[0].size), counts, inter, in_others, [int(x) for x in by_k], role)


def sum_counts(name: str, rows: Sequence[Counts], role: str = "total") -> Counts | None:
    """Sum of counts over tensors (None for no rows): totals are ratios of sums, never means of ratios."""
    if not rows:
        return None
    n = rows[0].n
    return Counts(
        name,
        (),
        sum(r.numel for r in rows),
        [sum(r.counts[i] for r in rows) for i in range(n)],
        [[sum(r.intersection[i][j] for r in rows) for j in range(n)] for i in range(n)],
        [sum(r.in_others[i] for r in rows) for i in range(n)],
        [sum(r.by_k[k] for r in rows) for k in range(n + 1)],
        role,
        [[sum(r.expected[i][j] for r in rows) for j in range(n)] for i in range(n)],
    )


@dataclass
class Overlap:
    """Structural comparison of N masks: per tensor (in model order), in total, and over the hidden layers alone."""

    layers: list[Counts]
    total: Counts
    hidden: Counts | None = None  # the layers that are neither input nor output (None when there is no I/O layer)

    def layer_mean(self, fn: str, i: int, j: int, role: str | None = None) -> float:
        """Unweighted mean over layers of a per-layer ratio (the paper's per-layer view; ``total`` pools)."""
        rows = [c for c in self.layers if (role is None or c.role == role) and not c.empty(i, j)]
        return nanmean([getattr(c, fn)(i, j) for c in rows])

    def summary(self) -> dict[str, Any]:
        """Pooled (sums over tensors) and per-layer-mean IoU/IoMin with chance, all and hidden-only."""
        out: dict[str, Any] = {}
        for label, c, role in (("all", self.total, None), ("hidden", self.hidden, "hidden")):
            if c is None:
                continue
            out[label] = {
                "pooled": {k: c.matrix(k) for k in ("iou", "iomin", "chance_iou", "chance_iomin", "excess_iou", "excess_iomin")},
                "layer_mean": {
                    k: [[self.layer_mean(k, i, j, role) for j in range(c.n)] for i in range(c.n)]
                    for k in ("iou", "iomin", "excess_iou", "excess_iomin")
                },
            }
        return out


def _assemble(layers: list[Counts], layout: Layout) -> Overlap:
    for c in layers:
        c.role = layout.roles[c.name]
    has_io = any(c.role != "hidden" for c in layers)
    hidden = sum_counts("hidden layers", [c for c in layers if c.role == "hidden"]) if has_io else None
    return Overlap(layers, sum_counts("total", layers), hidden)  # type: ignore[arg-type]


def count_arrays(masks: Mapping[str, Sequence[np.ndarray]], layout: Layout) -> Overlap:
    """Overlap of masks held in memory: ``masks[name]`` is one bool array per mask."""
    return _assemble([count_tensor(n, masks[n]) for n in layout.names], layout)


def count_files(readers: Sequence[MaskReader], layout: Layout, workers: int | None = None) -> Overlap:
    """Overlap streamed from open mask files, one fused pass per tensor (plain and packed files may be mixed)."""
    from ..masks.counting import count_files as count_raw
    from ..masks.counting import tensor_spans

    fds: list[int] = []
    try:
        spans = []
        raw = not any(r.foreign for r in readers)  # masks from other tools (uint8, .npz) are read tensor by tensor
        for r in readers if raw else ():
            fds.append(os.open(r.path, os.O_RDONLY))
            spans.append(tensor_spans(r.path))
        layers = []
        for name in layout.names:
            shape = readers[0].shape(name)
            numel = int(np.prod(shape, dtype=np.int64))
            packed = {r.packed for r in readers}
            if len(packed) > 1 or not raw:  # plain and packed files together: unpack this tensor in memory
                layers.append(count_tensor(name, [r.get(name) for r in readers]))
                continue
            here = [s[name] for s in spans]
            for r, span in zip(readers, here, strict=True):
                want, dtype = ((numel + 7) // 8, "U8") if r.packed else (numel, "BOOL")
                if span.nbytes != want or span.dtype != dtype:
                    raise MaskFileError(f"{r.path}: tensor {name!r} is not stored as {want} bytes of {dtype}")
            c = count_raw(fds, here, numel, packed=packed.pop(), label=f"{readers[0].path.name}/{name}", workers=workers)
            layers.append(Counts(name, shape, numel, c.counts, c.intersection, c.in_others, c.by_k))
    finally:
        for fd in fds:
            os.close(fd)
    return _assemble(layers, layout)


def overlap(
    paths: Sequence[str | os.PathLike[str]],
    *,
    allow_mismatch: bool = False,
    order: Sequence[str] | None = None,
    io: Sequence[str] = (),
    workers: int | None = None,
) -> Overlap:
    """Structural overlap of mask files, streamed (the library form of ``maskprobe compare`` without a checkpoint).

    Args:
        paths: two or more mask files over the same parameters (plain or packed bits).
        order: parameter names in model order (default: the order the files recorded, else natural order).
        io: globs naming the input/output tensors, or ``["none"]`` (default: the recorded roles, see
            :mod:`maskprobe.masks.layout`).
        workers: counting threads (default: one per core).

    Raises:
        MaskFileError: unreadable, damaged or mutually incompatible files.
    """
    from ..masks.masksets import check_compatible, mask_layout, open_all

    readers = open_all(paths)  # the same file twice is refused; a failure closes what was opened
    try:
        names = check_compatible(readers, allow_mismatch)
        layout = mask_layout(readers, names, order=order, io=io)
        return count_files(readers, layout, workers)
    finally:
        for r in readers:
            r.close()


__all__ = ["Counts", "Overlap", "count_arrays", "count_files", "count_tensor", "names_layout", "overlap", "sum_counts"]
