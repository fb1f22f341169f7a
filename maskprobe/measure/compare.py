"""``compare()``: mask files in, one :class:`CompareReport` out — what ``maskprobe compare`` prints, for a notebook.

One pass: the files are opened once and checked against each other (and against the checkpoint, when one is
given); the overlap is counted once (streamed from the files, or from memory when the ablation needs the masks
there anyway); the ablation runs once and scores once; thresholds and a baseline are checked against the
finished report. The report is one JSON-able document (schema ``maskprobe.compare/1``, docs/compare.md) from
which the tables, the markdown, the plots and the CI checks are all drawn.

    from maskprobe import compare, load_checkpoint, load_task
    add, mul = load_task("arith-add")[0], load_task("arith-mul")[0]
    ckpt = load_checkpoint("addmul.pt", tasks=[add])               # a Checkpoint, not a path
    report = compare(["add.safetensors", "mul.safetensors"], checkpoint=ckpt, tasks=[add, mul])
    report.scores["p_specialize"], report.passed
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import CONTROL_SEED, DEVICE
from ..errors import BadInputError
from ..masks.layout import Layout
from ..masks.maskfile import MaskReader
from ..masks.masksets import (  # noqa: F401 - re-exported: compare.open_all etc. keep working
    TRUST_FLAG,
    check_compatible,
    check_fits,
    check_roles_agree,
    mask_layout,
    open_all,
    tasks_from_metadata,
)

SCHEMA = "maskprobe.compare/1"


@dataclass
class CompareReport:
    """The result of :func:`compare`: ``data`` is the JSON document every renderer reads (docs/compare.md)."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    @property
    def tasks(self) -> list[str]:
        return [m["task"] for m in self.data["masks"]]

    @property
    def labels(self) -> list[str]:
        """One distinct name per mask: the task, or ``task#1``, ``task#2``, ... where masks share a task (:func:`mask_labels`)."""
        return [m["label"] for m in self.data["masks"]]

    @property
    def scores(self) -> dict[str, Any] | None:
        """``specialization``, ``p_specialize``, ``p_specialize_control``, ``reuse``, ``p_reuse`` (with a checkpoint)."""
        return self.data.get("scores")

    @property
    def checks(self) -> list[dict[str, Any]]:
        return self.data.get("checks", [])

    @property
    def passed(self) -> bool:
        """Every threshold holds (True when none was given)."""
        return all(c["passed"] for c in self.checks)


def compare(
    masks: Sequence[str | os.PathLike[str]],
    *,
    checkpoint: Any = None,
    tasks: Sequence[Any] | None = None,
    keep_io: bool = False,
    io: Sequence[str] | None = None,
    seed: int = CONTROL_SEED,
    device: Any = DEVICE,
    allow_mismatch: bool = False,
    thresholds: Any = None,
    progress: Callable[[str], None] | None = None,
    open_checkpoint: Callable[[Sequence[Any]], Any] | None = None,
    task_args: Sequence[str] = (),
    trust_tasks: bool = False,
) -> CompareReport:
    """Compare two or more masks over the same checkpoint; with a checkpoint, run the ablation too.

    Args:
        masks: mask files (plain or packed bits).
        checkpoint: a loaded :class:`maskprobe.loading.checkpoints.Checkpoint` (or None: structure only).
        tasks: one :class:`maskprobe.Task` per mask for the ablation (default: rebuilt from each file's metadata).
        keep_io: the paper's "first full mask" variant: never remove input/output layer weights.
        io: globs naming the input/output tensors, or ``["none"]`` (default: the roles recorded at train time).
        seed: seed of the random-removal controls (default 0).
        device: where the ablation evaluates.
        allow_mismatch: compare masks recorded from different checkpoints.
        thresholds: a :class:`maskprobe.measure.thresholds.Thresholds` to check (exit 1 in the CLI when one fails).
        progress: receives one line per stage.
        open_checkpoint: ``f(tasks) -> Checkpoint``, called when ``checkpoint`` is None but an ablation is wanted
            (the CLI passes its path this way, so that a weights-only file gets the tasks' architecture).
        task_args: ``--task-arg`` pairs applied over the arguments recorded in the masks (without ``tasks``);
            ``TASK:`` names a mask by its task name, its recorded ref or its position from 1.
        trust_tasks: rebuild a task whose recorded ref is a file path or a module that is not an installed
            task (``--trust-mask-tasks``: that imports code named inside a mask file). Default False.

    Raises:
        MaskFileError, BadInputError: unreadable or incompatible files, a mask that does not fit the checkpoint.
        PluginError: a task failed while evaluating.
    """
    if len(masks) < 2:
        raise BadInputError("compare needs at least two mask files")
    functional = checkpoint is not None or open_checkpoint is not None  # an ablation will run
    if keep_io and not functional:
        raise BadInputError("--keep-io changes the ablation: it needs --checkpoint")
    if task_args and tasks:
        raise BadInputError("task_args apply to the tasks rebuilt from the masks; pass them to the tasks given instead")
    if (task_args or trust_tasks) and not functional:
        what = "--task-arg" if task_args else TRUST_FLAG
        raise BadInputError(f"{what} changes the ablation's tasks: it needs --checkpoint")
    say = progress or (lambda _msg: None)
    readers = open_all(masks)
    try:
        names = check_compatible(readers, allow_mismatch)
        if thresholds is not None:  # a target that names no mask fails now, not after the ablation
            tasks_here = [r.task_name for r in readers]
            thresholds.check_targets(tasks_here, mask_labels(tasks_here), functional)
        task_list = None
        if functional:
            task_list = list(tasks) if tasks else tasks_from_metadata(readers, task_args, trust_tasks=trust_tasks)
            if len(task_list) != len(readers):
                raise BadInputError(f"give one --task per mask ({len(readers)}), or none to use the masks' metadata")
            if checkpoint is None:
                checkpoint = open_checkpoint(task_list)  # type: ignore[misc]
            check_fits(checkpoint.model, checkpoint, readers, allow_mismatch)
            from ..tasks.contract import setup_tasks

            setup_tasks(task_list, checkpoint)
        layout = mask_layout(readers, names, module=checkpoint.model if checkpoint is not None else None, io=io)
        ablation = None
        if checkpoint is None:
            from .overlap import count_files

            ov = count_files(readers, layout)
        else:
            ov, in_memory = _count_in_memory(readers, layout)
            say(f"ablating {len(readers)} masks on {checkpoint.path} ...")
            from .ablation import ablate

            ablation = ablate(
                checkpoint.model, task_list, in_memory, device=device, seed=seed, keep_io=keep_io,
                io=layout.io_tensors() if keep_io else None, progress=say,
            )  # fmt: skip
        report = CompareReport(report_dict(readers, ov, ablation, layout))
    finally:
        for r in readers:
            r.close()
    if thresholds is not None:
        thresholds.apply(report)
    return report


def _count_in_memory(readers: Sequence[MaskReader], layout: Layout) -> tuple[Any, list[dict[str, Any]]]:
    """Read every mask tensor once, count from memory, and hand the same tensors to the ablation."""
    import torch

    from .overlap import count_arrays

    arrays = {n: [r.get(n) for r in readers] for n in layout.names}
    masks = [{n: torch.from_numpy(arrays[n][i].copy()) for n in layout.names} for i in range(len(readers))]
    return count_arrays(arrays, layout), masks


def mask_labels(tasks: Sequence[str]) -> list[str]:
    """The task name, or ``task#1``, ``task#2``, ... where several masks share a task name."""
    return [t if tasks.count(t) == 1 else f"{t}#{tasks[: k + 1].count(t)}" for k, t in enumerate(tasks)]


def report_dict(readers: Sequence[MaskReader], ov: Any, ablation: Any, layout: Layout) -> dict[str, Any]:
    """The documented JSON report (docs/compare.md; schema :data:`SCHEMA`)."""
    from ..jsonable import jsonable

    tasks = [r.task_name for r in readers]
    labels = mask_labels(tasks)
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "masks": [
            {"path": str(r.path), "task": t, "label": lab, "density": ov.total.density(k), "kept": ov.total.counts[k],
             "numel": ov.total.numel, "packed": r.packed, "foreign": r.foreign}
            for k, (r, t, lab) in enumerate(zip(readers, tasks, labels, strict=True))
        ],
        "layout": layout.source,
        "layers": [c.to_dict() for c in ov.layers],
        "total": ov.total.to_dict(),
        "hidden": ov.hidden.to_dict() if ov.hidden is not None else None,
        "summary": ov.summary(),
    }  # fmt: skip
    if ablation is not None:
        out["ablation"] = {**ablation.to_dict(), "tasks": labels}
        out["scores"] = ablation.scores
    return jsonable(out)


def _group_target(pair: str, names: Sequence[str]) -> str:
    """``"mul:eval_size=8"`` -> ``"2:eval_size=8"`` where ``mul`` is the second group; any other pair unchanged."""
    head, sep, value = pair.partition("=")
    target, colon, key = head.rpartition(":")
    if sep and colon and target.strip() in names:
        return f"{names.index(target.strip()) + 1}:{key}={value}"
    return pair


def compare_groups(groups: Mapping[str, Sequence[Path]], **kwargs: Any) -> CompareReport:
    """Several mask files per task (seeds): each run compared with :func:`compare`, then every number as
    mean (the report) and standard deviation (``std``, the same shape) over the runs (docs/compare.md)."""
    from .groups import aggregate, match_runs

    thresholds = kwargs.pop("thresholds", None)
    say = kwargs.get("progress") or (lambda _msg: None)
    names = list(groups)
    if thresholds is not None:  # the group names are the masks' names in the mean report
        functional = kwargs.get("checkpoint") is not None or kwargs.get("open_checkpoint") is not None
        thresholds.check_targets(names, names, functional)
    if kwargs.get("task_args"):  # GROUP:key=value names a group: its place in every run
        kwargs["task_args"] = [_group_target(pair, names) for pair in kwargs["task_args"]]
    runs = match_runs(dict(groups))
    reports = []
    for k, run in enumerate(runs):
        say(f"run {k + 1}/{len(runs)}: {', '.join(p.name for p in run)}")
        reports.append(compare(run, **kwargs).data)
    mean, std = aggregate(reports)
    for m, name in zip(mean["masks"], names, strict=True):
        m.update(path=f"{name} ({len(runs)} files)", task=name, label=name)
    if mean.get("ablation"):
        mean["ablation"]["tasks"] = names
    mean.update(
        std=std, runs=[[str(p) for p in run] for run in runs], groups={n: [str(p) for p in fs] for n, fs in groups.items()}
    )
    report = CompareReport(mean)
    if thresholds is not None:
        thresholds.apply(report)
    return report
