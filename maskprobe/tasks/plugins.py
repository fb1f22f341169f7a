"""Finding and loading task plugins (docs/plugins.md). Tasks are found three ways:

* the entry-point group ``maskprobe.tasks`` (``name = "package.module:Class"``), which is how the sample
  tasks register themselves;
* ``package.module:Class``;
* ``path/to/file.py:Class``.

Task arguments (``--task-arg key=value``, ``--task-arg TASK:key=value``) are typed from the class's ``__init__``
annotations; :mod:`maskprobe.tasks.args` parses them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import typing
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..errors import BadInputError, PluginError
from .contract import ENTRY_POINT_GROUP, Task, TaskInfo, TaskRef, _describe_origin, contract_problems


def _import_file(path: Path) -> Any:
    if not path.is_file():
        if path.exists():  # a FIFO would block the import forever; a folder is not a module file
            raise PluginError(f"task plugin file {path} is not a regular file")
        raise PluginError(f"task plugin file not found: {path}")
    mod_name = f"_maskprobe_plugin_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import task plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a plugin's own bug: name it, no traceback
        sys.modules.pop(mod_name, None)
        raise PluginError(f"task plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def load_object(ref: str) -> Any:
    """``module:attr`` or ``file.py:attr`` (also ``entry-point-name``)."""
    mod_part, _, attr = ref.rpartition(":")
    if mod_part.endswith(".py") or "/" in mod_part or "\\" in mod_part:
        module = _import_file(Path(mod_part))
        where = mod_part
    else:
        try:
            module = importlib.import_module(mod_part)
        except Exception as exc:
            raise PluginError(f"task plugin {ref!r}: cannot import {mod_part!r}: {type(exc).__name__}: {exc}") from exc
        where = getattr(module, "__file__", mod_part)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PluginError(f"task plugin {ref!r}: {where} has no attribute {attr!r}") from None


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_class(ref: str) -> type:
    """Resolve a task reference (entry-point name, ``module:Class`` or ``file.py:Class``) to its class."""
    if ":" in ref:
        obj = load_object(ref)
    else:
        eps = _entry_points()
        if ref not in eps:
            known = ", ".join(sorted(eps)) or "none installed"
            raise BadInputError(f"unknown task {ref!r} (known: {known}; or use module:Class / file.py:Class)")
        try:
            obj = eps[ref].load()
        except Exception as exc:
            raise PluginError(f"task plugin {ref!r} ({eps[ref].value}) failed to load: {type(exc).__name__}: {exc}") from exc
    if not (inspect.isclass(obj) and issubclass(obj, Task)):
        raise PluginError(f"task plugin {ref!r} ({_describe_origin(obj)}) is not a subclass of maskprobe.Task")
    problems = contract_problems(obj)
    if problems:
        raise PluginError(f"task plugin {ref!r} ({_describe_origin(obj)}) {'; '.join(problems)}")
    return obj


def installed_task_name(ref: str) -> str | None:
    """The entry-point name ``ref`` stands for: ``ref`` itself when it is one, the name whose value (``module:Class``)
    ``ref`` equals, else None. Only such a ref, read from a mask file, is rebuilt without ``--trust-mask-tasks``:
    installed code is what the user chose to run, a path or a module named inside a file is not."""
    eps = _entry_points()
    if ref in eps:
        return ref
    wanted = "".join(ref.split())
    return next((name for name, ep in eps.items() if "".join(ep.value.split()) == wanted), None)


def task_arguments(cls: type) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of the class's ``__init__`` keyword arguments."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    return {
        name: (hints.get(name, param.annotation), param.default)
        for name, param in sig.parameters.items()
        if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


NAME_ARG = "name"  # every task's reserved argument: --task-arg 2:name=legal renames that task's instance
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def load_task(ref: str, args: dict[str, Any] | None = None) -> tuple[Task, TaskRef]:
    """Instantiate the task ``ref`` with typed ``args``; returns it with the record that rebuilds it.

    ``args["name"]`` (reserved for every task) renames the instance, so one class can be trained twice in a run
    (two masks, ``legal.safetensors`` and ``news.safetensors``); it stays in ``TaskRef.args``, so the mask's
    metadata rebuilds the renamed task. A class whose ``__init__`` takes ``name`` itself gets it too.
    """
    cls = task_class(ref)
    args = dict(args or {})
    rename = args.get(NAME_ARG)
    if rename is not None and not (isinstance(rename, str) and _SAFE_NAME.fullmatch(rename)):
        raise BadInputError(
            f"task {ref!r}: name={rename!r} must be a word of letters, digits and . _ + - (it names the mask file)"
        )
    init_args = args if NAME_ARG in task_arguments(cls) else {k: v for k, v in args.items() if k != NAME_ARG}
    try:
        task = cls(**init_args)
    except TypeError as exc:
        raise BadInputError(f"task {ref!r}: {exc}") from None
    except Exception as exc:
        raise PluginError(
            f"task plugin {ref!r} ({_describe_origin(cls)}) failed in __init__: {type(exc).__name__}: {exc}"
        ) from exc
    if rename is not None:
        try:
            task.name = rename  # type: ignore[misc]  # an instance attribute over the class's name
        except AttributeError as exc:
            raise PluginError(f"task plugin {ref!r} ({_describe_origin(cls)}) cannot be renamed: {exc}") from None
    if not getattr(task, "name", ""):
        raise PluginError(f"task plugin {ref!r} ({_describe_origin(cls)}) has no name")
    mod_part, _, attr = ref.rpartition(":")
    stable_ref = f"{Path(mod_part).resolve()}:{attr}" if mod_part.endswith(".py") else ref
    return task, TaskRef(stable_ref, args)


def discover_tasks() -> list[TaskInfo]:
    """Every task registered under the ``maskprobe.tasks`` entry-point group, with load errors kept."""
    found = []
    for name, ep in sorted(_entry_points().items()):
        source = f"{ep.value} (entry point"
        dist = getattr(ep, "dist", None)
        source += f" of {dist.name})" if dist is not None else ")"
        try:
            cls = ep.load()
            if not (inspect.isclass(cls) and issubclass(cls, Task)):
                raise TypeError("not a subclass of maskprobe.Task")
            found.append(TaskInfo(name, source, cls))
        except Exception as exc:
            found.append(TaskInfo(name, source, None, f"{type(exc).__name__}: {exc}"))
    return found
