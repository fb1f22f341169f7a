"""The mask step's state and arithmetic: flat logits, Adam state, K gated samples, fused update.

:class:`MaskLogits` holds the logits of every masked tensor in one flat float32 buffer (the per-tensor
logits are views of it), a second buffer that holds ``p = sigmoid(logits)`` during the forward/backward
pass and the gradient during the update, and Adam's two moments: **16 bytes per masked weight**, the floor of
fp32 Adam. Per step:

1. :meth:`MaskLogits.sample` (once per sample k): ``w * m_k`` for every tensor, written into a reusable
   buffer and handed out as a leaf that requires grad; the noise is a counter-based hash of
   (seed, step, k, tensor, element), so nothing is stored for backward and a resumed run draws the same noise;
2. the caller runs the task on each sample and gets ``dL/d(w*m_k)`` from autograd;
3. :meth:`MaskLogits.update`: one fused pass per tensor turns all K of them into ``dL/dlogits`` (the noise
   recomputed, straight-through ``w * s(1-s)/tau``, plus the regulariser's ``beta/B``) and the squared norm;
   under torchrun a hook sums the gradient over ranks; one fused pass applies the norm clip and Adam.

Backends (``backend=``): ``"numba"`` (CPU kernels of :mod:`maskprobe.kernels`), ``"torch"`` (the same
formulas as tensor ops; any device), ``"auto"`` (numba for float32 weights on the CPU when installed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import kernels
from .config import TrainConfig
from .errors import BadInputError

DEFAULTS = TrainConfig()  # the paper's defaults live on TrainConfig, once

NOISE = "fmix32-hash/1"  # recorded in the metadata: which noise generator drew the samples
BETAS = (0.9, 0.999)
EPS = 1e-8


def resolve_backend(name: str, device: torch.device, dtypes: Sequence[torch.dtype]) -> str:
    """``auto`` -> ``numba`` on the CPU with float32 weights when numba is installed, else ``torch``."""
    if name == "auto":
        ok = device.type == "cpu" and kernels.numba_available() and all(d == torch.float32 for d in dtypes)
        return "numba" if ok else "torch"
    if name == "numba":
        if not kernels.numba_available():
            raise BadInputError("--backend numba needs numba: pip install 'maskprobe[fast]'")
        if device.type != "cpu" or any(d != torch.float32 for d in dtypes):
            raise BadInputError("--backend numba runs on the CPU with float32 weights only; use --backend torch")
        return name
    if name == "torch":
        return name
    raise BadInputError(f"unknown backend {name!r}; choose auto, numba or torch")


class MaskLogits:
    """Logits, Adam state and the fused mask step for a set of frozen weight tensors.

    Args:
        weights: name -> frozen weight (any shape; all on one device).
        init: initial logit (default 2.0, keep probability 0.881).
        lr: Adam learning rate (default 1e-2); betas (0.9, 0.999), eps 1e-8 as torch.optim.Adam.
        tau: Gumbel-sigmoid temperature (default 1.0); changes the gradient only.
        seed: noise seed; sample k of step t is a pure function of (seed, t, k).
        backend: ``"auto"``, ``"numba"`` or ``"torch"`` (see the module docstring).
    """

    def __init__(
        self,
        weights: Mapping[str, Tensor],
        *,
        init: float = DEFAULTS.init,
        lr: float = DEFAULTS.lr,
        tau: float = DEFAULTS.tau,
        seed: int = 0,
        backend: str = "auto",
    ):
        if not weights:
            raise BadInputError("no parameters to mask")
        self.names = list(weights)
        first = next(iter(weights.values()))
        self.device = first.device
        self.backend = resolve_backend(backend, self.device, [w.dtype for w in weights.values()])
        # flat, contiguous views of the weights: kernels index elements 0..n-1 of each tensor
        self._w = [weights[n].detach().contiguous().reshape(-1) for n in self.names]
        self._shapes = [tuple(weights[n].shape) for n in self.names]
        sizes = [w.numel() for w in self._w]
        self._offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        self.numel = self._offsets[-1]
        self.lr, self.tau, self.seed = float(lr), float(tau), int(seed)
        f32 = dict(dtype=torch.float32, device=self.device)
        self.flat_logits = torch.full((self.numel,), float(init), **f32)
        self._buf = torch.sigmoid(self.flat_logits)  # p during forward/backward, the gradient in update()
        self.exp_avg = torch.zeros(self.numel, **f32)
        self.exp_avg_sq = torch.zeros(self.numel, **f32)
        self.adam_step = 0
        self.logit_sum = float(self.flat_logits.sum())
        self._gated: list[list[Tensor]] = []  # reusable output buffers, one set per sample index
        self._stacks: list[Tensor] | None = None  # (K, n) buffers of sample_stacked; _gated then holds their rows
        self.sample_offset = 0  # global index of local sample 0 (data-parallel runs)
        self._nonfinite: str | None = None

    # -- views ------------------------------------------------------------------------------------------

    def _piece(self, flat: Tensor, j: int) -> Tensor:
        return flat[self._offsets[j] : self._offsets[j + 1]]

    def logits(self) -> dict[str, Tensor]:
        """name -> logits (views of the flat buffer, the parameter's shape)."""
        return {
            n: self._piece(self.flat_logits, j).view(s) for j, (n, s) in enumerate(zip(self.names, self._shapes, strict=True))
        }

    def state_dict(self) -> dict[str, Any]:
        """Adam's state by tensor name (CPU copies), enough to continue bitwise."""
        state = {}
        for j, (n, s) in enumerate(zip(self.names, self._shapes, strict=True)):
            m, v = (self._piece(t, j).view(s).cpu().clone() for t in (self.exp_avg, self.exp_avg_sq))
            state[n] = {"exp_avg": m, "exp_avg_sq": v}
        return {"format": "maskprobe.adam/1", "step": self.adam_step, "state": state}

    def load_state(self, logits: Mapping[str, Tensor], optimizer: Mapping[str, Any]) -> None:
        """Restore logits and Adam state saved by :meth:`logits` / :meth:`state_dict`."""
        if not isinstance(optimizer, Mapping) or optimizer.get("format") != "maskprobe.adam/1":
            raise BadInputError("cannot resume: the state file was written by another maskprobe version")
        for j, n in enumerate(self.names):
            self._piece(self.flat_logits, j).copy_(logits[n].reshape(-1))
            self._piece(self.exp_avg, j).copy_(optimizer["state"][n]["exp_avg"].reshape(-1))
            self._piece(self.exp_avg_sq, j).copy_(optimizer["state"][n]["exp_avg_sq"].reshape(-1))
        self.adam_step = int(optimizer["step"])
        torch.sigmoid(self.flat_logits, out=self._buf)
        self.logit_sum = float(self.flat_logits.sum())

    def memory_bytes(self, samples: int) -> dict[str, int]:
        """Bytes this object holds: ``state`` (logits, p/grad, 2 Adam moments) and ``gated`` (K samples)."""
        state = 4 * self.flat_logits.numel() * 4
        wbytes = sum(w.numel() * w.element_size() for w in self._w)
        return {"state": state, "gated": samples * wbytes}

    # -- the step -------------------------------------------------------------------------------------

    def key(self, step: int, sample: int, j: int) -> tuple[int, int]:
        # sample_offset: under torchrun rank r runs global samples offset.. (distributed.py), same noise as one process
        return kernels.noise_key(self.seed, step, sample + self.sample_offset, j)

    def sample(self, step: int, k: int) -> dict[str, Tensor]:
        """Sample ``k`` of step ``step``: name -> ``w * m`` (a leaf requiring grad, the weight's shape).

        The returned tensors live in buffers reused by the next call with the same ``k``.
        """
        while len(self._gated) <= k:
            self._gated.append([torch.empty_like(w) for w in self._w])
        out = {}
        for j, name in enumerate(self.names):
            out[name] = self._draw(step, k, j).view(self._shapes[j]).detach().requires_grad_(True)
        return out

    def _draw(self, step: int, k: int, j: int) -> Tensor:
        """Gate tensor ``j`` for sample ``k`` into its buffer ``self._gated[k][j]`` (flat) and return it."""
        fwd = kernels.gate_forward_numba if self.backend == "numba" else kernels.gate_forward_torch
        buf = self._gated[k][j]
        fwd(self._w[j], self._piece(self._buf, j), self.key(step, k, j), buf)
        return buf

    def sample_stacked(self, step: int, count: int) -> dict[str, Tensor]:
        """Samples ``0..count-1`` of step ``step`` at once: name -> ``(count, *shape)`` leaf requiring grad whose row
        ``k`` is bitwise :meth:`sample` ``(step, k)`` (the same kernel, key and buffer), for ``torch.func.vmap``.

        The stacked buffers are allocated once; afterwards :meth:`sample` writes into their rows (no second copy).
        """
        stacks = self._stacks
        if stacks is None or stacks[0].shape[0] < count:
            self._stacks = stacks = [torch.empty((count, w.numel()), dtype=w.dtype, device=w.device) for w in self._w]
            self._gated = [[s[k] for s in stacks] for k in range(count)]
        out = {}
        for j, name in enumerate(self.names):
            for k in range(count):
                self._draw(step, k, j)
            out[name] = stacks[j][:count].view(count, *self._shapes[j]).detach().requires_grad_(True)
        return out

    def gradient(self, step: int, grads: Sequence[Mapping[str, Tensor | None]], reg: float) -> float:
        """Write ``dL/dlogits`` into the work buffer; returns its norm.

        Args:
            step: the step the samples were drawn for.
            grads: per sample k, name -> ``dL/d(w*m_k)`` (None or missing: the sample did not use it).
            reg: the regulariser's gradient, ``beta / B``, added to every logit.
        """
        bwd = kernels.gate_backward_numba if self.backend == "numba" else kernels.gate_backward_torch
        total = 0.0
        for j, (name, w) in enumerate(zip(self.names, self._w, strict=True)):
            gs = [g.get(name) for g in grads]
            gs = [None if g is None else g.reshape(-1) for g in gs]
            keys = [self.key(step, k, j) for k in range(len(grads))]
            piece = self._piece(self._buf, j)
            total += bwd(w, piece, self._piece(self.flat_logits, j), gs, keys, self.tau, float(reg), piece)
        return math.sqrt(total)

    def nonfinite_gradient(self) -> str | None:
        """After an :meth:`update` that met a non-finite gradient: the first tensor whose logit gradient held
        NaN/inf (None when the last update was finite)."""
        return self._nonfinite

    def _find_nonfinite(self) -> str | None:
        for j, name in enumerate(self.names):
            if not bool(torch.isfinite(self._piece(self._buf, j)).all()):
                return name
        return None

    def adam(self, scale: float = 1.0) -> None:
        """Adam on ``gradient * scale`` (the clip factor); the work buffer holds ``p`` again afterwards."""
        self.adam_step += 1
        fn = kernels.adam_numba if self.backend == "numba" else kernels.adam_torch
        self.logit_sum = fn(self.flat_logits, self._buf, self.exp_avg, self.exp_avg_sq, lr=self.lr, b1=BETAS[0],
                            b2=BETAS[1], eps=EPS, t=self.adam_step, scale=scale)  # fmt: skip

    def update(
        self,
        step: int,
        grads: Sequence[Mapping[str, Tensor | None]],
        reg: float,
        clip: float,
        reduce: Callable[[Tensor], float] | None = None,
    ) -> float:
        """The whole update of one step: :meth:`gradient`, then ``reduce`` (under torchrun: sum the flat gradient
        over ranks in place and return the global norm), the norm clip (as ``clip_grad_norm_``: factor
        ``clip / (norm + 1e-6)`` when below 1), then :meth:`adam`.

        Returns the gradient norm before clipping; a non-finite norm changes nothing (the caller decides).
        """
        norm = self.gradient(step, grads, reg)
        if reduce is not None:
            norm = reduce(self._buf)
        self._nonfinite = None if math.isfinite(norm) else self._find_nonfinite()
        if not math.isfinite(norm):
            torch.sigmoid(self.flat_logits, out=self._buf)  # restore p; the logits are untouched
            return norm
        self.adam(clip_factor(norm, clip))
        return norm


def clip_factor(norm: float, clip: float) -> float:
    """What ``torch.nn.utils.clip_grad_norm_`` multiplies the gradient by: ``min(1, clip / (norm + 1e-6))``."""
    return min(1.0, clip / (norm + 1e-6))
