"""Pure formulas of the comparison (DESIGN §3, docs/metrics.md): overlap ratios, chance levels, relative drops,
specialization and reuse scores. No files, no model, no printing; 0/0 is 0 (the renderer says "empty").

The counting that feeds them lives in :mod:`maskprobe.measure.overlap`, the removals in :mod:`maskprobe.measure.ablation`.
"""

from __future__ import annotations

from collections.abc import Sequence


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


def excess(measured: float, chance: float) -> float:
    """Measured overlap minus its chance level (0 = what independent random masks give)."""
    return measured - chance


def relative_drop(full: float, value: float, higher_is_better: bool = True) -> float:
    """``(full - value) / full`` clipped to [0, 1] (0 when full is 0; NaN when either is NaN: an unknown drop stays
    unknown, and the tables show it as such).

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
