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
import importlib.abc
import importlib.util
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Task": "tasks",
    "TaskContext": "tasks",
    "resolve_tasks": "tasks.args",
    "load_task": "tasks",
    "discover_tasks": "tasks",
    "load_checkpoint": "loading.checkpoints",
    "Checkpoint": "loading.checkpoints",
    "TrainConfig": "config",
    "Selection": "config",
    "train_mask": "learning.training",
    "MaskResult": "learning.training",
    "evaluate_task": "measure.evaluation",
    "train_masks": "learning.runs",
    "TrainRequest": "learning.runs",
    "fit": "learning.fitting",
    "Recipe": "learning.fitting",
    "select_parameters": "learning.selection",
    "save_masks": "masks.maskfile",
    "load_masks": "masks.maskfile",
    "open_masks": "masks.maskfile",
    "MaskSet": "masks.maskfile",
    "overlap": "measure.overlap",
    "compare": "measure.compare",
    "CompareReport": "measure.compare",
    "ablate": "measure.ablation",
    "Ablation": "measure.ablation",
    "MaskprobeError": "errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


# functions named like the module that defines them: ``maskprobe.compare`` is the function, the module is
# ``maskprobe.measure.compare`` (also ``maskprobe.compare`` in sys.modules: ``from maskprobe.compare import
# CompareReport`` works as before)
_FUNCTION_OVER_MODULE = frozenset(n for n, m in _EXPORTS.items() if n == m.rpartition(".")[2])


class _Package(types.ModuleType):
    """The package object: importing the old module path ``maskprobe.compare`` would bind the attribute ``compare`` to the
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


# The modules' homes before they were grouped by concept (docs/architecture.md): ``import maskprobe.engine`` and
# ``from maskprobe.maskfile import load_masks`` keep working and give the same module object as the new path.
_MOVED = {
    "formats": "loading.formats",
    "architecture": "loading.architecture",
    "weights": "loading.weights",
    "digest": "loading.digest",
    "hf_folder": "loading.hf_folder",
    "checkpoints": "loading.checkpoints",
    "selection": "learning.selection",
    "gates": "learning.gates",
    "kernels": "learning.kernels",
    "fused": "learning.fused",
    "maskstep": "learning.maskstep",
    "engine": "learning.engine",
    "sharded": "learning.sharded",
    "training": "learning.training",
    "runs": "learning.runs",
    "statefile": "learning.statefile",
    "memory": "learning.memory",
    "distributed": "learning.distributed",
    "controller": "learning.controller",
    "batching": "learning.batching",
    "masked": "learning.masked",
    "fitting": "learning.fitting",
    "maskfile": "masks.maskfile",
    "layout": "masks.layout",
    "counting": "masks.counting",
    "masksets": "masks.masksets",
    "inspection": "masks.inspection",
    "overlap": "measure.overlap",
    "analysis": "measure.analysis",
    "ablation": "measure.ablation",
    "compare": "measure.compare",
    "thresholds": "measure.thresholds",
    "groups": "measure.groups",
    "evaluation": "measure.evaluation",
    "task_args": "tasks.args",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``maskprobe.<old name>`` -> the module at its new path (one object under both names, so patching either
    patches both)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        head, _, rest = fullname.partition(".")
        if head == __name__ and rest in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def create_module(self, spec: Any) -> types.ModuleType:
        module = importlib.import_module(f"{__name__}.{_MOVED[spec.name.partition('.')[2]]}")
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self._specs.pop(module.__spec__.name)  # the import system gave it the alias's spec


sys.meta_path.append(_OldPaths())
