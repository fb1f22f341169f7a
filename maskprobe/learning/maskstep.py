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

Backends (``backend=``): ``"numba"`` (CPU kernels of :mod:`maskprobe.learning.kernels`), ``"torch"`` (the same
formulas as tensor ops; any device), ``"compile"`` (:mod:`maskprobe.learning.fused`: the whole step's elementwise work as
three ``torch.compile`` functions, nothing read back to the host; any device, eager when compiling fails),
``"auto"`` (numba for float32 weights on the CPU when installed, compile on CUDA, else torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..config import TrainConfig
from ..errors import BadInputError
from . import kernels

DEFAULTS = TrainConfig()  # the paper's defaults live on TrainConfig, once

NOISE = "fmix32-hash/1"  # recorded in the metadata: which noise generator drew the samples
BETAS = (0.9, 0.999)
EPS = 1e-8


def resolve_backend(name: str, device: torch.device, dtypes: Sequence[torch.dtype], state: torch.dtype = torch.float32) -> str:
    """``auto`` -> ``numba`` on the CPU with float32 weights (and Adam state) when numba is installed, ``compile`` on
    CUDA, else ``torch``. Resolving imports nothing: ``compile`` compiles on the first step (maskprobe/learning/fused.py)."""
    if name == "auto":
        ok = device.type == "cpu" and kernels.numba_available() and all(d == torch.float32 for d in [*dtypes, state])
        return "numba" if ok else "compile" if device.type == "cuda" else "torch"
    if name == "compile":
        return name
    if name == "numba":
        if not kernels.numba_available():
            raise BadInputError("--backend numba needs numba: pip install 'maskprobe[fast]'")
        if device.type != "cpu" or any(d != torch.float32 for d in dtypes):
            raise BadInputError("--backend numba runs on the CPU with float32 weights only; use --backend torch")
        if state != torch.float32:
            raise BadInputError("--backend numba keeps Adam's state in fp32 only; use --backend torch with --adam-state bf16")
        return name
    if name == "torch":
        return name
    raise BadInputError(f"unknown backend {name!r}; choose auto, numba, torch or compile")


class MaskLogits:
    """Logits, Adam state and the fused mask step for a set of frozen weight tensors.

    Args:
        weights: name -> frozen weight (any shape; all on one device).
        init: initial logit (default 2.0, keep probability 0.881).
        lr: Adam learning rate (default 1e-2); betas (0.9, 0.999), eps 1e-8 as torch.optim.Adam.
        tau: Gumbel-sigmoid temperature (default 1.0); changes the gradient only.
        seed: noise seed; sample k of step t is a pure function of (seed, t, k).
        backend: ``"auto"``, ``"numba"``, ``"torch"`` or ``"compile"`` (see the module docstring).
        state_dtype: the dtype of Adam's moments (``torch.bfloat16``: half the memory; the update is computed in
            fp32 and its moments stored rounded).
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
        state_dtype: torch.dtype = torch.float32,
    ):
        if not weights:
            raise BadInputError("no parameters to mask")
        self.names = list(weights)
        first = next(iter(weights.values()))
        self.device = first.device
        self.backend = resolve_backend(backend, self.device, [w.dtype for w in weights.values()], state_dtype)
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
        self.exp_avg = torch.zeros(self.numel, dtype=state_dtype, device=self.device)  # Adam's moments: fp32, or
        self.exp_avg_sq = torch.zeros(self.numel, dtype=state_dtype, device=self.device)  # bf16 (--adam-state)
        self.adam_step = 0
        self._logit_sum: float | Tensor = float(self.flat_logits.sum())
        self._gated: list[list[Tensor]] = []  # reusable output buffers, one set per sample index
        self._stacks: list[Tensor] | None = None  # (K, n) buffers of sample_stacked; _gated then holds their rows
        self.sample_offset = 0  # global index of local sample 0 (data-parallel runs)
        self._nonfinite: str | None = None
        self.fused = self.backend == "compile"  # the fused step: device-side numbers (maskprobe/learning/fused.py)
        if self.fused:
            from .fused import FAIL_FIELDS

            self._fail = torch.zeros(FAIL_FIELDS, dtype=torch.float64, device=self.device)
            self._kept: Tensor | None = None
            self._keys: tuple[tuple[int, int], Tensor] | None = None
            self._sums: Tensor | None = None
            self._logit_sum = self.flat_logits.sum().double()

    @property
    def logit_sum(self) -> float:
        """``sum(logits)`` (the regulariser's sum) after the last update; a host read under the compile backend."""
        return float(self._logit_sum)

    def logit_sum_value(self) -> float | Tensor:
        """:attr:`logit_sum` as held: a float, or under the compile backend a 0-d float64 tensor on the device."""
        return self._logit_sum

    def fallback(self) -> str | None:
        """Why the compile backend ran its functions eagerly (torch.compile failed), or None."""
        if not self.fused:
            return None
        from .fused import fused

        reasons = [f.fallback for f in (fused("forward"), fused("backward"), fused("adam")) if f.fallback]
        return reasons[0] if reasons else None

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
        self._logit_sum = self.flat_logits.sum().double() if self.fused else float(self.flat_logits.sum())
        if self.fused:
            self._kept = None

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

        The returned tensors live in buffers reused by the next call with the same ``k``. After
        :meth:`sample_stacked` the buffers were rows of one ``(K, n)`` tensor, and rows share its autograd version
        counter: drawing sample ``k + 1`` would mark sample ``k``'s gated weights, saved by its forward, as modified
        in place ("modified by an inplace operation" in backward); the loop gets one buffer per sample again.
        """
        if self._stacks is not None:
            self._stacks, self._gated = None, []
        while len(self._gated) <= k:
            self._gated.append([torch.empty_like(w) for w in self._w])
        if self.fused:
            self._draw_all(step, k)
            return {n: self._gated[k][j].view(self._shapes[j]).detach().requires_grad_(True) for j, n in enumerate(self.names)}
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

    def _step_keys(self, step: int, count: int) -> Tensor:
        """The noise keys of samples ``0..count-1`` of ``step``, ``(count, T, 2)`` int64 on the device: one copy per
        step (pinned, asynchronous on CUDA)."""
        if self._keys is None or self._keys[0] != (step, self.sample_offset) or self._keys[1].shape[0] < count:
            count = max(count, len(self._gated))
            host = torch.tensor([[self.key(step, k, j) for j in range(len(self.names))] for k in range(count)], dtype=torch.int64)
            self._keys = ((step, self.sample_offset), self._upload(host))
        return self._keys[1][:count]

    def _upload(self, host: Tensor) -> Tensor:
        """A small host tensor on the device without waiting for it: pinned, asynchronous on CUDA (the caching
        host allocator keeps the pinned block until the copy is done)."""
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)

    def _draw_all(self, step: int, k: int) -> None:
        """Gate every tensor for sample ``k`` into ``self._gated[k]`` in one fused call (compile backend)."""
        from .fused import fused

        fused("forward")(self._w, self._buf, tuple(self._offsets), self._step_keys(step, k + 1)[k], self._gated[k])

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
        if self.fused:
            for k in range(count):
                self._draw_all(step, k)
        for j, name in enumerate(self.names):
            for k in range(count if not self.fused else 0):
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
        if self.fused:
            self._gradient_fused(step, grads, reg)
            return math.sqrt(float(self._sums.sum()))
        bwd = kernels.gate_backward_numba if self.backend == "numba" else kernels.gate_backward_torch
        total = 0.0
        for j, (name, w) in enumerate(zip(self.names, self._w, strict=True)):
            gs = [g.get(name) for g in grads]
            gs = [None if g is None else g.reshape(-1) for g in gs]
            keys = [self.key(step, k, j) for k in range(len(grads))]
            piece = self._piece(self._buf, j)
            total += bwd(w, piece, self._piece(self.flat_logits, j), gs, keys, self.tau, float(reg), piece)
        return math.sqrt(total)

    def _gradient_fused(self, step: int, grads: Sequence[Mapping[str, Tensor | None]], reg: float) -> None:
        from .fused import fused

        per_tensor = [[None if (g := s.get(name)) is None else g.reshape(-1) for s in grads] for name in self.names]
        keys = self._step_keys(step, len(grads))
        reg_t = self._upload(torch.tensor(float(reg), dtype=torch.float32))
        self._buf, self._sums = fused("backward")(
            self._w, self._buf, self.flat_logits, tuple(self._offsets), per_tensor, keys, reg_t, self.tau
        )

    def _adam_fused(self, step: int, clip: float, loss: Tensor | None) -> Tensor:
        """Clip + Adam on the device (compile backend), skipped when this step's loss or gradient, or an earlier
        one, was non-finite; returns the norm (a 0-d device tensor)."""
        from .fused import fused

        self.adam_step += 1
        t = self.adam_step
        scal = torch.tensor([self.lr / (1.0 - BETAS[0] ** t), math.sqrt(1.0 - BETAS[1] ** t), float(t), float(step)],
                            dtype=torch.float64)  # fmt: skip
        # float32 like the torch backend's scalars; then carried as float64 (exact)
        scal[:2] = scal[:2].float().double()
        if loss is None:
            loss = torch.zeros(2, dtype=torch.float64, device=self.device)
        scal = self._upload(scal)
        norm, lsum, kept = fused("adam")(self.flat_logits, self._buf, self.exp_avg, self.exp_avg_sq, self._sums, scal,
                                         self._fail, loss.to(self.device), clip=float(clip), b1=BETAS[0], b2=BETAS[1],
                                         eps=EPS)  # fmt: skip
        torch.sigmoid(self.flat_logits, out=self._buf)  # ATen's sigmoid: p (and so the masks) as the torch backend's
        self._logit_sum, self._kept = lsum.double(), kept
        return norm

    def update_lazy(
        self, step: int, grads: Sequence[Mapping[str, Tensor | None]], reg: float, clip: float, loss: Tensor
    ) -> Tensor:
        """:meth:`update` with nothing read back (compile backend, one process): the norm as a device tensor.

        ``loss`` is ``[loss, task loss]`` (a float64 device tensor). A non-finite loss or gradient skips this
        update and every later one and is recorded on the device; :meth:`failure` reads it."""
        self._gradient_fused(step, grads, reg)
        return self._adam_fused(step, clip, loss)

    def failure(self) -> dict[str, Any] | None:
        """After :meth:`update_lazy`: the first failing step (a host read), or None. The logits and Adam state are
        those at the start of that step (every later update was skipped), and :attr:`adam_step` is set back."""
        if not self.fused:
            return None
        rec = self._fail.tolist()
        if rec[0] == 0:
            return None
        self.adam_step = int(rec[2]) - 1
        tensor = self.names[int(rec[3])] if rec[3] >= 0 else None
        return {"step": int(rec[1]), "kind": "loss" if rec[4] == 1 else "gradient", "loss": rec[5], "task_loss": rec[6],
                "tensor": tensor}  # fmt: skip

    def kept(self) -> int:
        """How many logits are > 0 (the compile backend counts them during the update, on the device)."""
        if self.fused and self._kept is not None:
            return int(self._kept)
        return int((self.flat_logits > 0).sum())

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
        """Adam on ``gradient * scale`` (the clip factor); the work buffer holds ``p`` again afterwards.

        The compile backend's :meth:`update` runs its own fused clip + Adam; this method is the torch formula."""
        self.adam_step += 1
        fn = kernels.adam_numba if self.backend == "numba" else kernels.adam_torch
        self._logit_sum = fn(self.flat_logits, self._buf, self.exp_avg, self.exp_avg_sq, lr=self.lr, b1=BETAS[0],
                            b2=BETAS[1], eps=EPS, t=self.adam_step, scale=scale)  # fmt: skip
        if self.fused:
            self._logit_sum, self._kept = torch.tensor(self._logit_sum, dtype=torch.float64, device=self.device), None

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
        if self.fused:
            return self._update_fused(step, grads, reg, clip, reduce)
        norm = self.gradient(step, grads, reg)
        if reduce is not None:
            norm = reduce(self._buf)
        self._nonfinite = None if math.isfinite(norm) else self._find_nonfinite()
        if not math.isfinite(norm):
            torch.sigmoid(self.flat_logits, out=self._buf)  # restore p; the logits are untouched
            return norm
        self.adam(clip_factor(norm, clip))
        return norm

    def _update_fused(self, step: int, grads: Sequence[Mapping[str, Tensor | None]], reg: float, clip: float,
                      reduce: Callable[[Tensor], float] | None) -> float:  # fmt: skip
        """:meth:`update` for the compile backend, reading the norm back (torchrun, benchmarks, the host API)."""
        self._gradient_fused(step, grads, reg)
        if reduce is not None:
            norm = reduce(self._buf)
            if not math.isfinite(norm):
                self._nonfinite = self._find_nonfinite()
                torch.sigmoid(self.flat_logits, out=self._buf)
                return norm
            self._sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
            self._sums[0] = norm * norm
        norm = float(self._adam_fused(step, clip, None))
        fail = self.failure()
        self._nonfinite = None if fail is None else fail["tensor"]
        if fail is not None:
            self._fail.zero_()  # the host API raises nothing itself: this object stays usable
        return norm


def clip_factor(norm: float, clip: float) -> float:
    """What ``torch.nn.utils.clip_grad_norm_`` multiplies the gradient by: ``min(1, clip / (norm + 1e-6))``."""
    return min(1.0, clip / (norm + 1e-6))
