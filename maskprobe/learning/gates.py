"""The hard Gumbel-sigmoid gate with a straight-through gradient (DESIGN §2).

For a weight tensor ``w`` and its logits ``l`` (same shape), one mask sample is::

    u ~ U(0, 1)                    g = log(u) - log(1 - u)        (logistic noise)
    s = sigmoid((l + g) / tau)     m = 1[s > 0.5] + s - s.detach()

so ``P(m = 1) = sigmoid(l)`` whatever ``tau``; ``tau`` only shapes the gradient ``dm/dl = s (1 - s) / tau``.

:func:`gate` computes ``w * m`` as one autograd node: the forward pass is exactly ``w`` or ``0`` (no
``1 + s - s`` rounding), the backward pass is ``dL/dl = dL/d(w*m) * w * s (1 - s) / tau``, and the only
tensor it keeps for backward is the uniform draw ``u`` (4 bytes per weight per sample). With ``tau = 1``
the soft sample is a rational function of ``p = sigmoid(l)`` and ``u``, ``s = p u / (p u + (1-p)(1-u))``,
so no per-sample transcendental is computed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def logistic(u: Tensor) -> Tensor:
    """Logistic noise ``g = log(u) - log(1 - u)`` from uniform draws."""
    return torch.log(u) - torch.log1p(-u)


def reference_mask(logits: Tensor, u: Tensor, tau: float = 1.0) -> Tensor:
    """The textbook formula, differentiable through autograd; used by the tests as the ground truth.

    Returns ``m`` with ``m.shape == logits.shape``; values are 0/1 up to float rounding.
    """
    s = torch.sigmoid((logits + logistic(u)) / tau)
    hard = (s > 0.5).to(s.dtype)
    return hard + s - s.detach()


def _soft_sample(logits: Tensor, u: Tensor, tau: float) -> Tensor:
    if tau == 1.0:
        p = torch.sigmoid(logits.float())
        a = p * u
        return a / (a + (1.0 - p) * (1.0 - u))
    return torch.sigmoid((logits.float() + logistic(u)) / tau)


class _GatedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, logits: Tensor, u: Tensor, tau: float) -> Tensor:  # type: ignore[override]
        # l + g > 0  <=>  u > 1 - sigmoid(l), computed as the kernels do (bitwise the same samples)
        keep = u > 1.0 - torch.sigmoid(logits.float())
        ctx.save_for_backward(weight, logits, u)
        ctx.tau = tau
        return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        weight, logits, u = ctx.saved_tensors
        s = _soft_sample(logits, u, ctx.tau)
        grad_logits = grad * weight * (s * (1.0 - s) / ctx.tau)
        return None, grad_logits.to(logits.dtype), None, None


def gate(weight: Tensor, logits: Tensor, u: Tensor, tau: float = 1.0) -> Tensor:
    """One sample of the gated weight ``w * m`` (shape of ``weight``), straight-through to ``logits``.

    Args:
        weight: the frozen weight, any shape.
        logits: mask logits, same shape as ``weight``.
        u: uniform draws in (0, 1), same shape (the engines draw them from a counter hash, maskprobe/learning/kernels.py).
        tau: Gumbel-sigmoid temperature (default 1.0, the paper's); changes the gradient only.
    """
    return _GatedWeight.apply(weight, logits, u, float(tau))


def binarize(logits: Tensor) -> Tensor:
    """The final mask: keep a weight iff its logit is > 0 (bool, shape of ``logits``)."""
    return logits > 0
