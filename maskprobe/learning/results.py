"""What training returns: :class:`StepEvent` (a progress report) and :class:`MaskResult` (the mask, what makes it
doubtful as a measurement, and the metadata its file records: :meth:`MaskResult.metadata`, checked on the way out
by :mod:`maskprobe.masks.maskfile`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import __version__
from ..config import REGULARISER, TrainConfig
from ..tasks.contract import Task, TaskRef
from .statefile import TrainState


@dataclass
class StepEvent:
    """Progress report, sent every ``log_every`` steps and at the end.

    ``loss`` is the total (task loss + regulariser), ``task_loss`` the task's own; ``metric`` the task's metric
    under the current mask (``logit > 0``) on the first evaluation batch, measured every ``config.eval_every``
    steps (None before the first measurement).
    """

    task: str
    step: int
    steps: int
    loss: float
    task_loss: float
    density: float
    elapsed: float
    metric: float | None = None
    metric_name: str = ""

    @property
    def steps_per_s(self) -> float:
        return self.step / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class MaskResult:
    """One task's trained mask and everything the mask file records about it."""

    task: Task
    task_ref: TaskRef
    config: TrainConfig
    masks: dict[str, Tensor]
    state: TrainState
    final_loss: float
    metric_full: dict[str, float]
    metric_masked: dict[str, float]
    completed: bool = True
    engine: dict[str, str] = field(default_factory=dict)  # backend and noise generator actually used
    layers: list[dict[str, str]] = field(default_factory=list)  # model order and roles (maskprobe.masks.layout)
    final_task_loss: float = float("nan")
    controller: dict[str, Any] | None = None  # --keep: what the controller did (KeepController.summary)

    @property
    def steps_run(self) -> int:
        return self.state.step

    def density(self) -> dict[str, Any]:
        per = {n: float(m.float().mean()) for n, m in self.masks.items()}
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return {"per_tensor": per, "total": kept / total if total else 0.0, "kept": kept, "numel": total}

    def warnings(self) -> list[str]:
        """What makes this mask doubtful as a measurement, each naming the run's own settings: it collapsed (the
        task's metric fell to less than half of the unmasked one), it is nearly empty (under 1 % kept), it stayed
        dense (more than 90 % kept: too few steps or too weak a beta), or a ``--keep`` target was not met."""
        out = []
        c = self.config
        keep = self.controller
        settings = (
            f"beta {c.beta:g}" if keep is None else f"--keep {c.keep:g}, beta {keep['beta_min']:.3g}-{keep['beta_max']:.3g}"
        )
        settings += f", lr {c.lr:g}, {self.steps_run} steps of batch {c.batch_size}"
        cure = ("try a smaller --beta (x0.1) or more --steps, or --keep 0.95 to let beta be found" if keep is None
                else "try more --steps or a smaller --lr")  # fmt: skip
        full, kept = self.metric_full.get(self.task.metric), self.metric_masked.get(self.task.metric)
        if full is not None and kept is not None and full == full and kept == kept:
            from ..measure.analysis import relative_drop

            drop = relative_drop(full, kept, self.task.higher_is_better)
            if drop > 0.5:
                out.append(
                    f"the mask collapsed: {self.task.metric} {kept:.4g} with the mask vs {full:.4g} unmasked ({settings}); "
                    f"{cure} (docs/method.md, 'Settings')"
                )
        density = self.density()["total"]
        if density < 0.01 and self.completed:
            if keep is not None and keep.get("met"):
                cure = f"it met --keep {c.keep:g}, so the metric may say little about the model here: try a higher --keep"
            out.append(f"the mask is nearly empty ({100 * density:.2f} % kept; {settings}); {cure} (docs/method.md, 'Settings')")
        if keep is not None and keep.get("met") is False:
            out.append(
                f"--keep {c.keep:g} not met: the mask keeps {100 * keep['ratio']:.1f} % of the unmasked {self.task.metric} "
                f"({settings}); {cure}"
            )
        if density > 0.9 and self.completed and keep is not None:
            out.append(
                f"the mask stayed dense ({100 * density:.1f} % kept): no sparser mask measured kept {c.keep:g} of the "
                f"unmasked {self.task.metric} ({settings}); try a lower --keep or more --steps"
            )
        elif density > 0.9 and self.completed:
            init, lr = self.config.init, self.config.lr
            out.append(
                f"the mask stayed dense ({100 * density:.1f} % kept): {_pruned(self.density())}; "
                "try more --steps or a larger --beta "
                f"(a logit moves about --lr per step: from {init:g} to 0 takes ~{max(1, round(init / lr))} steps at lr {lr:g})"
            )
        return out

    def metadata(self, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "task": {
                "name": self.task.name,
                "ref": self.task_ref.ref,
                "args": self.task_ref.args,
                "metric": self.task.metric,
                "higher_is_better": self.task.higher_is_better,
            },
            "checkpoint": checkpoint or {},
            "hparams": {
                **self.config.hparams(),
                "regulariser": REGULARISER,
                **({"controller": self.controller} if self.controller is not None else {}),
            },
            "selection": self.config.selection.to_dict(),
            "seed": self.config.seed,
            "steps": self.steps_run,
            "final_loss": self.final_loss,
            "history": [[int(step), float(loss), float(d)] for step, loss, d in self.state.history],
            "density": self.density(),
            "metric_full": self.metric_full,
            "metric_masked": self.metric_masked,
            "layers": self.layers,
            "engine": self.engine,
            "versions": _versions(),
        }


def _pruned(density: dict[str, Any]) -> str:
    """How much a dense mask pruned, in words that are true: "nothing was pruned" only when nothing was."""
    removed = density["numel"] - density["kept"]
    if removed == 0:
        return "nothing was pruned"
    return f"only {100 * removed / density['numel']:.3g} % was pruned ({removed:,} of {density['numel']:,} weights)"


def _versions() -> dict[str, Any]:
    """What a bitwise reproduction needs besides seed, hyper-parameters and device (docs/reliability.md)."""
    import platform

    import numpy
    import safetensors

    return {
        "maskprobe": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
    }
