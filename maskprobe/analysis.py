"""Pure functions for comparing masks (DESIGN §3, docs/metrics.md). No model, no printing.

Structural overlap streams the mask files tensor by tensor (:func:`overlap`), so masks of
billion-parameter models compare in bounded memory. Totals are sums of counts over tensors, never means
of per-tensor ratios. 0/0 is defined as 0 (the renderer says "empty").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MaskFileError
from .maskfile import MaskReader, open_masks


def ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def iou(inter: int, a: int, b: int) -> float:
    """|A∩B| / |A∪B|."""
    return ratio(inter, a + b - inter)


def iomin(inter: int, a: int, b: int) -> float:
    """|A∩B| / min(|A|, |B|)."""
    return ratio(inter, min(a, b))


def chance_iou(p: float, q: float) -> float:
    """Expected IoU of independent random masks of densities p and q: pq / (p + q - pq)."""
    return ratio(p * q, p + q - p * q)


def chance_iomin(p: float, q: float) -> float:
    """Expected IoMin of independent random masks of densities p and q: pq / min(p, q) = max(p, q)."""
    return max(p, q) if min(p, q) > 0 else 0.0


@dataclass
class Counts:
    """Counts for one tensor (or the total) over N masks."""

    name: str
    shape: tuple[int, ...]
    numel: int
    counts: list[int]  # |M_i|
    intersection: list[list[int]]  # |M_i ∩ M_j| (diagonal = |M_i|)
    in_others: list[int]  # |M_i ∩ union of the other masks|
    by_k: list[int] = field(default_factory=list)  # weights kept by exactly k masks, k = 0..N

    @property
    def n(self) -> int:
        return len(self.counts)

    def density(self, i: int) -> float:
        return ratio(self.counts[i], self.numel)

    def iou(self, i: int, j: int) -> float:
        return iou(self.intersection[i][j], self.counts[i], self.counts[j])

    def iomin(self, i: int, j: int) -> float:
        return iomin(self.intersection[i][j], self.counts[i], self.counts[j])

    def shared(self, i: int, j: int) -> float:
        """|M_i ∩ M_j| / |M_i|: the fraction of mask i that mask j also keeps."""
        return ratio(self.intersection[i][j], self.counts[i])

    def share_of_others(self, i: int) -> float:
        return ratio(self.in_others[i], self.counts[i])

    def matrix(self, fn: str) -> list[list[float]]:
        f = getattr(self, fn)
        return [[f(i, j) for j in range(self.n)] for i in range(self.n)]

    def chance_matrix(self, fn: Any) -> list[list[float]]:
        return [[fn(self.density(i), self.density(j)) for j in range(self.n)] for i in range(self.n)]

    def empty(self, i: int, j: int) -> bool:
        return self.counts[i] == 0 or self.counts[j] == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "numel": self.numel,
            "counts": self.counts,
            "density": [self.density(i) for i in range(self.n)],
            "intersection": self.intersection,
            "iou": self.matrix("iou"),
            "iomin": self.matrix("iomin"),
            "shared": self.matrix("shared"),
            "chance_iou": self.chance_matrix(chance_iou),
            "chance_iomin": self.chance_matrix(chance_iomin),
            "share_of_others": [self.share_of_others(i) for i in range(self.n)],
            "by_k": self.by_k,
        }


def count_tensor(name: str, arrays: Sequence[np.ndarray]) -> Counts:
    """Counts for one tensor over N bool arrays of the same shape."""
    n = len(arrays)
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    counts = [int(np.count_nonzero(a)) for a in flat]
    inter = [[0] * n for _ in range(n)]
    for i in range(n):
        inter[i][i] = counts[i]
        for j in range(i + 1, n):
            inter[i][j] = inter[j][i] = int(np.count_nonzero(flat[i] & flat[j]))
    if n <= 2:
        in_others = [inter[0][1], inter[0][1]] if n == 2 else [0]
        both = inter[0][1] if n == 2 else 0
        by_k = (
            [flat[0].size - counts[0], counts[0]]
            if n == 1
            else [flat[0].size - counts[0] - counts[1] + both, counts[0] + counts[1] - 2 * both, both]
        )
    else:
        total = np.zeros(flat[0].shape, dtype=np.uint8)
        for a in flat:
            total += a
        by_k = np.bincount(total, minlength=n + 1).tolist()
        in_others = [int(np.count_nonzero(flat[i] & (total > 1))) for i in range(n)]
    shape = tuple(arrays[0].shape)
    return Counts(name, shape, int(flat[0].size), counts, inter, in_others, [int(x) for x in by_k])


def sum_counts(name: str, rows: Sequence[Counts]) -> Counts:
    n = rows[0].n
    return Counts(
        name,
        (),
        sum(r.numel for r in rows),
        [sum(r.counts[i] for r in rows) for i in range(n)],
        [[sum(r.intersection[i][j] for r in rows) for j in range(n)] for i in range(n)],
        [sum(r.in_others[i] for r in rows) for i in range(n)],
        [sum(r.by_k[k] for r in rows) for k in range(n + 1)],
    )


@dataclass
class Overlap:
    """Structural comparison of N masks: per tensor and in total."""

    paths: list[Path]
    tasks: list[str]
    metadata: list[dict[str, Any]]
    layers: list[Counts]
    total: Counts


def check_compatible(readers: Sequence[MaskReader], allow_mismatch: bool = False) -> list[str]:
    """The common tensor names, after checking every mask has the same names and shapes.

    Raises:
        MaskFileError: names or shapes differ, or the masks record different checkpoints.
    """
    first = readers[0]
    for r in readers[1:]:
        a, b = set(first.names), set(r.names)
        if a != b:
            only_a, only_b = sorted(a - b)[:4], sorted(b - a)[:4]
            raise MaskFileError(
                f"{first.path.name} and {r.path.name} mask different parameters "
                f"(only in the first: {only_a}; only in the second: {only_b})"
            )
        bad = [n for n in first.names if first.shape(n) != r.shape(n)]
        if bad:
            raise MaskFileError(
                f"{first.path.name} and {r.path.name} differ in shape at {bad[0]!r}: {first.shape(bad[0])} vs {r.shape(bad[0])}"
            )
        sha_a = (first.metadata.get("checkpoint") or {}).get("sha256")
        sha_b = (r.metadata.get("checkpoint") or {}).get("sha256")
        if sha_a and sha_b and sha_a != sha_b and not allow_mismatch:
            raise MaskFileError(
                f"{first.path.name} and {r.path.name} come from different checkpoints "
                f"(sha256 {sha_a[:12]} vs {sha_b[:12]}); pass --allow-mismatch to compare anyway"
            )
    return list(first.names)


def overlap(
    paths: Sequence[str | os.PathLike[str]], *, allow_mismatch: bool = False, order: Sequence[str] | None = None
) -> Overlap:
    """Stream the mask files tensor by tensor and count overlaps.

    Args:
        paths: two or more mask files over the same parameters.
        order: parameter names in model order (default: file order).
    """
    readers = [open_masks(p) for p in paths]
    try:
        names = check_compatible(readers, allow_mismatch)
        if order:
            rank = {n: i for i, n in enumerate(order)}
            names.sort(key=lambda n: rank.get(n, len(rank)))
        layers = [count_tensor(n, [r.get(n) for r in readers]) for n in names]
        return Overlap(
            [r.path for r in readers],
            [r.task_name for r in readers],
            [r.metadata for r in readers],
            layers,
            sum_counts("total", layers),
        )
    finally:
        for r in readers:
            r.close()


# ---- functional ablation scores ----------------------------------------------------------------------


def relative_drop(full: float, value: float, higher_is_better: bool = True) -> float:
    """``(full - value) / full`` clipped to [0, 1] (0 when full is 0 or either is NaN).

    For lower-is-better metrics: ``1 - full / value`` clipped to [0, 1].
    """
    if full != full or value != value:
        return float("nan")
    if higher_is_better:
        d = ratio(full - value, full)
    else:
        d = 1.0 - ratio(full, value) if value else 0.0
    return min(1.0, max(0.0, d))


def drop_matrix(
    full: Sequence[float], metrics: Sequence[Sequence[float]], higher_is_better: Sequence[bool] | None = None
) -> list[list[float]]:
    """``D[i][j]`` = relative drop of task j after removal i."""
    hib = higher_is_better or [True] * len(full)
    return [[relative_drop(full[j], row[j], hib[j]) for j in range(len(full))] for row in metrics]


def specialization(d_exclusive: Sequence[Sequence[float]]) -> list[float]:
    """``S_i = D[i][i] - max_{j != i} D[i][j]`` (in [-1, 1]); with one task, ``D[0][0]``."""
    out = []
    for i, row in enumerate(d_exclusive):
        others = [row[j] for j in range(len(row)) if j != i]
        if row[i] != row[i] or any(o != o for o in others):  # a NaN metric: unknown, reported, never averaged in
            out.append(float("nan"))
            continue
        out.append(row[i] - (max(others) if others else 0.0))
    return out


def reuse(d_inverted: Sequence[Sequence[float]], d_control: Sequence[Sequence[float]]) -> list[list[float]]:
    """``R[i][j] = max(0, Dinv[i][j] - Dctrl[i][j])`` for j != i; diagonal NaN (undefined)."""
    n = len(d_inverted)
    # max(0.0, nan) is 0.0 in Python: without the explicit NaN a failed metric would count as "no reuse"
    return [
        [float("nan") if i == j or (d := d_inverted[i][j] - d_control[i][j]) != d else max(0.0, d) for j in range(n)]
        for i in range(n)
    ]


def nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def p_specialize(d_exclusive: Sequence[Sequence[float]]) -> float:
    return nanmean(specialization(d_exclusive))


def p_reuse(d_inverted: Sequence[Sequence[float]], d_control: Sequence[Sequence[float]]) -> float:
    r = reuse(d_inverted, d_control)
    return nanmean([r[i][j] for i in range(len(r)) for j in range(len(r)) if i != j])
