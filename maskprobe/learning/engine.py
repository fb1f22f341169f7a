"""The fused engine of the training loop: one process, or data-parallel ranks that each hold the whole model.

:func:`maskprobe.learning.training.run` owns the loop; an engine owns the logits and how one step's chunks run. This one
keeps the logits, Adam's moments and the gate in :class:`maskprobe.learning.maskstep.MaskLogits` (flat buffers, fused
kernels, hash noise) and runs each chunk through ``torch.func.functional_call`` with that sample's gated weights.
Under torchrun every rank runs its share of the K samples and the gradient is summed across ranks inside
:meth:`MaskLogits.update` (the ``reduce`` hook), before the clip; ``--shard`` uses
:class:`maskprobe.learning.sharded.ShardedEngine` instead, through the same loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..devices import module_on
from ..measure.evaluation import evaluate_task
from . import distributed
from .batching import rebuild, to_device
from .gates import binarize
from .masked import MaskedModel, frozen, masked_weights
from .maskstep import NOISE, MaskLogits
from .selection import select_parameters


class FusedEngine:
    """The mask state of one task on ``module`` (see the module docstring).

    Args:
        module: the frozen network; used in place when it is on ``config.device``, else a copy is moved there
            (the caller's module is never moved).
        config: the run's settings (init, lr, tau, seed, backend, selection, device).
    """

    def __init__(self, module: nn.Module, config: TrainConfig):
        self.device = torch.device(config.device)
        self.module = module_on(module, self.device)  # a copy when elsewhere (TorchScript too: devices.module_on)
        self.names = select_parameters(self.module, config.selection)
        params = dict(self.module.named_parameters())
        self.fixed = fixed_masks(self.module, self.names, config)  # held as given, never trained
        if len(self.fixed) == len(self.names):
            from ..errors import BadInputError

            raise BadInputError("--fix holds every masked tensor fixed: nothing is left to train")
        self.mask = MaskLogits(
            {n: params[n].detach() for n in self.names if n not in self.fixed},
            init=config.init, lr=config.lr, tau=config.tau, seed=config.seed, backend=config.backend,
            state_dtype=torch.bfloat16 if config.adam_state == "bf16" else torch.float32,
        )  # fmt: skip
        self._fixed_weights = masked_weights(self.module, self.fixed)
        self._logits = self.mask.logits()
        self._grads: list[dict[str, Tensor | None]] = []
        self.seed = config.seed
        self.batched_asked = self.batched = bool(config.batched_samples)
        self.fallback: str | None = None  # why vmap gave way to the loop, when it did
        self.together: str | None = None  # "together" when trained with other masks (together.py), or why alone
        # the compile backend in one process keeps loss, norm and logit sum on the device: backward() and
        # logit_sum() then return 0-d tensors, update() never reads back, failure() says what went wrong (training.run)
        self.lazy = self.mask.fused and not distributed.current().distributed
        self._total: Tensor | None = None

    def frozen(self) -> Any:
        return frozen(self.module)

    def backward(self, step: int, chunks: Sequence[Any], share: range, k: int, loss_of: Callable[[Any, Any], Tensor]) -> float:
        """Run this rank's samples (global indices ``share``) on their chunks; returns their share of the mean loss.

        With ``config.batched_samples`` the samples run as one ``torch.func.vmap`` over stacked gated weights and
        stacked chunks when the chunks have equal shapes; the first failure (an op or a task loss that vmap cannot
        batch) switches this engine to the loop for the rest of the run, and the step is rerun by the loop."""
        self.mask.sample_offset = share.start
        if self.batched and len(share) > 1:
            stacked = stack_chunks([chunks[j] for j in share])
            if stacked is not None:
                try:
                    return self._backward_vmap(step, stacked, len(share), k, loss_of)
                except Exception as exc:  # noqa: BLE001 - the loop below reruns the step and raises real errors
                    self.batched = False
                    self.fallback = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        total = torch.zeros((), device=self.device)
        samples = []
        for i, j in enumerate(share):
            gated = self.mask.sample(step, i)
            samples.append(gated)
            total = total + loss_of(MaskedModel(self.module, {**self._fixed_weights, **gated}), chunks[j]) / k
        self._grads = _sample_grads(total, samples)
        return self._loss(total)

    def _loss(self, total: Tensor) -> float | Tensor:
        if self.lazy:
            self._total = total.detach().double()
            return self._total
        return float(total.detach())

    def _backward_vmap(self, step: int, stacked: tuple[Any, Any], n: int, k: int, loss_of: Callable[[Any, Any], Tensor]) -> float:
        return vmap_backward([self], step, n, [k], stacked, loss_of)[0]

    def accept(self, grads: list[dict[str, Tensor | None]], total: Tensor) -> float | Tensor:
        """Take one step's per-sample gradients of the gated weights and the loss ``total`` computed elsewhere
        (several masks' samples in one vmap: :mod:`maskprobe.learning.together`); returns what :meth:`backward`
        returns."""
        self._grads = grads
        return self._loss(total)

    def update(self, step: int, reg: float, clip: float) -> float | Tensor:
        """Gradient (with the regulariser on rank 0 only, so that the sum over ranks counts it once), the sum over
        ranks, the clip and Adam; returns the global gradient norm (non-finite: nothing changed).

        Lazy (:attr:`lazy`): the norm as a device tensor, the update skipped on the device when this step's loss
        or gradient is non-finite; :meth:`failure` reports it."""
        grads, self._grads = self._grads, []  # consumed here: K gradients of n weights no longer held to the next step
        if self.lazy:
            total = self._total if self._total is not None else torch.zeros((), dtype=torch.float64, device=self.device)
            loss = torch.stack([total + reg * self.mask.logit_sum_value(), total])
            return self.mask.update_lazy(step, grads, reg, clip, loss)
        world = distributed.current()
        reduce = (lambda buf: distributed.reduce_gradient(buf, world)) if world.distributed else None
        return self.mask.update(step, grads, reg if world.is_main else 0.0, clip, reduce=reduce)

    def logit_sum(self) -> float | Tensor:
        return self.mask.logit_sum_value() if self.lazy else self.mask.logit_sum

    def failure(self) -> dict[str, Any] | None:
        """Lazy engines: the first step whose loss or gradient was non-finite (a host read; see
        :meth:`maskprobe.learning.maskstep.MaskLogits.failure`), or None."""
        return self.mask.failure() if self.lazy else None

    def finite(self) -> bool:
        return bool(torch.isfinite(self.mask.flat_logits).all())

    def nonfinite_gradient(self) -> str | None:
        return self.mask.nonfinite_gradient()

    def density(self) -> float:
        return self.mask.kept() / self.mask.numel

    def snapshot(self, step: int, history: list[list[float]]) -> Any:
        from .statefile import TrainState

        logits = {n: t.detach().cpu().clone() for n, t in self._logits.items()}
        return TrainState(step, logits, self.mask.state_dict(), seed_bytes(self.seed), list(history))

    def load_state(self, state: Any) -> None:
        self.mask.load_state(state.logits, state.optimizer)

    def masks(self) -> dict[str, Tensor]:
        """The final mask: ``logit > 0`` (bool, on the CPU), with the fixed tensors as given; in model order."""
        trained = {n: binarize(t).cpu() for n, t in self._logits.items()}
        return {n: self.fixed[n].cpu() if n in self.fixed else trained[n] for n in self.names}

    def evaluate(self, task: Any, masks: dict[str, Tensor] | None, batch_size: int, batches: int | None = None) -> dict:
        overrides = masked_weights(self.module, masks) if masks is not None else None
        return evaluate_task(self.module, task, overrides, device=self.device, batch_size=batch_size, batches=batches)

    def info(self) -> dict[str, str]:
        out = {"backend": self.mask.backend, "noise": NOISE}
        if (why := self.mask.fallback()) is not None:
            out["backend"] = f"torch (compile failed: {why})"
        if self.batched_asked:  # recorded only when asked for: the default's metadata stays as it was
            out["samples"] = "vmap" if self.batched else f"loop (vmap failed: {self.fallback})" if self.fallback else "loop"
        if self.together is not None:  # recorded only for --together runs
            out["masks"] = self.together
        return out

    def layers(self) -> list[dict[str, str]]:
        from ..masks.layout import model_layout

        return model_layout(self.module, self.names).to_list()


def fixed_masks(module: nn.Module, names: Sequence[str], config: TrainConfig) -> dict[str, Tensor]:
    """The tensors ``config.fixed`` names (globs, or ``"output"``: the output layer's), read from
    ``config.fixed_from`` (bool, the parameters' shapes); empty without ``fixed_from``.

    Raises:
        BadInputError: nothing matches, or the file lacks a tensor or holds it in another shape.
    """
    if not config.fixed_from:
        return {}
    from fnmatch import fnmatchcase

    from ..errors import BadInputError
    from ..masks.layout import model_layout
    from ..masks.maskfile import load_masks

    roles = model_layout(module, names).roles
    chosen = [n for n in names if any((g == "output" and roles[n] == "output") or fnmatchcase(n, g) for g in config.fixed)]
    if not chosen:
        if "output" in config.fixed and not any(r == "output" for r in roles.values()):
            hint = "no masked tensor has the role 'output'"
        else:
            hint = f"the masked ones: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
        raise BadInputError(f"--fix {','.join(config.fixed)} matches no masked tensor ({hint})")
    source = load_masks(config.fixed_from).masks
    params = dict(module.named_parameters())
    for n in chosen:
        if n not in source:
            raise BadInputError(f"--fix-from {config.fixed_from} has no mask for {n!r}")
        if tuple(source[n].shape) != tuple(params[n].shape):
            raise BadInputError(f"--fix-from {config.fixed_from}: {n!r} has shape {tuple(source[n].shape)}, the model's is "
                                f"{tuple(params[n].shape)}")  # fmt: skip
    return {n: source[n].to(params[n].device) for n in chosen}


def vmap_backward(engines: Sequence[FusedEngine], step: int, n: int, ks: Sequence[int], stacked: tuple[Any, Any],
                  loss_of: Callable[[Any, Any], Tensor]) -> list[float | Tensor]:  # fmt: skip
    """Samples ``0..n-1`` of step ``step`` of every engine (one mask each, on the first engine's module, with its
    fixed weights) as one ``torch.func.vmap`` over their stacked gated weights and the stacked chunks ``stacked``
    (engine-major, as :func:`stack_chunks` gives them), then one backward; each engine takes its samples'
    gradients and its loss (its ``k`` from ``ks``), summed in the loop's order. One engine: ``--batched-samples``;
    several: ``--together`` (:mod:`maskprobe.learning.together`)."""
    data, dims = stacked
    first = engines[0]
    gated = [e.mask.sample_stacked(step, n) for e in engines]  # row i: bitwise the loop's sample i (same kernel and key)
    names = list(gated[0])
    weights = gated[0] if len(gated) == 1 else {m: torch.cat([g[m] for g in gated]) for m in names}
    module, fixed = first.module, first._fixed_weights

    def one(w: dict[str, Tensor], chunk: Any) -> Tensor:
        return loss_of(MaskedModel(module, {**fixed, **w}), chunk)

    with without_fastpath():
        losses = torch.func.vmap(one, in_dims=(0, dims), randomness="error")(weights, to_device(data, first.device))
    totals = []
    for e, k in enumerate(ks):
        total = torch.zeros((), device=first.device)
        for i in range(n):  # the loop's order of additions
            total = total + losses[e * n + i] / k
        totals.append(total)
    leaves = [g[m] for g in gated for m in names]
    grand = sum(totals[1:], totals[0])
    grads = torch.autograd.grad(grand, leaves, allow_unused=True) if grand.requires_grad else (None,) * len(leaves)
    out = []
    for e, engine in enumerate(engines):
        mine = grads[e * len(names) : (e + 1) * len(names)]
        per_sample = [{m: None if g is None else g[i] for m, g in zip(names, mine, strict=True)} for i in range(n)]
        out.append(engine.accept(per_sample, totals[e]))
    return out


def seed_bytes(seed: int) -> Tensor:
    """The seed as 8 bytes (a state file's ``noise_rng``: the noise is a hash of the seed, nothing else)."""
    return torch.tensor(list((seed & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")), dtype=torch.uint8)


def _sample_grads(loss: Tensor, samples: list[dict[str, Tensor]]) -> list[dict[str, Tensor | None]]:
    """``dloss / d(gated weight)`` per sample and name (None where the loss does not use it)."""
    leaves = [t for s in samples for t in s.values()]
    if not loss.requires_grad:
        return [dict.fromkeys(s) for s in samples]
    grads = iter(torch.autograd.grad(loss, leaves, allow_unused=True))
    return [{n: next(grads) for n in s} for s in samples]


@contextlib.contextmanager
def without_fastpath() -> Iterator[None]:
    """PyTorch's fused attention fast path off for the duration (``torch.backends.mha``), restored afterwards.

    ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` in eval mode take the fast path
    (``torch._transformer_encoder_layer_fwd``, ``torch._native_multi_head_attention``) when no argument requires
    grad. Under ``torch.func.vmap`` the gated weights are batched wrappers whose ``requires_grad`` reads False (the
    gradient is taken outside the vmap), so the fast path is chosen, and it has no derivative: the backward fails
    ("derivative for aten::_transformer_encoder_layer_fwd is not implemented"). Off, the modules compute the same
    function with differentiable ops, as they do in the loop."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def stack_chunks(chunks: Sequence[Any]) -> tuple[Any, Any] | None:
    """Equal-shaped chunks (as :func:`maskprobe.learning.batching.split_batch` makes them) as one batch with a leading sample
    dimension, and the ``in_dims`` of ``torch.func.vmap`` for it (0 for stacked tensors, None for what split_batch
    repeats: 0-d tensors and non-tensors, and for integer or bool CPU tensors equal in every chunk, see
    :func:`_same_in_every_chunk`); None when the chunks differ in shape or structure."""
    first = chunks[0]
    if isinstance(first, Tensor):
        if not all(isinstance(c, Tensor) for c in chunks):
            return None
        if first.dim() == 0:
            return (first, None) if all(c is first for c in chunks) else None
        if any(c.shape != first.shape or c.dtype != first.dtype or c.device != first.device for c in chunks):
            return None
        if _same_in_every_chunk(chunks):
            return first, None
        return torch.stack(list(chunks)), 0
    if isinstance(first, dict):
        if any(not isinstance(c, dict) or c.keys() != first.keys() for c in chunks):
            return None
        parts = {key: stack_chunks([c[key] for c in chunks]) for key in first}
        if any(v is None for v in parts.values()):
            return None
        return {key: v[0] for key, v in parts.items()}, {key: v[1] for key, v in parts.items()}
    if isinstance(first, list | tuple):
        if any(type(c) is not type(first) or len(c) != len(first) for c in chunks):
            return None
        items = [stack_chunks([c[i] for c in chunks]) for i in range(len(first))]
        if any(v is None for v in items):
            return None
        return rebuild(first, [v[0] for v in items]), rebuild(first, [v[1] for v in items])
    return (first, None) if all(c is first for c in chunks) else None


def _same_in_every_chunk(chunks: Sequence[Tensor]) -> bool:
    """Whether integer or bool CPU chunks are all equal: vmap then gets one unbatched copy (the same inputs).

    Why: code that branches on a tensor's values cannot run on a batched one ("data-dependent control flow"), and
    Hugging Face attention does so on the attention mask (``padding_mask.all()``: skip the mask when nothing is
    padded). An all-ones mask is the same in every chunk, so it goes in unbatched and the branch is taken as in
    the loop. Float tensors (activations, images) are never compared, nor tensors on an accelerator (the
    comparison would wait for the device); chunks that differ (padding) stay batched, and such a model falls
    back to the loop."""
    first = chunks[0]
    if first.is_floating_point() or first.is_complex() or first.device.type != "cpu":
        return False
    return all(torch.equal(c, first) for c in chunks[1:])
