"""Rendering: rich tables and JSON for the CLI. The library returns data; this is the only place that
formats it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from .checks import SCHEMA as COMPARE_SCHEMA


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
        return ["empty"] * 5
    return [num(c.iou(i, j)), num(c.chance_iou(i, j)), num(c.iomin(i, j)), num(c.chance_iomin(i, j)), signed(c.excess_iou(i, j))]


def signed(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:+.3f}"


OVERLAP_COLUMNS = (
    "layer",
    "role",
    "shape",
    "|A|",
    "|B|",
    "|A∩B|",
    "IoU",
    "chance",
    "IoMin",
    "chance",
    "IoU-chance",
    "shared A→B",
)


def overlap_rows(ov: Any, i: int = 0, j: int = 1) -> list[list[str] | None]:
    """Rows of the per-layer table (None = a section break): input layer, hidden layers, output layer, then
    the hidden-layer total and the total, so trivially disjoint I/O layers cannot hide in the total."""
    rows: list[list[str] | None] = []
    layers = sorted(ov.layers, key=lambda c: {"input": 0, "hidden": 1, "output": 2}.get(c.role, 1))
    last_role = None
    for c in [*layers, None, *([ov.hidden] if ov.hidden is not None else []), ov.total]:
        if c is None or (last_role is not None and c.role != last_role and c.role in ("hidden", "output")):
            rows.append(None)
        if c is None:
            continue
        last_role = c.role
        rows.append(
            [
                c.name,
                "" if c.role in ("total",) else c.role,
                shape_str(c.shape),
                f"{c.counts[i]:,} ({pct(c.density(i))})",
                f"{c.counts[j]:,} ({pct(c.density(j))})",
                f"{c.intersection[i][j]:,}",
                *_pair_cells(c, i, j),
                num(c.shared(i, j)) if c.counts[i] else "empty",
            ]
        )
    return rows


def overlap_table(ov: Any, i: int = 0, j: int = 1) -> Table:
    a, b = ov.tasks[i], ov.tasks[j]
    t = Table(
        title=escape(f"Weight overlap per layer: A = {a} ({ov.paths[i].name}), B = {b} ({ov.paths[j].name}); "
                     "chance = independent random masks of the same per-layer densities"),
        title_justify="left",
    )  # fmt: skip
    for col in OVERLAP_COLUMNS:
        t.add_column(col, justify="left" if col in ("layer", "role") else "right")
    for row in overlap_rows(ov, i, j):
        if row is None:
            t.add_section()
        else:
            _add(t, *row)
    return t


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
    out = []
    for key, label in (("iou", "IoU"), ("iomin", "IoMin")):
        m, ch = c.matrix(key), c.matrix(f"chance_{key}")
        cells = [[(i, j) for j in range(c.n)] for i in range(c.n)]
        fmt = lambda ij, m=m, ch=ch: "—" if ij[0] == ij[1] else f"{num(m[ij[0]][ij[1]])} ({num(ch[ij[0]][ij[1]])})"  # noqa: E731
        out.append(matrix_table(f"Total {label}, pairwise (chance in brackets)", labels, cells, fmt=fmt))
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


def baseline_table(base: dict[str, Any], limit: int = 15) -> Table:
    t = Table(title=escape(f"Against the baseline {base.get('path', '')}: the largest moves"), title_justify="left")
    for col in ("number", "baseline", "now", "change"):
        t.add_column(col, justify="left" if col == "number" else "right")
    for m in base["moves"][:limit]:
        _add(t, m["key"], num(m["old"]), num(m["new"]), signed(m["delta"]))
    return t


def compare_json(
    ov: Any, ab: Any | None, checks: Sequence[dict] | None = None, baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The documented JSON report (docs/compare.md; schema :data:`COMPARE_SCHEMA`)."""
    out: dict[str, Any] = {
        "schema": COMPARE_SCHEMA,
        "masks": [
            {"path": str(p), "task": t, "density": ov.total.density(k), "kept": ov.total.counts[k], "numel": ov.total.numel,
             "packed": bool((ov.metadata[k] or {}).get("packed"))}
            for k, (p, t) in enumerate(zip(ov.paths, ov.tasks, strict=True))
        ],
        "layers": [c.to_dict() for c in ov.layers],
        "total": ov.total.to_dict(),
        "hidden": ov.hidden.to_dict() if ov.hidden is not None else None,
        "summary": ov.summary(),
    }  # fmt: skip
    if ab is not None:
        out["ablation"] = ab.to_dict()
        out["scores"] = ab.scores()
    if checks is not None:
        out["checks"] = list(checks)
        out["passed"] = all(c["passed"] for c in checks)
    if baseline is not None:
        out["baseline"] = baseline
    return jsonable(out)
