"""The task contract and plugin discovery (DESIGN §5, docs/plugins.md).

A task says what data a mask must keep working and how to score it; the engine owns the model, the
masks, the optimiser, the device and the loop, and a task never sees a mask. The ``model`` a task
receives in :meth:`Task.loss` and :meth:`Task.evaluate` is a plain callable: call it like the module.

Tasks are found three ways:

* the entry-point group ``maskprobe.tasks`` (``name = "package.module:Class"``), which is how the sample
  tasks register themselves;
* ``package.module:Class``;
* ``path/to/file.py:Class``.

Task arguments (``--task-arg key=value``, ``--task-arg TASK:key=value``) are typed from the class's ``__init__``
annotations; task_args.py parses them (:func:`resolve_tasks`, :func:`parse_task_args`, re-exported here).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import sys
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from .errors import BadInputError, PluginError

ENTRY_POINT_GROUP = "maskprobe.tasks"


class Task:
    """Base class for tasks. Subclass it, set ``name``, implement ``batches``, ``loss``, ``evaluate``.

    Attributes:
        name: short identifier, e.g. ``"arith-add"``.
        metric: the primary metric's key in :meth:`evaluate`'s result (default ``"accuracy"``).
        higher_is_better: whether a larger metric is better (default True).
        metric_range: inclusive bounds the metric must lie in, or None (default ``(0.0, 1.0)``).
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    metric_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def build_model(self) -> Any:
        """The architecture (an ``nn.Module`` with fresh weights) for weights-only checkpoints, or None."""
        return None

    def setup(self, context: TaskContext) -> None:
        """Called once with the checkpoint the task will run on, before any ``batches()``: a task that tokenizes
        its data with the checkpoint's tokenizer, or reads its config, does it here (default: nothing)."""

    def base_recipe(self) -> Any:
        """How to train :meth:`build_model`'s network from scratch (a :class:`maskprobe.fitting.Recipe`), or
        None (default): used by the demo and the sample tasks' base networks."""
        return None

    def batches(self, split: str, batch_size: int, generator: Any) -> Iterator[Any]:
        """Batches for ``split``: ``"train"`` is endless, ``"eval"`` finite and the same on every call.

        A batch is a tensor, or a tuple/list/dict of tensors, with the batch along dim 0; the engine moves
        it to the device and splits it into one chunk per mask sample. ``generator`` is a seeded
        ``torch.Generator`` on the CPU: draw all randomness from it.
        """
        raise NotImplementedError

    def loss(self, model: Callable[..., Any], batch: Any) -> Any:
        """A scalar loss tensor for ``batch`` (mean over the batch), differentiable through ``model``."""
        raise NotImplementedError

    def evaluate(self, model: Callable[..., Any], batches: Iterable[Any]) -> dict[str, float]:
        """Metrics over the finite ``batches``; must contain ``self.metric``."""
        raise NotImplementedError


@dataclass
class TaskContext:
    """What a task may use of the checkpoint it runs on (:meth:`Task.setup`).

    Attributes:
        module: the frozen network (read its ``config``; calling it directly bypasses the masks: inside
            ``loss``/``evaluate`` use the ``model`` argument, and ``model.unmasked(...)`` for the unmasked outputs).
        path: the checkpoint file or folder (None for a module given in memory).
        format: the checkpoint's format (``hf-folder``, ``safetensors``, ...).
    """

    module: Any
    path: Path | None = None
    format: str = ""
    _tokenizer: Any = None

    @classmethod
    def of(cls, checkpoint: Any) -> TaskContext:
        """The context of a loaded :class:`maskprobe.checkpoints.Checkpoint`."""
        return cls(checkpoint.model, Path(checkpoint.path) if checkpoint.path else None, checkpoint.format)

    @property
    def config(self) -> Any:
        """The module's configuration (a Hugging Face ``PretrainedConfig``), or None."""
        return getattr(self.module, "config", None)

    def tokenizer(self) -> Any:
        """The tokenizer saved with the checkpoint (a Hugging Face folder), loaded once, offline.

        Raises:
            CheckpointError: not a folder with tokenizer files, or transformers missing.
        """
        if self._tokenizer is None:
            from .errors import CheckpointError
            from .hf_folder import hf_tokenizer

            if self.path is None or not self.path.is_dir():
                raise CheckpointError(f"{self.path or 'the checkpoint'} is not a Hugging Face folder: it has no tokenizer")
            self._tokenizer = hf_tokenizer(self.path)
        return self._tokenizer


def setup_tasks(tasks: Iterable[Task], checkpoint: Any) -> None:
    """:meth:`Task.setup` of every task with the loaded ``checkpoint``; a plugin's failure is one PluginError."""
    context = TaskContext.of(checkpoint)
    for task in tasks:
        try:
            task.setup(context)
        except (PluginError, BadInputError):
            raise
        except Exception as exc:
            raise PluginError(f"{describe_task(task)}: setup() failed: {type(exc).__name__}: {exc}") from exc


@dataclass
class TaskRef:
    """How a task was asked for: enough to rebuild it later (it goes into mask metadata)."""

    ref: str
    args: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"ref": self.ref, "args": self.args}, sort_keys=True)


@dataclass
class TaskInfo:
    """One discovered task, for ``maskprobe tasks``."""

    name: str
    source: str
    cls: type | None
    error: str | None = None


REQUIRED_METHODS = ("batches", "loss", "evaluate")


def _describe_origin(obj: Any) -> str:
    for candidate in (obj, type(obj)):
        try:
            return inspect.getsourcefile(candidate) or "?"
        except TypeError:
            continue
    return "?"


def describe_task(task: Any) -> str:
    """``task plugin 'name' (path/to/file.py)``: how every error about a task starts (task or class)."""
    cls = task if inspect.isclass(task) else type(task)
    name = getattr(task, "name", "") or cls.__name__
    return f"task plugin {name!r} ({_describe_origin(cls)})"


def contract_problems(cls: type) -> list[str]:
    """What a task class gets wrong before it runs: missing methods, a bad name/metric/range declaration."""
    problems = []
    for meth in REQUIRED_METHODS:
        if getattr(cls, meth, None) is getattr(Task, meth):
            problems.append(f"does not implement {meth}() (required: {', '.join(m + '()' for m in REQUIRED_METHODS)})")
    if not isinstance(getattr(cls, "metric", None), str) or not cls.metric:
        problems.append(f"metric must be a non-empty string naming a key of evaluate()'s result, got {cls.metric!r}")
    if not isinstance(getattr(cls, "higher_is_better", None), bool):
        problems.append(f"higher_is_better must be True or False, got {cls.higher_is_better!r}")
    rng = getattr(cls, "metric_range", None)
    if rng is not None:
        try:
            lo, hi = (float(x) for x in rng)
            bad = not lo <= hi
        except (TypeError, ValueError):
            bad = True
        if bad:
            problems.append(f"metric_range must be None or (low, high) with low <= high, got {rng!r}")
    return problems


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


def _load_object(ref: str) -> Any:
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
        obj = _load_object(ref)
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
    for name, ep in eps.items():
        if "".join(ep.value.split()) == wanted:
            return name
    return None


def task_arguments(cls: type) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of the class's ``__init__`` keyword arguments."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    out = {}
    for name, param in sig.parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[name] = (hints.get(name, param.annotation), param.default)
    return out


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
    stable_ref = ref
    mod_part, _, attr = ref.rpartition(":")
    if mod_part.endswith(".py"):
        stable_ref = f"{Path(mod_part).resolve()}:{attr}"
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
