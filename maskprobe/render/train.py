"""Tables and JSON payloads of ``train``, ``evaluate`` and ``train --dry-run``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from . import add_row, layer_column, metric_text, num, pct, shape_str


def selection_table(rows: Sequence[Any], title: str = "Parameters") -> Table:
    """What would be masked: one row per parameter (:class:`maskprobe.selection.SelectedParameter`)."""
    t = Table(title=escape(title), title_justify="left")
    layer_column(t)
    for col, just in (("shape", "right"), ("dtype", "left"), ("numel", "right"), ("masked", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        verdict = "yes" if r.masked else f"no ({r.reason})"
        tied = getattr(r, "tied", ())
        add_row(t, r.name, shape_str(r.shape), r.dtype, f"{r.numel:,}", verdict + (f"; tied: {', '.join(tied)}" if tied else ""))
    masked = sum(r.numel for r in rows if r.masked)
    total = sum(r.numel for r in rows)
    t.add_section()
    add_row(t, "total", "", "", f"{total:,}", f"{masked:,} masked ({pct(masked / total if total else 0)})")
    return t


def mask_table(result: Any) -> Table:
    """One trained mask: kept weights per tensor (in model order) and in total."""
    dens = result.density()
    t = Table(title=f"Mask for task {escape(result.task.name)}", title_justify="left")
    layer_column(t)
    for col in ("shape", "kept", "density"):
        t.add_column(col, justify="right")
    for name, m in result.masks.items():
        add_row(t, name, shape_str(tuple(m.shape)), f"{int(m.sum()):,}", pct(dens["per_tensor"][name]))
    t.add_section()
    add_row(t, "total", "", f"{dens['kept']:,} / {dens['numel']:,}", pct(dens["total"]))
    return t


def metric_table(title: str, rows: Sequence[tuple[str, dict[str, float], dict[str, float] | None]], ranges: Any = None) -> Table:
    """rows: (task, metrics unmasked, metrics masked or None); ``ranges`` maps a task to its metric's range
    (percent for [0, 1]); other metrics are plain numbers."""
    t = Table(title=escape(title), title_justify="left")
    t.add_column("task")
    t.add_column("metric")
    t.add_column("unmasked", justify="right")
    t.add_column("masked", justify="right")
    for task, full, masked in rows:
        for key, value in full.items():
            add_row(t, task, key, num(value, 4), num(masked.get(key), 4) if masked else "")
    return t


def train_summary(result: Any) -> str:
    """One line under a mask's tables: density, the task loss of the last step, the metric unmasked and masked."""
    task = result.task
    full, kept = result.metric_full.get(task.metric), result.metric_masked.get(task.metric)
    rng = task.metric_range
    return (
        f"{task.name}: density {pct(result.density()['total'])}, task loss {num(result.final_task_loss, 4)} at step "
        f"{result.steps_run}; {task.metric} {metric_text(full, rng)} unmasked, {metric_text(kept, rng)} with the mask"
    )


def train_payload(checkpoint: dict[str, Any], summaries: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """``train --json``: one entry per mask written."""
    return {
        "schema": "maskprobe.train/1",
        "checkpoint": checkpoint,
        "masks": [
            {
                "path": str(path),
                "task": r.task.name,
                "seed": r.config.seed,
                "beta": r.config.beta,
                "steps": r.steps_run,
                "final_loss": r.final_loss,
                "density": r.density()["total"],
                "metric_full": r.metric_full,
                "metric_masked": r.metric_masked,
            }
            for r, path in summaries
        ],
    }


def evaluate_payload(checkpoint: dict[str, Any], mask: Any, invert: bool, rows: Sequence[Any], tasks: Sequence[Any]) -> dict:
    """``evaluate --json``."""
    return {
        "schema": "maskprobe.evaluate/1",
        "checkpoint": checkpoint,
        "mask": str(mask) if mask else None,
        "invert": invert,
        "results": [
            {"task": n, "metric": t.metric, "unmasked": f, "masked": m} for (n, f, m), t in zip(rows, tasks, strict=True)
        ],
    }


def memory_plan_table(plan: dict[str, Any]) -> Table:
    """``train --dry-run``: one column per mode, one row per part of the estimate (distributed.memory_plan)."""
    from ..memory import human

    modes = plan["modes"]
    table = Table(
        title=f"Estimated memory per process on {plan['device']}: {plan['masked']:,} masked weights, "
        f"batch {plan['batch_size']}, {plan['samples']} samples (nothing was trained)"
    )
    table.add_column("part")
    for m in modes:
        head = f"{m['mode']}\n{m['processes']} proc" + ("" if m["processes"] == 1 else f", K/R={m['samples_per_process']}")
        table.add_column(head, justify="right")
    for part in modes[0]["parts"]:
        table.add_row(part, *(human(m["parts"][part]) for m in modes))
    table.add_row("total", *(human(m["total"]) for m in modes))
    return table
