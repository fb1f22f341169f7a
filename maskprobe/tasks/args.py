"""``--task-arg`` parsing: typed values from a task class's ``__init__`` annotations, per task or for all tasks.

``key=value`` goes to every task that accepts ``key`` (an error if none does); ``TASK:key=value`` only to the
task given as ``--task TASK`` (or the TASK-th ``--task``, counting from 1), and wins over a plain ``key=value``.
``name`` is every task's (tasks.py's :func:`~maskprobe.tasks.load_task` renames the instance with it):
``--task legal-lm --task legal-lm --task-arg 1:name=legal --task-arg 2:name=news --task-arg 2:data=news.txt``.
Values: ``int``/``float``/``bool``/``str`` by annotation, lists as ``1,2,3`` or JSON, dicts as JSON; a ``Path``
becomes an absolute path string, so a mask's metadata rebuilds the task from any working directory.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from .contract import Task, TaskRef
from .plugins import NAME_ARG, load_task, task_arguments, task_class

__all__ = ["parse_task_args", "resolve_tasks"]


_SCALARS = (int, float, str, bool)


def _json_value(value: str, key: str, ref: str, kind: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"task {ref!r}: argument {key}={value!r} is not valid JSON for a {kind} ({exc.msg})") from None


def _check_items(items: Any, annotation: Any, key: str, ref: str, value: str) -> None:
    """The items of a parsed JSON list/dict match ``list[int]``, ``dict[str, float]`` ... (plain types only)."""
    args = typing.get_args(annotation)
    want = args[-1] if args else None
    if want not in _SCALARS:
        return
    for item in items:
        fits = isinstance(item, want) or (want is float and isinstance(item, int))  # an int is a float too, a bool neither
        if not fits or (isinstance(item, bool) and want is not bool):
            raise BadInputError(f"task {ref!r}: argument {key}={value!r}: {item!r} is not of type {want.__name__}")


def _coerce(value: str, annotation: Any, key: str, ref: str) -> Any:
    target = annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        target = args[0] if len(args) == 1 else str
    base = typing.get_origin(target) or target
    if target is Path:  # a file the task reads: absolute, because the mask's metadata must rebuild the task anywhere
        return str(Path(value).expanduser().absolute()) if value else ""
    if base is dict:  # JSON object: --task-arg cfg='{"a": 1}'
        parsed = _json_value(value, key, ref, "dict")
        if not isinstance(parsed, dict):
            raise BadInputError(f"task {ref!r}: argument {key}={value!r} is not a JSON object")
        _check_items(parsed.values(), target, key, ref, value)
        return parsed
    if base in (list, tuple) and value.lstrip()[:1] == "[":  # JSON array: --task-arg sizes='[1, 2]'
        parsed = _json_value(value, key, ref, "list")
        if not isinstance(parsed, list):
            raise BadInputError(f"task {ref!r}: argument {key}={value!r} is not a JSON array")
        _check_items(parsed, target, key, ref, value)
        return tuple(parsed) if base is tuple else parsed
    try:
        if target is bool:
            low = value.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return low in ("1", "true", "yes")
        if target in (int, float, str):
            return target(value)
        if base in (list, tuple):  # comma list: --task-arg sizes=1,2,3
            item = (typing.get_args(target) or (str,))[0]
            item = item if item in (int, float, str) else str
            seq = [item(x) for x in value.split(",") if x != ""]
            return tuple(seq) if base is tuple else seq
    except ValueError:
        raise BadInputError(
            f"task {ref!r}: argument {key}={value!r} is not a valid {getattr(target, '__name__', target)}"
        ) from None
    return _json_value(value, key, ref, "value") if value[:1] in "[{" else value


def parse_task_args(ref: str, cls: type, pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` into typed keyword arguments for ``cls`` (``name`` is every task's: a string)."""
    known = task_arguments(cls)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise BadInputError(f"--task-arg must be key=value, got {pair!r}")
        if key == NAME_ARG and key not in known:
            out[key] = value  # reserved for every task: load_task renames the instance
            continue
        if key not in known:
            names = ", ".join([*known, NAME_ARG])
            raise BadInputError(f"task {ref!r} has no argument {key!r} (arguments: {names})")
        out[key] = _coerce(value, known[key][0], key, ref)
    return out


def _split(pair: str) -> tuple[str | None, str, str]:
    """``"TASK:key=value"`` -> ``("TASK", "key", "value")``; ``"key=value"`` -> ``(None, "key", "value")``."""
    head, sep, value = pair.partition("=")
    target, colon, key = head.rpartition(":")  # a ref holds colons itself (file.py:Class); a key never does
    key = key.strip().replace("-", "_")
    if not sep or not key or (colon and not target.strip()):
        raise BadInputError(f"--task-arg {pair!r} must be key=value or TASK:key=value")
    return (target.strip() if colon else None), key, value


def _position(target: str, refs: Sequence[str], pair: str, aliases: Sequence[str] = ()) -> int:
    """The index of the ``--task`` that ``TASK`` in ``TASK:key=value`` names: its ref (or its alias, a mask's task
    name in ``compare``), or its 1-based position."""
    listed = ", ".join(f"{i} {r}" for i, r in enumerate(refs, 1))
    hits = [i for i, r in enumerate(refs) if r == target or (i < len(aliases) and aliases[i] == target)]
    if len(hits) > 1:
        raise BadInputError(
            f"--task-arg {pair!r}: --task {target} is given {len(hits)} times; name it by position "
            f"({' or '.join(str(i + 1) for i in hits)})"
        )
    if hits:
        return hits[0]
    if target.isdigit() and 1 <= int(target) <= len(refs):
        return int(target) - 1
    if aliases:  # compare: the tasks come from the masks
        listed = ", ".join(f"{i} {a}" for i, a in enumerate(aliases, 1))
        raise BadInputError(f"--task-arg {pair!r}: {target!r} names no mask's task and no position among them ({listed})")
    raise BadInputError(f"--task-arg {pair!r}: {target!r} is neither a --task nor a position among them ({listed})")


def task_args_per_task(
    refs: Sequence[str],
    classes: Sequence[type],
    arg_pairs: Sequence[str],
    *,
    aliases: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """Typed ``--task-arg`` values per task (``TASK:key=value`` wins over ``key=value``) and the plain pairs that
    no task accepts. ``aliases``: another name per task that ``TASK`` may use (compare: the mask's task name).

    Raises:
        BadInputError: a malformed pair, a TASK that names no task, a key that task does not accept, a bad value.
    """
    accepted = [{*task_arguments(cls), NAME_ARG} for cls in classes]
    shared: list[dict[str, str]] = [{} for _ in refs]  # key -> "key=value", per task
    own: list[dict[str, str]] = [{} for _ in refs]
    unused = []
    for pair in arg_pairs:
        target, key, value = _split(pair)
        if target is not None:
            own[_position(target, refs, pair, aliases)][key] = f"{key}={value}"
            continue
        takers = [i for i, names in enumerate(accepted) if key in names]
        unused += [] if takers else [pair]
        for i in takers:
            shared[i][key] = f"{key}={value}"
    typed = [
        parse_task_args(ref, cls, [*shared[i].values(), *own[i].values()])
        for i, (ref, cls) in enumerate(zip(refs, classes, strict=True))
    ]
    return typed, unused


def resolve_tasks(refs: Sequence[str], arg_pairs: Sequence[str] = ()) -> list[tuple[Task, TaskRef]]:
    """Instantiate each ``--task`` with its ``--task-arg`` values (see the module docstring).

    Raises:
        BadInputError: no task, a malformed pair, a TASK that names no ``--task``, a key no task (or not that
            task) accepts, a value of the wrong type.
        PluginError: a task that cannot be imported or built.
    """
    if not refs:
        raise BadInputError("give at least one --task")
    classes = [task_class(ref) for ref in refs]
    typed, unused = task_args_per_task(refs, classes, arg_pairs)
    out = [load_task(ref, args) for ref, args in zip(refs, typed, strict=True)]
    if unused:  # after building: a task whose __init__ fails is the plugin's fault (exit 3), reported first
        raise BadInputError(f"no task accepts --task-arg {unused[0]!r}")
    return out
