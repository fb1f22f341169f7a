"""maskprobe: learn binary weight masks per task on a frozen checkpoint and measure modularity.

Implements Csordás, van Steenkiste & Schmidhuber, "Are Neural Nets Modular? Inspecting Functional
Modularity Through Differentiable Weight Masks" (ICLR 2021).

Public API (imported lazily, so ``import maskprobe`` stays fast)::

    from maskprobe import (Task, TaskContext, load_task, load_checkpoint, TrainConfig, Selection, train_mask,
                           train_masks, TrainRequest, save_masks, load_masks, open_masks, compare, CompareReport,
                           overlap, ablate, evaluate_task, fit, Recipe)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Task": "tasks",
    "TaskContext": "tasks",
    "resolve_tasks": "task_args",
    "load_task": "tasks",
    "discover_tasks": "tasks",
    "load_checkpoint": "checkpoints",
    "Checkpoint": "checkpoints",
    "TrainConfig": "config",
    "Selection": "config",
    "train_mask": "training",
    "MaskResult": "training",
    "evaluate_task": "evaluation",
    "train_masks": "runs",
    "TrainRequest": "runs",
    "fit": "fitting",
    "Recipe": "fitting",
    "select_parameters": "selection",
    "save_masks": "maskfile",
    "load_masks": "maskfile",
    "open_masks": "maskfile",
    "MaskSet": "maskfile",
    "overlap": "overlap",
    "compare": "compare",
    "CompareReport": "compare",
    "ablate": "ablation",
    "Ablation": "ablation",
    "MaskprobeError": "errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


# functions named like the module that defines them: ``maskprobe.compare`` is the function, the module is
# ``maskprobe.compare`` in sys.modules (``from maskprobe.compare import CompareReport`` works as before)
_FUNCTION_OVER_MODULE = frozenset(n for n, m in _EXPORTS.items() if n == m)


class _Package(types.ModuleType):
    """The package object: importing the submodule ``maskprobe.compare`` would bind the attribute ``compare`` to the
    module (the import system does so after loading it), and ``from maskprobe import compare`` would give the module
    instead of the function; this keeps the attribute for the function (looked up by :func:`__getattr__`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTION_OVER_MODULE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'maskprobe' has no attribute {name!r}")
