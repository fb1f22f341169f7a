"""Shared set-up for commands: resolve tasks, build the architecture, load the checkpoint, find masks' tasks.

Library code (no printing); the CLI and notebooks both call it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import Checkpoint, load_checkpoint, load_factory
from .errors import BadInputError, MaskFileError, PluginError
from .tasks import Task, TaskRef, load_task, parse_task_args, task_class


def parse_kv(pairs: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            raise BadInputError(f"{what} must be key=value, got {p!r}")
        out[k.strip().replace("-", "_")] = v
    return out


def resolve_tasks(refs: Sequence[str], arg_pairs: Sequence[str] = ()) -> list[tuple[Task, TaskRef]]:
    """Instantiate each task; every ``key=value`` goes to each task that accepts ``key`` (an error if none
    does)."""
    if not refs:
        raise BadInputError("give at least one --task")
    classes = [(ref, task_class(ref)) for ref in refs]
    from .tasks import task_arguments

    used: set[str] = set()
    out = []
    for ref, cls in classes:
        accepted = task_arguments(cls)
        mine = [p for p in arg_pairs if p.partition("=")[0].strip().replace("-", "_") in accepted]
        used.update(p for p in mine)
        out.append(load_task(ref, parse_task_args(ref, cls, mine)))
    unused = [p for p in arg_pairs if p not in used]
    if unused:
        raise BadInputError(f"no task accepts --task-arg {unused[0]!r}")
    return out


def architecture(tasks: Sequence[Task], model_ref: str | None, model_args: Sequence[str] = ()):
    """The callable that builds the module: ``--model`` if given, else the first task's build_model()."""
    if model_ref:
        return load_factory(model_ref, parse_kv(model_args, "--model-arg"))

    def build() -> Any:
        for t in tasks:
            try:
                model = t.build_model()
            except Exception as exc:
                raise PluginError(f"task {t.name!r}: build_model() failed: {type(exc).__name__}: {exc}") from exc
            if model is not None:
                return model
        return None

    return build if tasks else None


def open_checkpoint(
    path: str | os.PathLike[str],
    tasks: Sequence[Task],
    model_ref: str | None = None,
    model_args: Sequence[str] = (),
    trust: bool = False,
) -> Checkpoint:
    build = architecture(tasks, model_ref, model_args)

    def arch() -> Any:
        model = build() if build else None
        if model is None:
            raise BadInputError(
                f"{path} holds only weights and no task defines build_model(); give --model package.module:factory"
            )
        return model

    return load_checkpoint(path, arch, trust=trust)


def tasks_from_masks(metas: Sequence[dict[str, Any]], paths: Sequence[Path]) -> list[tuple[Task, TaskRef]]:
    """Rebuild each mask's task from its metadata (``task.ref`` and ``task.args``)."""
    out = []
    for meta, path in zip(metas, paths, strict=True):
        task = meta.get("task")
        if not isinstance(task, dict) or "ref" not in task:
            raise MaskFileError(f"{path} records no task; give the tasks with --task, one per mask")
        out.append(load_task(task["ref"], task.get("args") or {}))
    return out


# suffixes of files, never of an output folder: --out with one of these is refused (masks are NAME.safetensors)
FILE_SUFFIXES = frozenset(
    ".pt .pth .bin .ckpt .pkl .pickle .json .npz .npy .h5 .hdf5 .onnx .msgpack .gguf .tar .zip .gz .txt .csv .safetensor".split()
)


@dataclass
class OutputPlan:
    mask: Path
    state: Path


def output_paths(out: str | os.PathLike[str], task_names: Sequence[str]) -> list[OutputPlan]:
    """``--out x.safetensors`` for one task; otherwise a folder with ``<task>.safetensors`` each."""
    out = Path(out)
    if out.suffix.lower() in FILE_SUFFIXES:  # --out m.pt would become a folder named m.pt/
        raise BadInputError(f"--out {out} names a {out.suffix} file: give NAME.safetensors (one task) or a folder")
    if out.suffix == ".safetensors":
        if len(task_names) > 1:
            raise BadInputError("--out must be a folder when training several tasks")
        files = [out]
    else:
        if out.exists() and not out.is_dir():
            raise BadInputError(f"--out {out} exists and is not a folder")
        if len(set(task_names)) != len(task_names):
            raise BadInputError("two tasks share a name; train them into separate --out folders")
        files = [out / f"{name}.safetensors" for name in task_names]
    return [OutputPlan(f, f.with_name(f.name.removesuffix(".safetensors") + ".state.pt")) for f in files]
