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


ROLES = ("input", "hidden", "output")


def excess(measured: float, chance: float) -> float:
    """Measured overlap minus its chance level (0 = what independent random masks give)."""
    return measured - chance


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
            "iou": self.matrix("iou"),
            "iomin": self.matrix("iomin"),
            "shared": self.matrix("shared"),
            "chance_iou": self.matrix("chance_iou"),
            "chance_iomin": self.matrix("chance_iomin"),
            "excess_iou": self.matrix("excess_iou"),
            "excess_iomin": self.matrix("excess_iomin"),
            "share_of_others": [self.share_of_others(i) for i in range(self.n)],
            "by_k": self.by_k,
        }


def count_tensor(name: str, arrays: Sequence[np.ndarray], role: str = "hidden") -> Counts:
    """Counts for one tensor over N in-memory bool arrays of the same shape (the reference implementation;
    :func:`overlap` counts straight from the files with :mod:`maskprobe.counting`)."""
    n = len(arrays)
    flat = [np.ascontiguousarray(a, dtype=bool).reshape(-1) for a in arrays]
    counts = [int(np.count_nonzero(a)) for a in flat]
    inter = [[int(np.count_nonzero(flat[i] & flat[j])) if i != j else counts[i] for j in range(n)] for i in range(n)]
    total = np.zeros(flat[0].shape, dtype=np.int64)
    for a in flat:
        total += a
    by_k = np.bincount(total, minlength=n + 1)[: n + 1].tolist()
    in_others = [int(np.count_nonzero(flat[i] & (total > 1))) for i in range(n)]
    shape = tuple(arrays[0].shape)
    return Counts(name, shape, int(flat[0].size), counts, inter, in_others, [int(x) for x in by_k], role)


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


def natural_order(names: Sequence[str]) -> list[str]:
    """Names sorted with their numbers compared as numbers (``layers.2`` before ``layers.10``): the model's
    order for the usual ``layers.N`` naming, when no checkpoint gives the real one."""
    import re

    return sorted(names, key=lambda s: [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t])


def layer_roles(names: Sequence[str], shapes: dict[str, tuple[int, ...]], io: Sequence[str] = ()) -> dict[str, str]:
    """``input`` / ``hidden`` / ``output`` for each tensor name (``names`` in model order).

    The input layer is the module of the first tensor with two or more dimensions, the output layer the module
    of the last one; every tensor of those modules (a masked bias too) shares the role. ``io`` (glob patterns)
    replaces the rule: matching tensors before the first non-matching one are input, the others output.
    """
    from fnmatch import fnmatchcase

    roles = dict.fromkeys(names, "hidden")
    if io:
        seen_hidden = False
        for n in names:
            if any(fnmatchcase(n, g) for g in io):
                roles[n] = "output" if seen_hidden else "input"
            else:
                seen_hidden = True
        return roles
    weights = [n for n in names if len(shapes.get(n, ())) >= 2]
    if len(weights) < 2:
        return roles
    module = lambda n: n.rsplit(".", 1)[0] if "." in n else n  # noqa: E731
    first, last = module(weights[0]), module(weights[-1])
    for n in names:
        if module(n) == first:
            roles[n] = "input"
        elif module(n) == last:
            roles[n] = "output"
    return roles


@dataclass
class Overlap:
    """Structural comparison of N masks: per tensor, in total, and over the hidden layers alone."""

    paths: list[Path]
    tasks: list[str]
    metadata: list[dict[str, Any]]
    layers: list[Counts]
    total: Counts
    hidden: Counts | None = None  # the layers that are neither input nor output

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


def _count_streamed(readers: Sequence[MaskReader], raw: Sequence[tuple[int, dict]], name: str, workers: int | None) -> Counts:
    """One tensor counted straight from the files (plain and packed may be mixed: then unpacked in memory).

    ``raw``: per reader, an open file descriptor and :func:`maskprobe.counting.tensor_spans`.
    """
    from .counting import count_files

    shape = readers[0].shape(name)
    numel = int(np.prod(shape, dtype=np.int64))
    packed = {r.packed for r in readers}
    if len(packed) > 1:
        return count_tensor(name, [r.get(name) for r in readers])
    spans = [s[name] for _, s in raw]
    for r, span in zip(readers, spans, strict=True):
        want, dtype = ((numel + 7) // 8, "U8") if r.packed else (numel, "BOOL")
        if span.nbytes != want or span.dtype != dtype:
            raise MaskFileError(f"{r.path}: tensor {name!r} is not stored as {want} bytes of {dtype}")
    label = f"{readers[0].path.name}/{name}"
    c = count_files([fd for fd, _ in raw], spans, numel, packed=packed.pop(), label=label, workers=workers)
    return Counts(name, shape, numel, c.counts, c.intersection, c.in_others, c.by_k)


def overlap(
    paths: Sequence[str | os.PathLike[str]],
    *,
    allow_mismatch: bool = False,
    order: Sequence[str] | None = None,
    io: Sequence[str] = (),
    workers: int | None = None,
) -> Overlap:
    """Stream the mask files tensor by tensor and count overlaps (one fused pass per tensor).

    Args:
        paths: two or more mask files over the same parameters (plain or packed bits).
        order: parameter names in model order (default: :func:`natural_order` of the names).
        io: glob patterns naming the input/output layers (default: first and last weight, see :func:`layer_roles`).
        workers: counting threads (default: one per core).

    Raises:
        MaskFileError: unreadable, damaged or mutually incompatible files.
    """
    from .counting import tensor_spans

    readers = [open_masks(p) for p in paths]
    raw: list[tuple[int, dict]] = []
    try:
        names = check_compatible(readers, allow_mismatch)
        if order:
            rank = {n: i for i, n in enumerate(order)}
            names = sorted(natural_order(names), key=lambda n: rank.get(n, len(rank)))
        else:
            names = natural_order(names)
        for r in readers:
            raw.append((os.open(r.path, os.O_RDONLY), tensor_spans(r.path)))
        roles = layer_roles(names, {n: readers[0].shape(n) for n in names}, io)
        layers = []
        for n in names:
            c = _count_streamed(readers, raw, n, workers)
            c.role = roles[n]
            layers.append(c)
        total = sum_counts("total", layers)
        has_io = any(c.role != "hidden" for c in layers)
        hidden = sum_counts("hidden layers", [c for c in layers if c.role == "hidden"]) if has_io else None
        return Overlap([r.path for r in readers], [r.task_name for r in readers], [r.metadata for r in readers],
                       layers, total, hidden)  # fmt: skip
    finally:
        for fd, _ in raw:
            os.close(fd)
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
