"""Deprecated aliases, kept while the commands switch over; nothing here has logic of its own.

Use instead: :func:`maskprobe.checkpoints.load_checkpoint` (with ``tasks=``, ``model=``, ``model_args=``, ``meta=``),
:func:`maskprobe.tasks.resolve_tasks`, :func:`maskprobe.paths.output_paths`, :func:`maskprobe.compare.tasks_from_metadata`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .architecture import architecture_builder, parse_model_args
from .checkpoints import Checkpoint, load_checkpoint
from .errors import MaskFileError
from .paths import FILE_SUFFIXES, OutputPlan, output_paths  # noqa: F401 - re-exported
from .task_args import resolve_tasks  # noqa: F401 - re-exported
from .tasks import Task, TaskRef, load_task


def architecture(tasks: Sequence[Task], model_ref: str | None, model_args: Sequence[str] = ()) -> Any:
    """Deprecated: ``load_checkpoint(path, tasks=..., model=..., meta=True).build``."""
    return architecture_builder(Path("the checkpoint"), None, tasks, model_ref, parse_model_args(model_args))


def open_checkpoint(
    path: str | os.PathLike[str], tasks: Sequence[Task], model_ref: str | None = None, model_args: Sequence[str] = (),
    trust: bool = False,
) -> Checkpoint:  # fmt: skip
    """Deprecated: ``load_checkpoint(path, tasks=tasks, model=model_ref, model_args=parse_model_args(...), trust=trust)``."""
    return load_checkpoint(path, tasks=tasks, model=model_ref, model_args=parse_model_args(model_args), trust=trust)


def tasks_from_masks(metas: Sequence[dict[str, Any]], paths: Sequence[Path]) -> list[tuple[Task, TaskRef]]:
    """Rebuild each mask's task from its metadata (``task.ref`` and ``task.args``)."""
    out = []
    for meta, path in zip(metas, paths, strict=True):
        task = meta.get("task")
        if not isinstance(task, dict) or "ref" not in task:
            raise MaskFileError(f"{path} records no task; give the tasks with --task, one per mask")
        out.append(load_task(task["ref"], task.get("args") or {}))
    return out
