"""What a run will hold, measured on the live model: the activations autograd keeps for one example, the memory
free on the device, and from them the run's estimate (:func:`maskprobe.learning.memory.estimate`) and its check.

:mod:`maskprobe.learning.memory` is the arithmetic (parts, plans, the flags that fit); this module runs the model
once on a single example to feed it, and is what ``maskprobe train`` calls before the first step and for
``--dry-run``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from .memory import ACT_FACTOR, SAVED_FACTOR, MemoryEstimate, check_fits, estimate


def _dispatched_bytes(run_one: Any) -> int:
    """Bytes of the floating outputs of every aten op ``run_one()`` runs (TorchScript included).

    An upper bound of the leaf-module count (it also counts intermediates such as transposes).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, list | tuple) else (out,):
                if isinstance(o, torch.Tensor) and o.is_floating_point():
                    self.total += o.numel() * o.element_size()
            return out

    with torch.no_grad(), _Count() as count:
        run_one()
    return count.total


def activation_bytes_per_example(module: nn.Module, run_one: Any, examples: int) -> int:
    """Bytes of all leaf modules' outputs when ``run_one()`` runs ``examples`` examples, per example.

    ``run_one`` is called once under ``torch.no_grad()``; forward hooks add up floating tensor outputs.
    """
    total = 0

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        stack = [out]
        while stack:
            o = stack.pop()
            if isinstance(o, torch.Tensor):
                total += o.numel() * o.element_size() if o.is_floating_point() else 0
            elif isinstance(o, list | tuple):
                stack.extend(o)
            elif isinstance(o, dict):
                stack.extend(o.values())

    if isinstance(module, torch.jit.ScriptModule):  # compiled modules take no hooks: count every op's output
        return _dispatched_bytes(run_one) // max(1, examples)
    handles = [m.register_forward_hook(hook) for m in module.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            run_one()
    finally:
        for h in handles:
            h.remove()
    return total // max(1, examples)


def saved_bytes_per_example(module: nn.Module, names: list[str], run_with: Any, examples: int) -> int:
    """Bytes autograd saves for backward when ``run_with(overrides)`` runs ``examples`` examples with ``overrides``
    (the masked weights, as tensors sharing the parameters' storage, requiring gradients, as in training), per
    example. A saved tensor counts its own elements, once per view (a view of a larger batch would otherwise
    count the whole batch's storage per example); the module's own parameters and buffers are not counted.
    """
    from torch.autograd.graph import saved_tensors_hooks

    params = dict(module.named_parameters())
    own = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.device.type != "meta" and t.untyped_storage().data_ptr() not in own:
            key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
            seen[key] = t.numel() * t.element_size()
        return t

    overrides = {n: params[n].detach().requires_grad_() for n in names}
    with torch.enable_grad(), saved_tensors_hooks(pack, lambda t: t):
        run_with(overrides)
    return sum(seen.values()) // max(1, examples)


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory on ``device``: CUDA's free bytes, the CPU's MemAvailable; None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def estimate_run(module: Any, task: Any, config: TrainConfig, names: list[str], masks: int = 1) -> MemoryEstimate:
    """The estimate for this run; ``config.samples`` is what one process runs, ``masks`` how many masks train at
    once (``--together``). Autograd's saved tensors of one example, else the leaf outputs, give the activations."""
    from ..measure.evaluation import task_loss
    from .batching import batch_size_of, split_batch
    from .masked import MaskedModel, frozen

    batch = next(iter(task.batches("train", config.batch_size, torch.Generator().manual_seed(config.seed))))
    one = split_batch(batch, max(1, batch_size_of(batch)))[0]  # a single example: cheap even for a large model

    def run_with(overrides: dict) -> Any:
        return task_loss(task, MaskedModel(module, overrides), one, 0)

    with frozen(module):
        try:  # what autograd keeps, as in training; a model or task where that cannot run: the leaf outputs
            act, factor = saved_bytes_per_example(module, names, run_with, 1), SAVED_FACTOR
        except Exception:  # noqa: BLE001 - only the estimate's precision is at stake; the run reports real failures
            act = 0
        if act <= 0:
            act, factor = activation_bytes_per_example(module, lambda: run_with({}), 1), ACT_FACTOR
    return estimate(module, names, device=config.device, batch_size=config.batch_size, samples=config.samples,
                    act_per_example=act, act_factor=factor, masks=masks,
                    state_bytes=2 if config.adam_state == "bf16" else 4)  # fmt: skip


def check_run(module: Any, task: Any, config: TrainConfig, names: list[str], limit: int | str | None, masks: int = 1) -> None:
    """Refuse before the first step when the estimate for ``masks`` masks at once exceeds ``limit`` (``"auto"``:
    the device's free memory; None: no check, ``--memory-limit off``)."""
    budget = available_bytes(config.device) if limit == "auto" else limit
    if budget is not None:
        check_fits(estimate_run(module, task, config, names, masks), int(budget))
