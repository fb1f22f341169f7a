"""The task contract (DESIGN §5, docs/plugins.md): :class:`Task`, what it receives (:class:`TaskContext`), how it
is recorded (:class:`TaskRef`), and what a class gets wrong before it runs (:func:`contract_problems`).

A task says what data a mask must keep working and how to score it; the engine owns the model, the
masks, the optimiser, the device and the loop, and a task never sees a mask. The ``model`` a task
receives in :meth:`Task.loss` and :meth:`Task.evaluate` is a plain callable: call it like the module.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import BadInputError, PluginError

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
        """How to train :meth:`build_model`'s network from scratch (a :class:`maskprobe.learning.fitting.Recipe`), or
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
        """The context of a loaded :class:`maskprobe.loading.checkpoints.Checkpoint`."""
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
            from ..errors import CheckpointError
            from ..loading.hf_folder import hf_tokenizer

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
