"""Tables and JSON payloads of ``train``, ``evaluate`` and ``train --dry-run``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from . import add_row, metric_text, num, pct, shape_str, table


def selection_table(rows: Sequence[Any], title: str = "Parameters") -> Table:
    """What would be masked: one row per parameter (:class:`maskprobe.learning.selection.SelectedParameter`)."""
    t = table(escape(title), "shape", right_from=0, layers="parameter")
    t.add_column("dtype")
    t.add_column("numel", justify="right")
    t.add_column("masked")
    for r in rows:
        verdict = "yes" if r.masked else f"no ({r.reason})"
        tied = getattr(r, "tied", ())
        add_row(t, r.name, shape_str(r.shape), r.dtype, f"{r.numel:,}", verdict + (f"; tied: {', '.join(tied)}" if tied else ""))
    masked = sum(r.numel for r in rows if r.masked)
    total = sum(r.numel for r in rows)
    t.add_section()
    add_row(t, "total", "", "", f"{total:,}", f"{masked:,} masked ({pct(masked / total if total else 0)})")
    return t


KINDS = {"weight": "weights", "norm": "norms", "bias": "biases", "embedding": "embeddings", "vector": "other 1-D"}


def _block_of(name: str) -> tuple[str, int | None]:
    """``encoder.layer.3.attention.self.query.weight`` -> ``("encoder.layer", 3)``: the name up to its first
    numbered part (a layer index); ``(first part, None)`` for a name without one."""
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[:k]), int(part)
    return (parts[0] if len(parts) > 1 else name), None


def selection_groups(rows: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """The rows of :func:`selection_table` grouped by block, in model order: ``encoder.layer.0-5`` for consecutive
    layers whose tensors agree (names after the index, shapes, kinds, verdicts), each other layer on its own, and a
    name without a layer index under its shortest prefix that no layer's prefix starts with (``embeddings``,
    ``bert.pooler``, ``lm_head``)."""
    stems = {stem for stem, idx in map(_block_of, (r.name for r in rows)) if idx is not None}
    blocks: dict[tuple[str, int | None], list[Any]] = {}
    for r in rows:
        stem, idx = _block_of(r.name)
        if idx is None:
            parts = r.name.split(".")
            k = 1
            while k < len(parts) - 1 and any(s == ".".join(parts[:k]) or s.startswith(".".join(parts[:k]) + ".") for s in stems):
                k += 1
            stem = ".".join(parts[:k])
        blocks.setdefault((stem, idx), []).append(r)

    def head(stem: str, idx: int) -> str:  # "encoder.layer.3"; "3" for a bare nn.Sequential's "3.weight"
        return f"{stem}.{idx}" if stem else str(idx)

    def signature(stem: str, idx: int, members: list[Any]) -> tuple:
        cut = len(head(stem, idx)) + 1
        return tuple((m.name[cut:], tuple(m.shape), m.kind, m.masked, m.reason) for m in members)

    out: list[tuple[str, list[Any]]] = []
    run: list[Any] = []  # (stem, idx, members) of consecutive alike layers
    for (stem, idx), members in [*blocks.items(), (("", None), [])]:
        alike = bool(run) and idx is not None and stem == run[-1][0] and idx == run[-1][1] + 1
        if alike and signature(*run[-1]) == signature(stem, idx, members):
            run.append((stem, idx, members))
            continue
        if run:
            first, last = run[0][1], run[-1][1]
            label = head(run[0][0], first) + (f"-{last}" if last != first else "")
            out.append((label, [m for *_, ms in run for m in ms]))
            run = []
        if idx is not None:
            run = [(stem, idx, members)]
        elif members:
            out.append((stem, members))
    return out


def selection_summary(rows: Sequence[Any], title: str = "Parameters") -> list[Any]:
    """What would be masked, on one screen: per block (:func:`selection_groups`) and kind of tensor, how many
    tensors and weights, and how many of them are masked (or why not); tied tensors as notes below. The full table,
    one row per tensor, is :func:`selection_table` (``train --verbose``, ``maskprobe inspect CHECKPOINT``)."""
    groups = selection_groups(rows)
    t = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column("block", overflow="fold", min_width=min(32, max((len(label) for label, _ in groups), default=5)))
    t.add_column("kind", no_wrap=True)
    t.add_column("tensors", justify="right")
    t.add_column("weights", justify="right")
    t.add_column("masked", justify="right")
    for label, members in groups:
        kinds: dict[str, list[Any]] = {}
        for r in members:
            kinds.setdefault(r.kind or "vector", []).append(r)
        order = sorted(kinds.items(), key=lambda kv: list(KINDS).index(kv[0]) if kv[0] in KINDS else len(KINDS))
        for n, (kind, rs) in enumerate(order):
            masked = [r for r in rs if r.masked]
            numel = sum(r.numel for r in rs)
            kept = sum(r.numel for r in masked)
            tensors = f"{len(rs)}" if len(masked) in (0, len(rs)) else f"{len(masked)} of {len(rs)}"
            if masked:
                verdict = "all" if kept == numel else pct(kept / numel if numel else 0)
            else:
                verdict = "no (" + ", ".join(dict.fromkeys(r.reason for r in rs)) + ")"
            add_row(t, "" if n else label, KINDS.get(kind, kind), tensors, f"{numel:,}", verdict)
    masked_rows = [r for r in rows if r.masked]
    kept, total = sum(r.numel for r in masked_rows), sum(r.numel for r in rows)
    notes = [
        f"masked: {len(masked_rows)} of {len(rows)} tensors, {kept:,} of {total:,} weights ({pct(kept / total if total else 0)})"
    ]
    notes += [f"tied: {r.name} = {', '.join(r.tied)}" for r in rows if r.tied]
    if len(notes) > 4:
        notes = [*notes[:4], f"tied: {len(notes) - 4} more"]
    return [t, *notes, "one row per tensor: train --verbose, or maskprobe inspect CHECKPOINT"]


def mask_table(result: Any, label: str | None = None) -> Table:
    """One trained mask: kept weights per tensor (in model order) and in total; ``label`` names the run (the task,
    plus ``beta=``/``seed=`` in a sweep: :meth:`maskprobe.learning.runs.TrainRequest.label`)."""
    dens = result.density()
    t = table(f"Mask for task {escape(label or result.task.name)}", "shape", "kept", "density", right_from=0, layers="parameter")
    for name, m in result.masks.items():
        add_row(t, name, shape_str(tuple(m.shape)), f"{int(m.sum()):,}", pct(dens["per_tensor"][name]))
    t.add_section()
    add_row(t, "total", "", f"{dens['kept']:,} / {dens['numel']:,}", pct(dens["total"]))
    return t


def metric_table(title: str, rows: Sequence[tuple[str, dict[str, float], dict[str, float] | None]], ranges: Any = None) -> Table:
    """rows: (task, metrics unmasked, metrics masked or None); ``ranges`` maps a task to its metric's range
    (percent for [0, 1]); other metrics are plain numbers."""
    t = table(escape(title), "task", "metric", "unmasked", "masked", right_from=2)
    for task, full, masked in rows:
        for key, value in full.items():
            add_row(t, task, key, num(value, 4), num(masked.get(key), 4) if masked else "")
    return t


def train_summary(result: Any, label: str | None = None) -> str:
    """One line under a mask's tables: density, the task loss of the last step, the metric unmasked and masked."""
    task = result.task
    full, kept = result.metric_full.get(task.metric), result.metric_masked.get(task.metric)
    rng = task.metric_range
    return (
        f"{label or task.name}: density {pct(result.density()['total'])}, task loss {num(result.final_task_loss, 4)} at step "
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
    from ..learning.memory import human

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
