"""``maskprobe inspect``: what a checkpoint or a mask file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _is_mask_file(path: Path) -> bool:
    from ..checkpoints import detect_format
    from ..errors import CheckpointError

    try:
        if detect_format(path) != "safetensors":
            return False
    except CheckpointError:
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format", "").startswith("maskprobe.mask/")
    except Exception:
        return False


def run_inspect(*, path, include, exclude, mask_biases, task, task_arg, model, model_arg, trust_checkpoint, json_out) -> None:
    from ..cli import _stdout

    out = _stdout()
    if path.exists() and path.is_file() and _is_mask_file(path):
        _inspect_mask(out, path, json_out)
    else:
        _inspect_checkpoint(
            out, path, include, exclude, mask_biases, task, task_arg, model, model_arg, trust_checkpoint, json_out
        )


def _inspect_mask(out: Any, path: Path, json_out: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..analysis import count_tensor
    from ..maskfile import open_masks
    from ..render import dumps, pct, shape_str

    with open_masks(path) as r:
        layers = [count_tensor(n, [r.get(n)]) for n in r.names]
        meta = r.metadata
    kept = sum(c.counts[0] for c in layers)
    numel = sum(c.numel for c in layers)
    if json_out:
        out.out(
            dumps(
                {
                    "schema": "maskprobe.inspect/1",
                    "kind": "mask",
                    "path": str(path),
                    "metadata": meta,
                    "layers": [
                        {"name": c.name, "shape": list(c.shape), "numel": c.numel, "kept": c.counts[0], "density": c.density(0)}
                        for c in layers
                    ],
                    "total": {"kept": kept, "numel": numel, "density": kept / numel if numel else 0.0},
                }
            )
        )
        return
    m = Table(title=escape(f"{path}: maskprobe mask ({meta.get('format')})"), title_justify="left", show_header=False)
    m.add_column("key")
    m.add_column("value", overflow="fold")
    for k, v in meta.items():
        if k == "density":
            continue
        m.add_row(k, v if isinstance(v, str) else dumps(v).replace("\n", " ").replace("  ", ""))
    out.print(m)
    t = Table(title="Density per tensor", title_justify="left")
    for col in ("tensor", "shape", "kept", "density"):
        t.add_column(col, justify="left" if col == "tensor" else "right")
    for c in layers:
        t.add_row(c.name, shape_str(c.shape), f"{c.counts[0]:,}", pct(c.density(0)))
    t.add_section()
    t.add_row("total", "", f"{kept:,} / {numel:,}", pct(kept / numel if numel else 0))
    out.print(t)


def _inspect_checkpoint(out, path, include, exclude, mask_biases, task, task_arg, model, model_arg, trust, json_out) -> None:
    from ..checkpoints import read_contents
    from ..render import dumps, selection_table
    from ..selection import Selection, describe_named, describe_selection, parse_globs
    from ..session import open_checkpoint, resolve_tasks

    selection = Selection(parse_globs(include), parse_globs(exclude), mask_biases)
    if task or model:
        tasks = [t for t, _ in resolve_tasks(task, task_arg)] if task else []
        ckpt = open_checkpoint(path, tasks, model, model_arg, trust)
        fmt, rows, note = ckpt.format, describe_selection(ckpt.model, selection), "architecture built"
    else:
        fmt, contents = read_contents(path, trust=trust)
        if isinstance(contents, dict):
            rows = describe_named(contents.items(), selection)
            note = "weights only: selection judged by names; pass --task or --model to build the module"
        else:  # the file holds its module: its parameters (no buffers, tied weights once), embeddings by type
            rows, note = describe_selection(contents, selection), "module in the file"
    if json_out:
        out.out(
            dumps(
                {
                    "schema": "maskprobe.inspect/1",
                    "kind": "checkpoint",
                    "path": str(path),
                    "format": fmt,
                    "note": note,
                    "parameters": [vars(r) for r in rows],
                    "total": {
                        "tensors": len(rows),
                        "masked_tensors": sum(r.masked for r in rows),
                        "numel": sum(r.numel for r in rows),
                        "masked": sum(r.numel for r in rows if r.masked),
                    },
                }
            )
        )
        return
    out.print(selection_table(rows, title=f"{path}: {fmt} ({note})"))
