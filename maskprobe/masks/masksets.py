"""A set of mask files: opened once, checked against each other and against a checkpoint, laid out in model
order, and their tasks rebuilt from what they record. ``compare``, ``overlap`` and ``evaluate`` all open masks here.

    readers = open_all(paths)                       # the same file twice is refused
    names = check_compatible(readers)               # same names and shapes, same recorded checkpoint
    check_fits(module, checkpoint, readers)         # ... and that checkpoint (names, shapes, identity)
    layout = mask_layout(readers, names)            # model order and input/output roles
    tasks = tasks_from_metadata(readers)            # installed tasks only, unless trust_tasks
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInputError, MaskFileError
from .layout import Layout, model_layout, names_layout, recorded_layout, with_io
from .maskfile import MaskReader, open_masks


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


def fits_recorded(recorded: Mapping[str, Any], checkpoint: Any) -> str | None:
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
    ``checkpoint`` (a :class:`~maskprobe.loading.checkpoints.Checkpoint`; by identity, or by file SHA-256 for older masks).

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
        differ = None if allow_mismatch else fits_recorded(_recorded(r), checkpoint)
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
    recorded = [(r, layout) for r in readers if (layout := recorded_layout(r.metadata, names)) is not None]
    for r, layout in recorded[1:]:
        r0, l0 = recorded[0]
        bad = [n for n in l0.names if l0.roles[n] != layout.roles[n]]
        if bad:
            raise MaskFileError(
                f"{r0.path.name} and {r.path.name} record different layer roles ({bad[0]!r}: {l0.roles[bad[0]]} vs "
                f"{layout.roles[bad[0]]}); set the roles with --io-layer GLOB or --io-layer none"
            )


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
    from ..tasks.args import task_args_per_task
    from ..tasks.plugins import installed_task_name, load_task, task_class

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

    from ..tasks.plugins import task_arguments

    known = task_arguments(cls)
    for key, value in args.items():
        annotation = known.get(key, (None, None))[0]
        is_path = annotation is Path or Path in typing.get_args(annotation)
        if is_path and isinstance(value, str) and value and not Path(value).exists():
            raise BadInputError(
                f"{path}: its task {task!r} was trained with {key}={value}, which is not there any more; give the file "
                f"again with --task-arg {k + 1}:{key}=NEW_PATH (the other recorded arguments are kept)"
            )
