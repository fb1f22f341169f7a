"""Run a module with some parameters replaced, without editing it (``torch.func.functional_call``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


class MaskedModel:
    """A callable that runs ``module`` with ``overrides`` (name -> tensor) in place of its parameters.

    This is the ``model`` a task's ``loss`` and ``evaluate`` receive. ``module`` is exposed for tasks that
    need its attributes (e.g. a config); calling it directly would bypass the masks. :meth:`unmasked` runs the
    network without the masks, for targets such as "keep the unmasked model's outputs".
    """

    def __init__(self, module: nn.Module, overrides: Mapping[str, Tensor]):
        self.module = module
        self.overrides = dict(overrides)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.overrides:
            return self.module(*args, **kwargs)
        if isinstance(self.module, torch.jit.ScriptModule):
            with _script_overrides(self.module, self.overrides):
                return self.module(*args, **kwargs)
        return functional_call(self.module, self.overrides, args, kwargs, tie_weights=True, strict=False)

    def unmasked(self, *args: Any, **kwargs: Any) -> Any:
        """The same call on the frozen network without any mask, without gradients: the targets of a task that
        keeps the model's own outputs (same weights, no second copy of the model)."""
        with torch.no_grad():
            return self.module(*args, **kwargs)


@contextlib.contextmanager
def _script_overrides(module: torch.jit.ScriptModule, overrides: Mapping[str, Tensor]) -> Iterator[None]:
    """Swap parameters of a TorchScript module in memory for the call, and put the originals back.

    ``functional_call`` refuses ScriptModules (the stateless API cannot reparametrise compiled code), but a
    compiled module reads its parameters as attributes of the C++ object at each call, so setting them there
    (``_c.setattr``) runs the scripted code on the gated tensors, with gradients reaching the mask logits.
    Only the loaded copy changes; the archive on disk is never written.
    """
    saved: list[tuple[Any, str, Tensor]] = []
    try:
        for name, value in overrides.items():
            owner: Any = module
            *path, leaf = name.split(".")
            for part in path:
                owner = getattr(owner, part)
            saved.append((owner, leaf, getattr(owner, leaf)))
            owner._c.setattr(leaf, value)
        yield
    finally:
        for owner, leaf, original in reversed(saved):
            owner._c.setattr(leaf, original)


def masked_weights(module: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{name: weight * mask}`` for each mask (bool, the parameter's shape), on the weight's device."""
    params = dict(module.named_parameters())
    out = {}
    for name, m in masks.items():
        w = params[name].detach()
        out[name] = torch.where(m.to(w.device), w, torch.zeros((), dtype=w.dtype, device=w.device))
    return out


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """The frozen model's mode (:func:`run_mode`) and ``requires_grad=False`` for the duration; both restored."""
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        with run_mode(module):
            yield module
    finally:
        for n, p in module.named_parameters():
            p.requires_grad_(flags.get(n, False))


RECURRENT_NAMES = frozenset({"LSTM", "GRU", "RNN"})  # a compiled nn.RNNBase is only known by its original name


@contextlib.contextmanager
def run_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, except that recurrent modules (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) run in
    train mode with their dropout set to 0; every module's mode and dropout are restored afterwards.

    Why: cuDNN computes an RNN's backward only for a forward run in training mode ("cudnn RNN backward can only
    be called in training mode"), and learning a mask needs that backward. ``nn.RNNBase`` differs between the
    two modes only by its inter-layer dropout, so train mode with dropout 0 computes exactly what eval mode
    does, on every device. A TorchScript RNN holds its dropout as a compiled constant: with dropout 0 it gets
    train mode too; with dropout > 0 it stays in eval mode and cuDNN is switched off for the duration (the
    native CUDA kernels have an eval-mode backward), so no dropout is ever switched on by a mode change.
    """
    import torch.backends.cudnn as cudnn

    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    dropouts: list[tuple[nn.Module, float]] = []
    without_cudnn = False
    for m in module.modules():
        if isinstance(m, nn.RNNBase):
            dropouts.append((m, m.dropout))
            m.dropout = 0.0
            m.training = True
        elif isinstance(m, torch.jit.ScriptModule) and getattr(m, "original_name", None) in RECURRENT_NAMES:
            if float(getattr(m, "dropout", 0.0)) == 0.0:
                m.training = True
            else:
                without_cudnn = True
    cudnn_was = cudnn.enabled
    if without_cudnn:
        cudnn.enabled = False
    try:
        yield
    finally:
        cudnn.enabled = cudnn_was
        for m, p in dropouts:
            m.dropout = p
        for m, was in modes:
            m.training = was
