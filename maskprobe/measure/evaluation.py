"""Running a task's own code on the frozen network: its metric under a mask, its loss; what a broken plugin gets.

Every call into a plugin's ``loss`` and ``evaluate`` goes through here, so that a plugin's exception becomes one
:class:`~maskprobe.errors.PluginError` naming the plugin and its file, and a metric outside the task's declared
range is caught before it reaches a table.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from ..config import DEVICE, EVAL_BATCH_SIZE
from ..devices import module_on
from ..errors import PluginError
from ..learning.batching import to_device
from ..learning.masked import MaskedModel, frozen, masked_weights
from ..tasks.contract import Task, describe_task, setup_tasks

EVAL_SEED = 1234  # eval batches are drawn from a fixed seed so that every run scores on the same data


def evaluate_task(
    module: nn.Module,
    task: Task,
    overrides: dict[str, Tensor] | None = None,
    *,
    device: torch.device | str = DEVICE,
    batch_size: int = EVAL_BATCH_SIZE,
    batches: int | None = None,
) -> dict[str, float]:
    """The task's metrics with ``overrides`` (name -> effective weight) applied; eval mode, no grad.

    Args:
        batches: score only the first this many evaluation batches (default: all).

    Raises:
        PluginError: ``evaluate()`` failed or returned something other than a dict of numbers holding the metric.
    """
    gen = torch.Generator().manual_seed(EVAL_SEED)
    model = MaskedModel(module, overrides or {})
    with torch.no_grad(), frozen(module):
        stream = task.batches("eval", batch_size, gen)
        if batches is not None:
            stream = itertools.islice(stream, batches)
        try:
            metrics = task.evaluate(model, (to_device(b, device) for b in stream))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{describe_task(task)}: evaluate() failed: {plugin_failure(exc)}") from exc
    return check_metrics(task, metrics)


def check_metrics(task: Task, metrics: Any) -> dict[str, float]:
    """``evaluate()``'s result as ``{str: float}``, its primary metric inside ``metric_range``."""
    if not isinstance(metrics, dict) or task.metric not in metrics:
        raise PluginError(
            f"{describe_task(task)}: evaluate() must return a dict with key {task.metric!r}, got {str(metrics)[:200]}"
        )
    out = {}
    for k, v in metrics.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise PluginError(f"{describe_task(task)}: metric {k!r} is not a number ({str(v)[:80]})") from None
    value = out[task.metric]
    lo_hi = task.metric_range
    if lo_hi is not None and not math.isnan(value) and not (lo_hi[0] <= value <= lo_hi[1]):
        raise PluginError(
            f"{describe_task(task)}: metric {task.metric}={value} is outside its range {tuple(lo_hi)} (metric_range)"
        )
    return out


def task_loss(task: Task, model: Any, chunk: Any, step: int) -> Any:
    """``task.loss(model, chunk)``; a plugin's exception (e.g. data that does not fit the model) becomes a PluginError."""
    try:
        return task.loss(model, chunk)
    except PluginError:
        raise
    except Exception as exc:
        hint = "" if _is_device_mix(exc) else " (does the task's data fit this model?)"
        raise PluginError(f"{describe_task(task)}: loss() failed at step {step + 1}: {plugin_failure(exc)}{hint}") from exc


def scalar_loss(task: Task, value: Any, device: torch.device | None = None) -> Tensor:
    """``value`` as a 0-d float tensor on ``device``'s type, or a PluginError saying what the contract wants."""
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise PluginError(
            f"{describe_task(task)}: loss() must return a scalar float tensor, got "
            f"{type(value).__name__}{tuple(getattr(value, 'shape', ()))}"
        )
    if device is not None and value.device.type != device.type:
        raise PluginError(
            f"{describe_task(task)}: wrong device: loss() returned a tensor on {value.device}, the batch and model are on "
            f"{device} (a task must make its tensors on the batch's device, e.g. device=x.device)"
        )
    return value.reshape(())


def _is_device_mix(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("expected device" in text or "same device" in text)


def plugin_failure(exc: BaseException) -> str:
    """One line about a plugin's exception; tensors on two devices get the contract's remedy."""
    text = " ".join(str(exc).split())[:300]
    if _is_device_mix(exc):
        return (
            f"wrong device: {text} (a task must make its tensors on the batch's device, "
            "e.g. torch.zeros(n, device=x.device), never a fixed one)"
        )
    return f"{type(exc).__name__}: {text}"


def evaluate_under_mask(
    checkpoint: Any,
    tasks: list[Task],
    mask: str | None = None,
    *,
    invert: bool = False,
    device: torch.device | str = DEVICE,
    allow_mismatch: bool = False,
) -> list[tuple[str, dict[str, float], dict[str, float] | None]]:
    """``maskprobe evaluate``: each task's metrics on ``checkpoint`` (a loaded Checkpoint) unmasked and, with
    ``mask``, with only the mask's weights kept (``invert``: with them removed).

    Returns ``(task name, unmasked metrics, masked metrics or None)`` per task.

    Raises:
        MaskFileError: the mask does not fit the checkpoint (names, shapes, recorded identity).
    """
    from ..masks.maskfile import load_masks, open_masks
    from ..masks.masksets import check_fits

    setup_tasks(tasks, checkpoint)  # the contract: setup() with the checkpoint before any batches()
    module = module_on(checkpoint.model, device)  # a copy when elsewhere: the caller's checkpoint is never moved
    overrides = None
    if mask is not None:
        with open_masks(mask) as reader:
            check_fits(module, checkpoint, [reader], allow_mismatch)
        keep = {n: (~m if invert else m) for n, m in load_masks(mask).masks.items()}
        overrides = masked_weights(module, keep)
    rows = []
    for t in tasks:
        full = evaluate_task(module, t, device=device)
        masked = evaluate_task(module, t, overrides, device=device) if overrides is not None else None
        rows.append((t.name, full, masked))
    return rows
