"""Train a task's network from scratch: the base networks of the sample tasks and the demo.

maskprobe's job is masks on a *trained* network; the demo, the sample tasks' command lines and the tests
first need one. A task that can train its own network says how in :meth:`maskprobe.Task.base_recipe` (a
:class:`Recipe`), and :func:`fit` runs it: Adam on every parameter, a linear warm-up then a cosine decay of the
learning rate to zero, an optional gradient-norm clip, the task's own ``batches("train")`` and ``loss``.

Why warm-up and cosine (docs/benchmarks.md, "Base-network robustness"): with a constant learning rate the
add/mul FNN's multiplication sat on the edge of being learned at 10,000 steps (65-98 % over seeds and CPUs);
the decayed schedule converges on every seed measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .batching import to_device


@dataclass(frozen=True)
class Recipe:
    """How to train a network from scratch.

    Attributes:
        steps: optimiser steps (default 10,000).
        batch_size: examples per step (default 128).
        lr: peak Adam learning rate (default 2e-3).
        warmup: fraction of the steps with a linear warm-up from 0 (default 0.05); ``schedule="constant"``
            ignores it.
        schedule: ``"cosine"`` (warm-up, then cosine decay to 0; the default) or ``"constant"``.
        clip: gradient-norm clip over all parameters, or None (default).
    """

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: float = 0.05
    schedule: str = "cosine"
    clip: float | None = None

    def with_steps(self, steps: int | None) -> Recipe:
        return self if steps is None else replace(self, steps=int(steps))

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based)."""
        if self.schedule == "constant":
            return self.lr
        warm = max(1, round(self.warmup * self.steps)) if self.warmup > 0 else 0
        if step < warm:
            return self.lr * (step + 1) / warm
        t = (step - warm) / max(1, self.steps - warm)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def fit(
    task: Any,
    recipe: Recipe | None = None,
    *,
    seed: int = 0,
    model: nn.Module | None = None,
    callback: Callable[[int, float], None] | None = None,
    log_every: int = 500,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Train ``model`` (default: ``task.build_model()``, seeded) with ``recipe`` (default: ``task.base_recipe()``).

    ``callback(step, loss)`` is called every ``log_every`` steps and at the end (the loss is read back from the
    device only then). ``device``: where to train (the model is built and initialised on the CPU, then moved, so
    a seed starts from the same weights everywhere; each batch is moved there); None leaves the model where it
    is. Returns the model in eval mode, on that device. The same seed gives the same network on the same
    machine, device and thread count (docs/reliability.md).
    """
    recipe = recipe or task.base_recipe() or Recipe()
    if recipe.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {recipe.schedule!r} (cosine or constant)")
    torch.manual_seed(seed)
    model = model if model is not None else task.build_model()
    if device is not None:
        model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr_at(0))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step, batch in enumerate(task.batches("train", recipe.batch_size, gen)):
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(step)
        if device is not None:
            batch = to_device(batch, torch.device(device))
        loss = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        done = step + 1
        if callback is not None and (done % log_every == 0 or done == recipe.steps):
            callback(done, float(loss.detach()))
        if done >= recipe.steps:
            break
    model.eval()
    return model
