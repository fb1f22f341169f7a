"""Tables and JSON of ``maskprobe inspect`` (:mod:`maskprobe.masks.inspection`)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from . import add_row, dumps, names_fit, pct, shape_str, table
from .train import selection_table


def mask_tables(summary: Any, width: int | None = None) -> list[Any]:
    """The mask's metadata and its density per tensor; ``width``: the terminal's, where a tensor name that would be
    folded goes on a line of its own (:func:`maskprobe.render.names_fit`)."""
    meta = summary.metadata
    title = f"{escape(str(summary.path))}: maskprobe mask ({meta.get('format')})"
    m = Table(title=title, title_justify="left", show_header=False)
    m.add_column("key")
    m.add_column("value", overflow="fold")
    for k, v in meta.items():
        if k in ("density", "layers"):
            continue
        add_row(m, k, v if isinstance(v, str) else dumps(v).replace("\n", " ").replace("  ", ""))
    t = table("Density per tensor (model order)", "role", "shape", "kept", "density", layers="tensor")
    for c in summary.layers:
        add_row(t, c["name"], c["role"], shape_str(c["shape"]), f"{c['kept']:,}", pct(c["density"]))
    t.add_section()
    add_row(
        t, "total", "", "", f"{summary.kept:,} / {summary.numel:,}", pct(summary.kept / summary.numel if summary.numel else 0)
    )
    return [m, names_fit(t, width)]


def mask_payload(summary: Any) -> dict[str, Any]:
    numel, kept = summary.numel, summary.kept
    return {
        "schema": "maskprobe.inspect/1",
        "kind": "mask",
        "path": str(summary.path),
        "metadata": summary.metadata,
        "layers": summary.layers,
        "total": {"kept": kept, "numel": numel, "density": kept / numel if numel else 0.0},
    }


def checkpoint_table(summary: Any, width: int | None = None) -> Any:
    """Every parameter with the selection's verdict (one row each; ``width`` as in :func:`mask_tables`)."""
    return names_fit(selection_table(summary.rows, title=f"{summary.path}: {summary.format} ({summary.note})"), width)


def checkpoint_payload(summary: Any) -> dict[str, Any]:
    rows = summary.rows
    return {
        "schema": "maskprobe.inspect/1",
        "kind": "checkpoint",
        "path": str(summary.path),
        "format": summary.format,
        "note": summary.note,
        "parameters": [vars(r) for r in rows],
        "total": {
            "tensors": len(rows),
            "masked_tensors": sum(r.masked for r in rows),
            "numel": sum(r.numel for r in rows),
            "masked": sum(r.numel for r in rows if r.masked),
        },
    }
