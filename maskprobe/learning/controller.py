"""``train --keep F``: a target instead of a beta. The regulariser's weight is found during training.

The problem is constrained: the sparsest mask whose task metric keeps at least ``F`` times the unmasked one. As in
constrained L0 pruning, beta plays the Lagrange multiplier of that constraint and follows a dual update: every
``every = steps // 100`` steps the metric is measured on the first evaluation batch (:meth:`KeepController.measure`),
and

    gap   = (ratio - F) / (1 - F)            ratio = masked / unmasked metric (unmasked / masked if lower is better)
    beta *= exp(rate * clamp(gap, -10, 1))   rate = ln(10) * every * lr / init;  beta within [start/1e4, start*1e4]

so beta grows at most x10 per ``init / lr`` steps (the time a logit takes to cross 0: faster, beta outruns the
mask) while the mask keeps more than it must, stands still at the target and falls up to 10x faster below it.
Beta starts at ``--beta`` and stays there until the lowest logit has fallen by ``init / 2``. The metric is read
under the mask the logits are heading to (a lookahead, :meth:`KeepController.measure`), because ``logit > 0``
cannot change for the first ``init / lr`` steps. The run still overshoots (the mask lags beta) and oscillates;
the mask returned is the sparsest real mask (``logit > 0``) measured that met the target (on the first evaluation
batch, then confirmed on the whole evaluation set), the final one when none did. What it did is recorded in the
mask file's ``hparams.controller`` (:meth:`KeepController.summary`); the method and its measurements are in
docs/method.md, "A target instead of a beta".
"""

from __future__ import annotations

import math
from typing import Any

GAP_LOW, GAP_HIGH = -10.0, 1.0
SPAN = 1e4  # beta stays within [start / SPAN, start * SPAN]
UPDATES = 100  # evaluations per run (every steps // UPDATES steps, at least every step)


def kept_fraction(full: float | None, metric: float | None, higher_is_better: bool = True) -> float:
    """The fraction of the unmasked metric ``full`` that ``metric`` keeps (1 when either is unknown, 0 when the
    masked metric is not finite)."""
    if metric is None or full is None or not math.isfinite(full):
        return 1.0
    if not math.isfinite(metric):
        return 0.0
    if higher_is_better:
        return metric / full if full > 0 else (1.0 if metric >= full else 0.0)
    return full / metric if metric > 0 else 1.0


def _value(metrics: dict | None, name: str) -> float | None:
    value = (metrics or {}).get(name)
    return None if value is None or value != value else float(value)


class KeepController:
    """The beta of a ``--keep`` run: :meth:`measure` (or :meth:`observe`) every :attr:`every` steps, :attr:`beta`
    for the next steps."""

    def __init__(self, keep: float, beta: float, steps: int, higher_is_better: bool = True, init: float = 2.0,
                 lr: float = 1e-2) -> None:  # fmt: skip
        self.keep, self.higher_is_better, self.init = keep, higher_is_better, init
        self.beta = beta
        self.bounds = (beta / SPAN, beta * SPAN)
        self.every = max(1, steps // UPDATES)
        # at most x10 per init / lr steps (the time a logit takes to cross 0): faster, beta outruns the mask
        self.rate = math.log(10) * self.every * lr / max(abs(init), 1e-3)
        self.full: float | None = None  # the unmasked metric on the first evaluation batch
        self.full_all: float | None = None  # on the whole evaluation set (measured when first needed)
        self.trace: list[list[float]] = []  # [step, beta, ratio, density] per measurement
        self.best: dict[str, Any] | None = None  # the sparsest mask measured that met the target
        self.best_info: list[float] | None = None  # its [step, beta, ratio, density]

    def due(self, step: int, steps: int) -> bool:
        return step % self.every == 0 or step == steps

    def ratio(self, metric: float | None) -> float:
        return kept_fraction(self.full, metric, self.higher_is_better)

    def measure(self, engine: Any, task: Any, eval_batch_size: int, step: int) -> float | None:
        """Measure the metric under the mask the logits are heading to, then :meth:`observe` it; returns the metric.

        The lookahead: a logit starts at ``init`` and moves about lr per step, so for the first ``init / lr`` steps
        the mask ``logit > 0`` cannot change whatever beta does, and a controller reading it would raise beta
        blindly until everything falls at once. Logits that have fallen past the midpoint between ``init`` and
        the lowest logit are counted as pruned: threshold ``c = max(0, (init + min logit) / 2)``, which is 0
        (the real mask) once the lowest logit reaches ``-init``. Until the lowest logit has fallen by ``init / 2``
        (a fallen logit is then told from one moved by the noise), beta stays at its start."""
        import torch

        logits = engine.snapshot(step, []).logits
        low = min((float(t.min()) for t in logits.values() if t.numel()), default=0.0)
        c = max(0.0, (self.init + low) / 2) if low < self.init else self.init
        masks = engine.masks()
        if c > 0:
            masks.update({n: t > c for n, t in logits.items()})
        kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
        density = kept / max(1, sum(m.numel() for m in masks.values()))
        metric = _value(engine.evaluate(task, masks, eval_batch_size, batches=1), task.metric)

        def confirm() -> float:  # a candidate is measured on the whole evaluation set (one batch is noisy)
            if self.full_all is None:
                self.full_all = _value(engine.evaluate(task, None, eval_batch_size), task.metric)
            return kept_fraction(self.full_all, _value(engine.evaluate(task, masks, eval_batch_size), task.metric),
                                 self.higher_is_better)  # fmt: skip

        self.observe(step, metric, density, (lambda: masks) if c == 0 else None, move=low <= self.init / 2, confirm=confirm)
        return metric

    def observe(self, step: int, metric: float | None, density: float, masks: Any = None, move: bool = True,
                confirm: Any = None) -> None:  # fmt: skip
        """One measurement: remember the mask when it is the real one (``masks``, a function returning it, given)
        and the sparsest that met the target (also by ``confirm()``, the ratio on the whole evaluation set, when
        given), then move beta (unless ``move`` is False)."""
        r = self.ratio(metric)
        self.trace.append([step, self.beta, r, density])
        if masks is not None and r >= self.keep and (self.best_info is None or density < self.best_info[3]):
            confirmed = r if confirm is None else confirm()
            if confirmed >= self.keep:
                self.best, self.best_info = masks(), [step, self.beta, confirmed, density]
        if not move:
            return
        gap = (r - self.keep) / max(1.0 - self.keep, 1e-3)
        lo, hi = self.bounds
        self.beta = min(hi, max(lo, self.beta * math.exp(self.rate * min(GAP_HIGH, max(GAP_LOW, gap)))))

    def summary(self, ratio: float | None = None) -> dict[str, Any]:
        """What the mask file records: the target, beta's path (start, min, max, final, ten points), the step of
        the mask kept, and, given the final ``ratio`` on the whole evaluation set, whether the target was met."""
        betas = [t[1] for t in self.trace] or [self.beta]
        idx = sorted({round(i * (len(self.trace) - 1) / 9) for i in range(10)}) if self.trace else []
        out: dict[str, Any] = {
            "keep": self.keep,
            "rule": "beta *= exp(rate * clamp((ratio - keep) / (1 - keep), -10, 1)) per measurement",
            "rate": self.rate,
            "every": self.every,
            "bounds": list(self.bounds),
            "beta_start": betas[0],
            "beta_min": min(betas),
            "beta_max": max(betas),
            "beta_final": self.beta,
            "trajectory": [
                [int(self.trace[i][0]), self.trace[i][1], round(self.trace[i][2], 4), round(self.trace[i][3], 5)] for i in idx
            ],  # fmt: skip
            "kept_step": int(self.best_info[0]) if self.best_info else None,
            "kept_beta": self.best_info[1] if self.best_info else None,
        }
        if ratio is not None:
            out["ratio"] = ratio
            out["met"] = bool(ratio >= self.keep)
        return out

    def summary_of(self, full: float | None, masked: float | None) -> dict[str, Any]:
        """:meth:`summary` with the final metrics on the whole evaluation set."""
        return self.summary(kept_fraction(full, masked, self.higher_is_better))

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs (it goes into the state file)."""
        return {"beta": self.beta, "full": self.full, "full_all": self.full_all, "trace": self.trace, "best": self.best,
                "best_info": self.best_info}  # fmt: skip

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.beta, self.full, self.full_all = float(state["beta"]), state["full"], state.get("full_all")
            self.trace, self.best, self.best_info = list(state["trace"]), state["best"], state["best_info"]


def describe(result: Any) -> str:
    """One line on a ``--keep`` mask (:class:`maskprobe.learning.training.MaskResult`): target met or not, the metric kept,
    the density, the step and beta of the mask kept, and beta's range."""
    c = result.controller
    metric = result.task.metric
    kept = f"{100 * c['ratio']:.1f} % of the unmasked {metric}" if "ratio" in c else f"the {metric}"
    where = f"the mask of step {c['kept_step']} (beta {c['kept_beta']:.3g})" if c.get("kept_step") else "the final mask"
    return (
        f"--keep {c['keep']:g} {'met' if c.get('met') else 'NOT met'}: {kept} kept at density "
        f"{100 * result.density()['total']:.1f} %, {where}; beta ranged {c['beta_min']:.3g}-{c['beta_max']:.3g}"
    )
