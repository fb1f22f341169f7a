"""Rendering: rich tables and JSON for the CLI. The library returns data; this is the only place that
formats it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

COMPARE_SCHEMA = "maskprobe.compare/1"


def num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def _add(table: Table, *cells: str) -> None:
    """add_row with every cell taken literally (task names and paths may hold [brackets])."""
    table.add_row(*[escape(c) if isinstance(c, str) else c for c in cells])


def jsonable(obj: Any) -> Any:
    """Make NaN/inf ``null`` (JSON has no NaN), tuples lists, paths strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, sort_keys=False)


# ---- selection / train --------------------------------------------------------------------------------


def selection_table(rows: Sequence[Any], title: str = "Parameters") -> Table:
    t = Table(title=escape(title), title_justify="left")
    for col, just in (("parameter", "left"), ("shape", "right"), ("dtype", "left"), ("numel", "right"), ("masked", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        _add(t, r.name, shape_str(r.shape), r.dtype, f"{r.numel:,}", "yes" if r.masked else f"no ({r.reason})")
    masked = sum(r.numel for r in rows if r.masked)
    total = sum(r.numel for r in rows)
    t.add_section()
    _add(t, "total", "", "", f"{total:,}", f"{masked:,} masked ({pct(masked / total if total else 0)})")
    return t


def train_result_table(result: Any, shapes: dict[str, tuple[int, ...]]) -> Table:
    dens = result.density()
    t = Table(title=escape(f"Mask for task {result.task.name}"), title_justify="left")
    for col, just in (("parameter", "left"), ("shape", "right"), ("kept", "right"), ("density", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for name, m in result.masks.items():
        _add(t, name, shape_str(shapes.get(name, tuple(m.shape))), f"{int(m.sum()):,}", pct(dens["per_tensor"][name]))
    t.add_section()
    _add(t, "total", "", f"{dens['kept']:,} / {dens['numel']:,}", pct(dens["total"]))
    return t


def metric_table(title: str, rows: Sequence[tuple[str, dict[str, float], dict[str, float] | None]]) -> Table:
    """rows: (task, metrics unmasked, metrics masked or None)."""
    t = Table(title=escape(title), title_justify="left")
    t.add_column("task")
    t.add_column("metric")
    t.add_column("unmasked", justify="right")
    t.add_column("masked", justify="right")
    for task, full, masked in rows:
        for key, value in full.items():
            _add(t, task, key, num(value, 4), num(masked.get(key), 4) if masked else "")
    return t


# ---- compare ------------------------------------------------------------------------------------------


def _pair_cells(c: Any, i: int, j: int) -> list[str]:
    if c.empty(i, j):
        return ["empty", "empty"]
    return [num(c.iou(i, j)), num(c.iomin(i, j))]


def overlap_table(ov: Any, i: int = 0, j: int = 1) -> Table:
    a, b = ov.tasks[i], ov.tasks[j]
    t = Table(
        title=escape(f"Weight overlap per layer: A = {a} ({ov.paths[i].name}), B = {b} ({ov.paths[j].name})"),
        title_justify="left",
    )
    for col in ("layer", "shape", "|A|", "|B|", "|A∩B|", "IoU", "IoMin", "IoU chance", "shared A→B"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    rows = [*ov.layers, None, ov.total]
    for c in rows:
        if c is None:
            t.add_section()
            continue
        _add(
            t,
            c.name,
            shape_str(c.shape),
            f"{c.counts[i]:,} ({pct(c.density(i))})",
            f"{c.counts[j]:,} ({pct(c.density(j))})",
            f"{c.intersection[i][j]:,}",
            *_pair_cells(c, i, j),
            num(_chance(c, i, j)),
            num(c.shared(i, j)) if c.counts[i] else "empty",
        )
    return t


def _chance(c: Any, i: int, j: int) -> float:
    from .analysis import chance_iou

    return chance_iou(c.density(i), c.density(j))


def matrix_table(
    title: str, labels: Sequence[str], m: Sequence[Sequence[float]], fmt=num, row_label: str = "", col_label: str = ""
) -> Table:
    t = Table(title=escape(title), title_justify="left")
    t.add_column(f"{row_label} \\ {col_label}" if row_label or col_label else "")
    for lab in labels:
        t.add_column(lab, justify="right")
    for lab, row in zip(labels, m, strict=False):
        _add(t, lab, *[fmt(v) for v in row])
    return t


def pairwise_tables(ov: Any) -> list[Table]:
    c = ov.total
    labels = [f"{k}:{name}" for k, name in enumerate(ov.tasks)]
    out = [
        matrix_table("Total IoU (pairwise)", labels, c.matrix("iou")),
        matrix_table("Total IoMin (pairwise)", labels, c.matrix("iomin")),
    ]
    t = Table(title="Each mask against the union of the others", title_justify="left")
    for col in ("mask", "task", "kept", "density", "share in others' union"):
        t.add_column(col, justify="left" if col in ("mask", "task") else "right")
    for k, name in enumerate(ov.tasks):
        _add(t, ov.paths[k].name, name, f"{c.counts[k]:,}", pct(c.density(k)), pct(c.share_of_others(k)))
    out.append(t)
    t2 = Table(title="Weights kept by exactly k masks", title_justify="left")
    t2.add_column("k")
    t2.add_column("weights", justify="right")
    t2.add_column("fraction", justify="right")
    for k, v in enumerate(c.by_k):
        _add(t2, str(k), f"{v:,}", pct(v / c.numel if c.numel else 0))
    out.append(t2)
    return out


def ablation_tables(ab: Any) -> list[Table]:
    n = len(ab.tasks)
    t = Table(title="Task metric after removing weights (rows: whose weights; columns: task evaluated)", title_justify="left")
    t.add_column("removal")
    t.add_column("mask of")
    for name, metric in zip(ab.tasks, ab.metrics, strict=True):
        t.add_column(f"{name}\n{metric}", justify="right")
    _add(t, "none (full network)", "", *[pct(v) for v in ab.full])
    t.add_section()
    labels = {
        "kept": "only mask kept",
        "inverted": "mask removed (¬M)",
        "exclusive": "exclusive removed (E)",
        "control": "random, |M| per layer",
        "control_exclusive": "random, |E| per layer",
    }
    for kind, label in labels.items():
        rows = getattr(ab, kind)
        for i in range(n):
            _add(t, label if i == 0 else "", ab.tasks[i], *[pct(v) for v in rows[i]])
        t.add_section()
    out = [t]
    for kind, title in (
        ("exclusive", "Relative drop D, exclusive removal"),
        ("control_exclusive", "Relative drop D, random removal of |E| (control)"),
        ("inverted", "Relative drop D, whole-mask removal"),
        ("control", "Relative drop D, random removal of |M| (control)"),
    ):
        out.append(matrix_table(title, ab.tasks, ab.drops(kind), row_label="removed", col_label="task"))
    return out


def scores_table(ab: Any) -> Table:
    s = ab.scores()
    t = Table(title="Scores (docs/metrics.md)", title_justify="left")
    t.add_column("score")
    t.add_column("value", justify="right")
    t.add_column("meaning")
    for i, name in enumerate(ab.tasks):
        _add(t, f"S[{name}]", num(s["specialization"][i]), "drop of own task minus largest other drop, exclusive weights removed")
    _add(t, "P_specialize", num(s["p_specialize"]), "mean S_i; 1 = removing a task's exclusive weights breaks only that task")
    _add(t, "  control", num(s["p_specialize_control"]), "the same with random removals of |E_i| per layer")
    _add(t, "P_reuse", num(s["p_reuse"]), "mean over i≠j of max(0, Dinv[i][j] - Dctrl[i][j])")
    return t


def compare_json(ov: Any, ab: Any | None, checks: Sequence[dict] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schema": COMPARE_SCHEMA,
        "masks": [
            {"path": str(p), "task": t, "density": ov.total.density(k), "kept": ov.total.counts[k], "numel": ov.total.numel}
            for k, (p, t) in enumerate(zip(ov.paths, ov.tasks, strict=True))
        ],
        "layers": [c.to_dict() for c in ov.layers],
        "total": ov.total.to_dict(),
    }
    if ab is not None:
        out["ablation"] = ab.to_dict()
        out["scores"] = ab.scores()
    if checks is not None:
        out["checks"] = list(checks)
    return jsonable(out)
