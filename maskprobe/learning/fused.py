"""The mask step as fused kernels through ``torch.compile``: the ``compile`` backend (``auto`` on CUDA).

The same arithmetic as :mod:`maskprobe.learning.kernels` (the counter-hash noise, the hard gate, the straight-through
gradient, Adam), written once in plain torch ops as three functions over *all* masked tensors of a step:

* :func:`gate_forward` (once per sample): hash noise + hard gate + ``w * m`` for every tensor;
* :func:`gate_backward` (once per step): the straight-through gradient of all K samples plus the regulariser,
  written into the work buffer, and each tensor's sum of squares;
* :func:`adam` (once per step): norm, clip factor, Adam, the logit sum and the kept count, all skipped once a
  non-finite loss or gradient was met (a sticky flag on the device records the step, so the state at the start
  of the failing step survives until the loop reads it).

``torch.compile`` (inductor) turns each into fused Triton kernels on CUDA (one pass per tensor instead of a
dozen separate hash ops) and into C++ through the system compiler on the CPU; nothing is copied to the host, so
the step never waits for the device. The CPU build is how CI tests this file against the torch reference
(tests/test_fused_gate.py). Why ``torch.compile`` and not a hand-written Triton kernel: the same source runs
(and is tested) on the CPU without a triton install, and the noise stays the exact integer formula of
:func:`maskprobe.learning.kernels.uniform_torch` (products split so that no int64 product overflows).

Compilation is lazy (first call) and guarded: :class:`Fused` runs the same functions eagerly when
``torch.compile`` fails, and says why (:attr:`Fused.fallback`; the engine records it in the mask's metadata).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .kernels import _C1, _C2, _GRID, MASK32

# the sticky failure record: [failed, step, adam t, tensor index, kind (1 loss, 2 gradient), loss, task loss]
FAIL_FIELDS = 7


def _mul32(h: Tensor, c: int) -> Tensor:
    """``(h * c) mod 2^32`` for ``0 <= h, c < 2^32`` with no int64 product above 2^48 (no signed overflow, which
    C++ leaves undefined), bitwise the low 32 bits of the reference's wrapped product."""
    hi, lo = c >> 16, c & 0xFFFF
    return ((((h * hi) & 0xFFFF) << 16) + h * lo) & MASK32


def _fmix32(h: Tensor) -> Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, _C1)
    h = h ^ (h >> 13)
    h = _mul32(h, _C2)
    return h ^ (h >> 16)


def uniform(n: int, k1: Tensor, k2: Tensor, device: torch.device) -> Tensor:
    """:func:`maskprobe.learning.kernels.uniform_torch` with the key as two 0-d int64 tensors (so that a new key is not a
    new compilation)."""
    i = torch.arange(n, dtype=torch.int64, device=device) & MASK32
    h = _fmix32(_fmix32(i ^ k1) ^ k2)
    return ((h >> 9).to(torch.float32) + 0.5) * _GRID


def gate_forward(ws: Sequence[Tensor], p: Tensor, offsets: Sequence[int], keys: Tensor, outs: Sequence[Tensor]) -> None:
    """``outs[j] = ws[j]`` where ``u > 1 - p`` else 0, for every tensor ``j`` (flat); ``keys``: ``(T, 2)`` int64."""
    for j, (w, out) in enumerate(zip(ws, outs, strict=True)):
        n = w.numel()
        u = uniform(n, keys[j, 0], keys[j, 1], w.device)
        out.copy_(torch.where(u > (1.0 - p[offsets[j] : offsets[j] + n]), w, torch.zeros((), dtype=w.dtype, device=w.device)))


def _soft(p: Tensor, logits: Tensor, u: Tensor, tau: float) -> Tensor:
    if tau == 1.0:
        a = p * u
        return a / (a + (1.0 - p) * (1.0 - u))
    return torch.sigmoid((logits + (torch.log(u) - torch.log1p(-u))) / tau)


def gate_backward(
    ws: Sequence[Tensor],
    p: Tensor,
    logits: Tensor,
    offsets: Sequence[int],
    grads: Sequence[Sequence[Tensor | None]],
    keys: Tensor,
    reg: Tensor,
    tau: float,
) -> tuple[Tensor, Tensor]:
    """The straight-through gradient of every tensor: ``sum_k grads[j][k] * w * s_k (1 - s_k) / tau + reg``.

    Args:
        grads: per tensor ``j``, per sample ``k``: ``dL/d(w*m_k)`` flat (None: the sample did not use it).
        keys: ``(K, T, 2)`` int64, the noise keys of sample k, tensor j.
        reg: 0-d float32, the regulariser's gradient.

    Returns:
        ``(gradient, sums)``: the flat gradient (a new buffer, the layout of ``p``) and each tensor's sum of
        squares (float64, ``(T,)``).
    """
    outs, sums = [], []
    for j, w in enumerate(ws):
        n = w.numel()
        pj, lj = p[offsets[j] : offsets[j] + n], logits[offsets[j] : offsets[j] + n]
        acc = torch.zeros_like(pj)
        for k, g in enumerate(grads[j]):
            if g is None:
                continue
            s = _soft(pj, lj, uniform(n, keys[k, j, 0], keys[k, j, 1], w.device), tau)
            ds = s * (1.0 - s)
            if tau != 1.0:
                ds = ds / tau
            acc = acc + (g * w) * ds
        out = acc + reg
        outs.append(out)
        sums.append(out.double().square().sum())
    return torch.cat(outs), torch.stack(sums)


def adam(
    logits: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    sums: Tensor,
    scal: Tensor,
    fail: Tensor,
    loss: Tensor,
    *,
    clip: float,
    b1: float,
    b2: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Clip + Adam over the flat logits, in place, unless this or an earlier step failed.

    Args:
        sums: ``(T,)`` float64: each tensor's squared gradient norm (:func:`gate_backward`).
        scal: float64 ``[step_size, sqrt(1 - b2^t), t, step]`` (Adam's bias corrections and this step's numbers).
        fail: float64 ``(FAIL_FIELDS,)``, the sticky failure record (updated in place).
        loss: float64 ``[loss, task loss]`` of this step (a non-finite one fails the step, as a bad gradient does).

    Returns ``(norm, logit sum, kept count)``. The caller then writes ``p = sigmoid(logits)`` with ATen's own
    ``torch.sigmoid`` (inductor's differs in the last bit, and ``p`` decides the masks: this way they are bitwise the
    torch backend's on the same device).
    """
    norm = sums.sum().sqrt()
    loss_ok = torch.isfinite(loss).all()
    ok = torch.isfinite(norm) & loss_ok & (fail[0] == 0)
    factor = torch.clamp(clip / (norm + 1e-6), max=1.0).to(torch.float32)
    g = grad * factor
    m_new = torch.lerp(m.float(), g, 1.0 - b1)  # moments stored in bf16 (--adam-state) are updated in fp32
    v_new = v.float() * b2 + (1.0 - b2) * g * g
    step_size, bc2 = scal[0].to(torch.float32), scal[1].to(torch.float32)
    l_new = logits + (-step_size) * m_new / (v_new.sqrt() / bc2 + eps)
    l_out = torch.where(ok, l_new, logits)
    logits.copy_(l_out)
    m.copy_(torch.where(ok, m_new, m))
    v.copy_(torch.where(ok, v_new, v))
    first = (fail[0] == 0) & ~ok
    bad = ~torch.isfinite(sums)
    tensor = torch.where(bad.any(), torch.argmax(bad.to(torch.int64)), -1).to(torch.float64)
    kind = torch.where(loss_ok, 2.0, 1.0).to(torch.float64)
    record = torch.stack(
        [torch.ones((), dtype=torch.float64, device=fail.device), scal[3], scal[2], tensor, kind, loss[0], loss[1]]
    )
    fail.copy_(torch.where(first, record, fail))
    return norm, l_out.sum(), (l_out > 0).sum()


class Fused:
    """A function compiled on first use, run eagerly when ``torch.compile`` fails (``fallback`` says why)."""

    def __init__(self, fn: Callable[..., Any], compile: bool = True):
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None
        self.fallback: str | None = None if compile else "not compiled"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fallback is None:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self.fn, dynamic=False)
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - compile failures vary by platform; the eager run below is exact
                self.fallback = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return self.fn(*args, **kwargs)


_FUNCTIONS: dict[str, Fused] = {}


def fused(name: str) -> Fused:
    """The process-wide :class:`Fused` wrapper of ``name`` (one compilation cache shared by every engine)."""
    if name not in _FUNCTIONS:
        _FUNCTIONS[name] = Fused({"forward": gate_forward, "backward": gate_backward, "adam": adam}[name])
    return _FUNCTIONS[name]
