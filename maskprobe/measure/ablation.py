"""Functional ablation: remove weights picked by each mask and score every task (DESIGN §3).

For N masks and their N tasks, with ``full_j`` the unmasked metric of task j:

* ``kept[i][j]``       task j with only mask i's weights kept;
* ``inverted[i][j]``   every weight of mask i removed, all else kept (the paper's ¬M_i);
* ``exclusive[i][j]``  only ``E_i = M_i \\ union(M_k, k != i)`` removed;
* ``control[i][j]``, ``control_exclusive[i][j]``: a random set of the same size as ``M_i`` (``E_i``)
  removed from each tensor, seeded.

Drops ``D = clip((full - metric) / full, 0, 1)``; scores in :mod:`maskprobe.measure.analysis`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import CONTROL_SEED, DEVICE, EVAL_BATCH_SIZE
from ..devices import module_on
from ..learning.masked import masked_weights
from ..tasks.contract import Task
from . import analysis
from .evaluation import evaluate_task

REMOVALS = ("inverted", "exclusive", "control", "control_exclusive")


@dataclass
class Ablation:
    tasks: list[str]
    metrics: list[str]
    higher_is_better: list[bool]
    full: list[float]
    kept: list[list[float]]
    inverted: list[list[float]]
    exclusive: list[list[float]]
    control: list[list[float]]
    control_exclusive: list[list[float]]
    keep_io: bool = False
    io_tensors: tuple[str, ...] = ()
    metric_ranges: list[Any] = field(default_factory=list)  # each task's metric_range (percent for [0, 1])
    kept_metrics: list[list[dict[str, float]]] = field(default_factory=list)  # every metric of task j, only mask i kept
    classes_removed: list[list[Any]] = field(default_factory=list)  # per task: the classes its data leaves out
    scores: dict[str, Any] = field(init=False)  # computed once, from the drops (docs/metrics.md)

    def __post_init__(self) -> None:
        d_excl, d_inv, d_ctrl = self.drops("exclusive"), self.drops("inverted"), self.drops("control")
        self.scores = {
            "specialization": analysis.specialization(d_excl),
            "p_specialize": analysis.p_specialize(d_excl),
            "p_specialize_control": analysis.p_specialize(self.drops("control_exclusive")),
            "reuse": analysis.reuse(d_inv, d_ctrl),
            "p_reuse": analysis.p_reuse(d_inv, d_ctrl),
        }

    def drops(self, which: str) -> list[list[float]]:
        return analysis.drop_matrix(self.full, getattr(self, which), self.higher_is_better)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("tasks", "metrics", "full", "kept", *REMOVALS)}
        d["drops"] = {k: self.drops(k) for k in ("kept", *REMOVALS)}
        d["keep_io"] = self.keep_io
        d["io_tensors"] = list(self.io_tensors)
        d["metric_ranges"] = [None if r is None else list(r) for r in self.metric_ranges]
        d["kept_metrics"] = self.kept_metrics
        class_removal = self.class_removal()
        if class_removal is not None:
            d["class_removal"] = class_removal
        return d

    def class_removal(self) -> list[dict[str, Any]] | None:
        """The paper's class-removal reading (its §4, CIFAR-10): for each mask trained without some classes,
        the relative drop of each class's accuracy with only that mask kept against the control mask (the one
        whose task removes no class), evaluated by the control task; the removed classes' drop beside the largest
        drop of any other class. None without a control mask or per-class metrics (``accuracy_class_<k>``)."""
        controls = [j for j, removed in enumerate(self.classes_removed) if not removed]
        if len(controls) != 1 or not any(self.classes_removed) or not self.kept_metrics:
            return None
        c = controls[0]
        base = self.kept_metrics[c][c]
        per_class = {key.removeprefix("accuracy_class_"): v for key, v in base.items() if key.startswith("accuracy_class_")}
        if not per_class:
            return None
        out = []
        for i, removed in enumerate(self.classes_removed):
            if not removed:
                continue
            under = self.kept_metrics[i][c]
            drops = {k: analysis.relative_drop(v, under.get(f"accuracy_class_{k}", float("nan"))) for k, v in per_class.items()}
            removed_keys = [str(r) for r in removed]
            others = [d for k, d in drops.items() if k not in removed_keys and d == d]
            out.append({
                "mask": self.tasks[i], "removed": removed_keys,
                "removed_drop": analysis.nanmean([drops.get(k, float("nan")) for k in removed_keys]),
                "largest_other_drop": max(others) if others else float("nan"),
                "drops": drops,
            })  # fmt: skip
        return out


def io_tensors(module: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    """The masked tensors of the input and output layers of ``module``, in model order (:mod:`maskprobe.masks.layout`)."""
    from ..masks.layout import model_layout

    return model_layout(module, names).io_tensors()


def exclusive_masks(masks: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """``E_i = M_i minus the union of every other mask``, per tensor (bool tensors of the parameters' shapes)."""
    keepers = {k: sum(m[k].to(torch.int32) for m in masks) for k in masks[0]}  # how many masks keep each weight
    return [{k: m[k] & (keepers[k] == 1) for k in keepers} for m in masks]


def _random_like_counts(remove: dict[str, Tensor], gen: torch.Generator) -> dict[str, Tensor]:
    out = {}
    for name, r in remove.items():
        k = int(r.sum())
        flat = torch.zeros(r.numel(), dtype=torch.bool)
        if k:
            flat[torch.randperm(r.numel(), generator=gen)[:k]] = True
        out[name] = flat.reshape(r.shape)
    return out


def ablate(
    module: nn.Module,
    tasks: Sequence[Task],
    masks: Sequence[dict[str, Tensor]],
    *,
    device: torch.device | str = DEVICE,
    seed: int = CONTROL_SEED,
    batch_size: int = EVAL_BATCH_SIZE,
    keep_io: bool = False,
    io: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Ablation:
    """Evaluate every task under every removal of every mask (``masks[i]`` belongs to ``tasks[i]``).

    Args:
        keep_io: the paper's "first full mask" variant: never remove weights of the input and output
            layers (see :func:`io_tensors`), since trivially unshared I/O weights can dominate.
        io: with ``keep_io``, the tensor names kept whole (default: :func:`io_tensors`).
        seed: for the random-removal controls.
    """
    module = module_on(module, device)  # the caller's module stays where it is: a copy when elsewhere (devices.module_on)
    names = list(masks[0])
    io = (tuple(io) if io is not None else io_tensors(module, names)) if keep_io else ()

    def run(task: Task, keep: dict[str, Tensor] | None) -> dict[str, float]:
        overrides = masked_weights(module, keep) if keep is not None else None
        return evaluate_task(module, task, overrides, device=device, batch_size=batch_size)

    def without(remove: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: (~r if k not in io else torch.ones_like(r)) for k, r in remove.items()}

    gen = torch.Generator().manual_seed(seed)
    exclusive = exclusive_masks(masks)
    removals = {
        "kept": [{k: m[k].clone() for k in names} for m in masks],
        "inverted": [without(m) for m in masks],
        "exclusive": [without(e) for e in exclusive],
        "control": [without(_random_like_counts(m, gen)) for m in masks],
        "control_exclusive": [without(_random_like_counts(e, gen)) for e in exclusive],
    }
    say = progress or (lambda _msg: None)
    full = []
    for t in tasks:
        say(f"full network on {t.name}")
        full.append(run(t, None)[t.metric])
    results: dict[str, list[list[float]]] = {}
    kept_metrics: list[list[dict[str, float]]] = []
    for kind, keeps in removals.items():
        say(f"{kind} removals")
        rows = [[run(t, keep) for t in tasks] for keep in keeps]
        results[kind] = [[m[t.metric] for m, t in zip(row, tasks, strict=True)] for row in rows]
        if kind == "kept":
            kept_metrics = rows
    return Ablation(
        [t.name for t in tasks],
        [t.metric for t in tasks],
        [t.higher_is_better for t in tasks],
        full,
        keep_io=keep_io,
        io_tensors=io,
        metric_ranges=[t.metric_range for t in tasks],
        kept_metrics=kept_metrics,
        classes_removed=[list(getattr(t, "classes_removed", ()) or ()) for t in tasks],
        **results,
    )
