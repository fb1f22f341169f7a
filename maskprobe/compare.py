"""``compare()``: mask files in, one :class:`CompareReport` out — what ``maskprobe compare`` prints, for a notebook.

One pass: the files are opened once and checked against each other (and against the checkpoint, when one is
given); the overlap is counted once (streamed from the files, or from memory when the ablation needs the masks
there anyway); the ablation runs once and scores once; thresholds and a baseline are checked against the
finished report. The report is one JSON-able document (schema ``maskprobe.compare/1``, docs/compare.md) from
which the tables, the markdown, the plots and the CI checks are all drawn.

    from maskprobe import compare
    report = compare(["add.safetensors", "mul.safetensors"], checkpoint="addmul.pt")
    report.scores["p_specialize"], report.passed
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInputError, MaskFileError
from .layout import Layout, model_layout, names_layout, recorded_layout, with_io
from .maskfile import MaskReader, open_masks

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
        """One distinct name per mask: the task, or ``task (file)`` where two masks share a task."""
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


def open_all(paths: Sequence[str | os.PathLike[str]]) -> list[MaskReader]:
    """Open every mask file once; the same file given twice is refused (its scores would compare it with itself)."""
    seen: dict[Any, Path] = {}
    readers: list[MaskReader] = []
    try:
        for p in paths:
            path = Path(p)
            key = _identity(path)
            if key in seen:
                raise BadInputError(f"{path} is given twice (also as {seen[key]}): compare needs distinct mask files")
            seen[key] = path
            readers.append(open_masks(path, foreign=True))
    except BaseException:
        for r in readers:
            r.close()
        raise
    return readers


def _identity(path: Path) -> Any:
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return str(path.absolute())


def check_compatible(readers: Sequence[MaskReader], allow_mismatch: bool = False) -> list[str]:
    """The common tensor names, after checking every mask has the same names and shapes and checkpoint.

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
        differ = _recorded_differ(_recorded(first), _recorded(r))
        if differ and not allow_mismatch:
            raise MaskFileError(
                f"{first.path.name} and {r.path.name} come from different checkpoints ({differ}); "
                "pass --allow-mismatch to compare anyway"
            )
    return list(first.names)


def _recorded(r: MaskReader) -> dict[str, Any]:
    ckpt = r.metadata.get("checkpoint")
    return ckpt if isinstance(ckpt, dict) else {}


def _identity_text(identity: Mapping[str, Any]) -> str:
    return f"weights {str(identity.get('weights', '?'))[:12]}, {identity.get('architecture', '?')}"


def _recorded_differ(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """How two recorded checkpoints differ (``a vs b``), or None: same, or nothing both record to compare.

    The identity (weights and architecture) where both masks record it; else the files' SHA-256, which masks
    written before the identity record (docs/mask-format.md).
    """
    ida, idb = a.get("identity"), b.get("identity")
    if isinstance(ida, dict) and isinstance(idb, dict):
        return None if ida == idb else f"{_identity_text(ida)} vs {_identity_text(idb)}"
    sha_a, sha_b = a.get("sha256"), b.get("sha256")
    if sha_a and sha_b and sha_a != sha_b:
        return f"sha256 {sha_a[:12]} vs {sha_b[:12]}"
    return None


def _fits_recorded(recorded: Mapping[str, Any], checkpoint: Any) -> str | None:
    """How the checkpoint a mask records differs from ``checkpoint`` (``mask's, this one's``), or None.

    A mask with an identity is checked by the identity; an older one (only ``sha256``) by the checkpoint's file
    hash, computed only then. ``checkpoint`` may be a SHA-256 string (the old calling convention) or None.
    """
    identity = recorded.get("identity")
    if isinstance(identity, dict) and getattr(checkpoint, "identity", None):
        mine = checkpoint.identity
        return None if identity == mine else f"{_identity_text(identity)}, this one {_identity_text(mine)}"
    sha = recorded.get("sha256")
    if not sha or checkpoint is None or isinstance(identity, dict):
        return None
    mine = checkpoint if isinstance(checkpoint, str) else checkpoint.sha256
    return None if sha == mine else f"sha256 {sha[:12]}, this one {mine[:12]}"


def check_fits(module: Any, checkpoint: Any, readers: Sequence[MaskReader], allow_mismatch: bool = False) -> None:
    """Every mask tensor names a parameter of ``module`` with the same shape; the checkpoint each mask records is
    ``checkpoint`` (a :class:`~maskprobe.checkpoints.Checkpoint`; by identity, or by file SHA-256 for older masks).

    Raises:
        MaskFileError: a tensor the module lacks or of another shape, or (without ``allow_mismatch``) a mask
            trained on another checkpoint.
    """
    params = {n: tuple(p.shape) for n, p in module.named_parameters()}
    for r in readers:
        for name in r.names:
            if name not in params:
                raise MaskFileError(
                    f"{r.path} masks {name!r}, which the checkpoint does not have: the mask belongs to another model"
                )
            if r.shape(name) != params[name]:
                raise MaskFileError(
                    f"{r.path}: {name!r} has shape {r.shape(name)} but the checkpoint's is {params[name]}: "
                    "the mask belongs to another model"
                )
        differ = None if allow_mismatch else _fits_recorded(_recorded(r), checkpoint)
        if differ:
            raise MaskFileError(
                f"{r.path} was trained on another checkpoint ({differ}); pass --allow-mismatch if that is intended"
            )


def mask_layout(
    readers: Sequence[MaskReader],
    names: Sequence[str],
    *,
    module: Any = None,
    order: Sequence[str] | None = None,
    io: Sequence[str] | None = None,
) -> Layout:
    """Order and roles: recorded in the first mask file at train time, else from ``module``, else from the names;
    then ``io`` (``--io-layer``) on top.

    Raises:
        MaskFileError: (without ``io``) two files record different roles for a tensor.
    """
    layout = recorded_layout(readers[0].metadata, names)
    if not io:
        check_roles_agree(readers, names)
    if layout is None and module is not None:
        layout = model_layout(module, names)
    if layout is None:
        layout = names_layout(names, {n: readers[0].shape(n) for n in names}, order)
    return with_io(layout, io)


def check_roles_agree(readers: Sequence[MaskReader], names: Sequence[str]) -> None:
    """Every file that records layer roles records the same role for each tensor (the roles decide which
    tensors count as input/output and which as hidden in every table).

    Raises:
        MaskFileError: the first tensor whose recorded role differs between two files.
    """
    first: tuple[MaskReader, Layout] | None = None
    for r in readers:
        layout = recorded_layout(r.metadata, names)
        if layout is None:
            continue
        if first is None:
            first = (r, layout)
            continue
        r0, l0 = first
        bad = [n for n in l0.names if l0.roles[n] != layout.roles[n]]
        if bad:
            raise MaskFileError(
                f"{r0.path.name} and {r.path.name} record different layer roles ({bad[0]!r}: {l0.roles[bad[0]]} vs "
                f"{layout.roles[bad[0]]}); set the roles with --io-layer GLOB or --io-layer none"
            )


def compare(
    masks: Sequence[str | os.PathLike[str]],
    *,
    checkpoint: Any = None,
    tasks: Sequence[Any] | None = None,
    keep_io: bool = False,
    io: Sequence[str] | None = None,
    seed: int = 0,
    device: Any = "cpu",
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
        checkpoint: a loaded :class:`maskprobe.checkpoints.Checkpoint` (or None: structure only).
        tasks: one :class:`maskprobe.Task` per mask for the ablation (default: rebuilt from each file's metadata).
        keep_io: the paper's "first full mask" variant: never remove input/output layer weights.
        io: globs naming the input/output tensors, or ``["none"]`` (default: the roles recorded at train time).
        seed: seed of the random-removal controls (default 0).
        device: where the ablation evaluates.
        allow_mismatch: compare masks recorded from different checkpoints.
        thresholds: a :class:`maskprobe.thresholds.Thresholds` to check (exit 1 in the CLI when one fails).
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
    if keep_io and checkpoint is None and open_checkpoint is None:
        raise BadInputError("--keep-io changes the ablation: it needs --checkpoint")
    if task_args and tasks:
        raise BadInputError("task_args apply to the tasks rebuilt from the masks; pass them to the tasks given instead")
    if (task_args or trust_tasks) and checkpoint is None and open_checkpoint is None:
        what = "--task-arg" if task_args else TRUST_FLAG
        raise BadInputError(f"{what} changes the ablation's tasks: it needs --checkpoint")
    say = progress or (lambda _msg: None)
    readers = open_all(masks)
    try:
        names = check_compatible(readers, allow_mismatch)
        if thresholds is not None:  # a target that names no mask fails now, not after the ablation
            tasks_here = [r.task_name for r in readers]
            functional = checkpoint is not None or open_checkpoint is not None
            thresholds.check_targets(tasks_here, mask_labels(tasks_here), functional)
        task_list = None
        if checkpoint is not None or open_checkpoint is not None:
            task_list = list(tasks) if tasks else tasks_from_metadata(readers, task_args, trust_tasks=trust_tasks)
            if len(task_list) != len(readers):
                raise BadInputError(f"give one --task per mask ({len(readers)}), or none to use the masks' metadata")
            if checkpoint is None:
                checkpoint = open_checkpoint(task_list)  # type: ignore[misc]
            check_fits(checkpoint.model, checkpoint, readers, allow_mismatch)
            from .tasks import setup_tasks

            setup_tasks(task_list, checkpoint)
        layout = mask_layout(readers, names, module=checkpoint.model if checkpoint is not None else None, io=io)
        ablation = None
        if checkpoint is None:
            ov = _count_streamed(readers, layout)
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


def _count_streamed(readers: Sequence[MaskReader], layout: Layout) -> Any:
    from .overlap import count_files

    return count_files(readers, layout)


def _count_in_memory(readers: Sequence[MaskReader], layout: Layout) -> tuple[Any, list[dict[str, Any]]]:
    """Read every mask tensor once, count from memory, and hand the same tensors to the ablation."""
    import torch

    from .overlap import count_arrays

    arrays = {n: [r.get(n) for r in readers] for n in layout.names}
    masks = [{n: torch.from_numpy(arrays[n][i].copy()) for n in layout.names} for i in range(len(readers))]
    return count_arrays(arrays, layout), masks


TRUST_FLAG = "--trust-mask-tasks"


def tasks_from_metadata(readers: Sequence[MaskReader], task_args: Sequence[str] = (), *, trust_tasks: bool = False) -> list[Any]:
    """Rebuild each mask's task from its metadata (``task.ref`` and ``task.args``), ``task_args`` on top.

    A mask file is data (docs/checkpoints.md): its ``task.ref`` is rebuilt only when it names an installed task
    (an entry point of ``maskprobe.tasks``, by name or by its ``module:Class``); a file path or any other module
    named inside a mask is imported only with ``trust_tasks`` (``--trust-mask-tasks``).

    Raises:
        MaskFileError: a mask that records no task.
        BadInputError: a ref that is not an installed task (without ``trust_tasks``); a ``--task-arg`` that no
            task accepts, that names no mask, or of the wrong type.
    """
    from .task_args import task_args_per_task
    from .tasks import installed_task_name, load_task, task_class

    refs, recorded, names = [], [], []
    for r in readers:
        task = r.metadata.get("task")
        if not isinstance(task, dict) or "ref" not in task:
            raise MaskFileError(f"{r.path} records no task; give the tasks with --task, one per mask")
        ref = task["ref"]
        installed = installed_task_name(ref)
        if installed is None and not trust_tasks:
            raise BadInputError(
                f"{r.path} names the task {ref!r}, which is not an installed task: maskprobe does not import code "
                f"named inside a mask file; give the task with --task, or pass {TRUST_FLAG} if you trust this file"
            )
        refs.append(installed or ref)
        recorded.append(dict(task.get("args") or {}))
        names.append(r.task_name)
    classes = [task_class(ref) for ref in refs]
    typed, unused = task_args_per_task(refs, classes, task_args, aliases=names)
    for k, (r, cls, old, new) in enumerate(zip(readers, classes, recorded, typed, strict=True)):
        _check_recorded_files(r.path, k, names[k], cls, {**old, **new})
    out = [load_task(ref, {**old, **new})[0] for ref, old, new in zip(refs, recorded, typed, strict=True)]
    if unused:
        raise BadInputError(f"no mask's task accepts --task-arg {unused[0]!r}")
    return out


def _check_recorded_files(path: Path, k: int, task: str, cls: type, args: Mapping[str, Any]) -> None:
    """A file argument of a rebuilt task (annotated ``Path``, recorded absolute) that is no longer there: one line
    saying how to give it again (``--task-arg K:key=NEW``), before the task reads anything.

    Raises:
        BadInputError: such a file is missing.
    """
    import typing

    from .tasks import task_arguments

    known = task_arguments(cls)
    for key, value in args.items():
        annotation = known.get(key, (None, None))[0]
        is_path = annotation is Path or Path in typing.get_args(annotation)
        if is_path and isinstance(value, str) and value and not Path(value).exists():
            raise BadInputError(
                f"{path}: its task {task!r} was trained with {key}={value}, which is not there any more; give the file "
                f"again with --task-arg {k + 1}:{key}=NEW_PATH (the other recorded arguments are kept)"
            )


def mask_labels(tasks: Sequence[str]) -> list[str]:
    """The task name, or ``task#1``, ``task#2``, ... where several masks share a task name."""
    seen: dict[str, int] = {}
    out = []
    for t in tasks:
        seen[t] = seen.get(t, 0) + 1
        out.append(t if tasks.count(t) == 1 else f"{t}#{seen[t]}")
    return out


def report_dict(readers: Sequence[MaskReader], ov: Any, ablation: Any, layout: Layout) -> dict[str, Any]:
    """The documented JSON report (docs/compare.md; schema :data:`SCHEMA`)."""
    from .render import jsonable

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
    if thresholds is not None:  # the group names are the masks' names in the mean report
        functional = kwargs.get("checkpoint") is not None or kwargs.get("open_checkpoint") is not None
        thresholds.check_targets(list(groups), list(groups), functional)
    names = list(groups)
    if kwargs.get("task_args"):  # GROUP:key=value names a group: its place in every run
        kwargs["task_args"] = [_group_target(pair, names) for pair in kwargs["task_args"]]
    runs = match_runs(dict(groups))
    reports = []
    for k, run in enumerate(runs):
        say(f"run {k + 1}/{len(runs)}: {', '.join(p.name for p in run)}")
        reports.append(compare(run, **kwargs).data)
    mean, std = aggregate(reports)
    for m, name in zip(mean["masks"], groups, strict=True):
        m.update(path=f"{name} ({len(runs)} files)", task=name, label=name)
    if mean.get("ablation"):
        mean["ablation"]["tasks"] = list(groups)
    mean.update(
        std=std, runs=[[str(p) for p in run] for run in runs], groups={n: [str(p) for p in fs] for n, fs in groups.items()}
    )
    report = CompareReport(mean)
    if thresholds is not None:
        thresholds.apply(report)
    return report
