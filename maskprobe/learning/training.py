"""The mask-training loop (DESIGN §2). Library code: it never prints; progress goes to ``callback``.

Per step: draw a batch of ``B``; split it into ``K = samples`` chunks; run each chunk with its own mask
sample (hard Gumbel-sigmoid, straight-through); loss = ``mean_k task_loss_k + (beta / B) * sum(all logits)``;
Adam on the logits only, gradient-norm clip over the logits. The weights stay frozen and the model in eval
mode. The final mask keeps ``logit > 0``.

One loop (:func:`run`) for every engine: the fused single-process / data-parallel engine
(:class:`maskprobe.learning.engine.FusedEngine`, used by :func:`train_mask`) and the FSDP2 engine of ``--shard``
(:class:`maskprobe.learning.sharded.ShardedEngine`). An engine owns the logits and how a chunk runs with sample k; this
module owns the data, the loss, the regulariser, the agreement between ranks, the numerical checks, the
snapshots, the progress events and the final evaluation.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import REGULARISER, TrainConfig  # REGULARISER re-exported: its path before config.py held it
from ..errors import NumericalError, PluginError
from ..interrupts import held, polled
from ..measure.evaluation import evaluate_task, plugin_failure, scalar_loss, task_loss
from ..tasks.contract import Task, TaskRef, describe_task
from . import distributed
from .batching import batch_size_of, split_batch, to_device
from .results import MaskResult, StepEvent
from .statefile import TrainState  # re-exported: maskprobe.learning.training.TrainState keeps working


def regulariser_grad(beta: float, batch_size: int) -> float:
    """``d/dl`` of the regulariser ``(beta / B) * sum(logits)`` (the paper's convention: B the batch size)."""
    return beta / batch_size


def train_mask(
    module: nn.Module,
    task: Task,
    task_ref: TaskRef,
    config: TrainConfig,
    *,
    callback: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: TrainState | None = None,
    save_every: int = 0,
    on_snapshot: Callable[[TrainState], None] | None = None,
) -> MaskResult:
    """Learn one task's mask on the frozen ``module`` (on ``config.device``; a module elsewhere is copied there,
    the caller's is never moved).

    Args:
        callback: receives a :class:`StepEvent` every ``config.log_every`` steps and at the end.
        should_stop: polled at every step boundary; when it returns True the loop stops and the result
            has ``completed=False`` and no metrics (its ``state`` resumes the run, and the final evaluation runs
            then). With ``should_stop`` given, a KeyboardInterrupt (a second signal, or one during the final
            evaluation: :mod:`maskprobe.interrupts`) ends the run the same way instead of losing the state.
        resume: a :class:`TrainState` from an interrupted run with the same config.
        save_every: call ``on_snapshot(state)`` every this many steps (default 0: never), so that a
            killed run loses at most ``save_every`` steps.
        on_snapshot: receives a :class:`TrainState` (on the CPU) every ``save_every`` steps.

    Raises:
        NumericalError: NaN/inf loss or gradient (checked every step, before the update) or logits;
            ``err.state`` holds the state at the start of the failing step (None if the logits themselves
            went bad, whose last good state is the last snapshot).
        PluginError: the task violates the contract or its ``loss()`` fails (e.g. its data does not fit the model).
    """
    from .engine import FusedEngine

    engine = FusedEngine(module, config)
    if resume is not None:
        engine.load_state(resume)
    return run(engine, task, task_ref, config, callback=callback, should_stop=should_stop, resume=resume,
               save_every=save_every, on_snapshot=on_snapshot)  # fmt: skip


@dataclass
class Backward:
    """One step's backward pass, as the loop asks for it (:func:`steps` yields it; :meth:`run` is what
    :func:`run` does with it; :mod:`maskprobe.learning.together` runs several masks' at once)."""

    engine: Any
    step: int
    chunks: list[Any]
    share: range
    k: int
    loss_of: Callable[[Any, Any], Tensor]
    task: Task
    config: TrainConfig

    def run(self) -> float | Tensor:
        return self.engine.backward(self.step, self.chunks, self.share, self.k, self.loss_of)


def run(engine: Any, task: Task, task_ref: TaskRef, config: TrainConfig, **kwargs: Any) -> MaskResult:
    """The loop every engine shares (see the module docstring); arguments as :func:`train_mask`."""
    return drive(steps(engine, task, task_ref, config, **kwargs))


def drive(loop: Any, backward: Callable[[Backward], Any] = Backward.run) -> MaskResult:
    """Run the loop ``loop`` (a :func:`steps` generator) to its result, each backward by ``backward``; what it
    raises is raised in the loop where the backward was asked for, as if the loop had called it."""
    try:
        request = next(loop)
        while True:
            try:
                done = backward(request)
            except BaseException as exc:  # noqa: BLE001 - the loop handles it where it asked (or re-raises it)
                request = loop.throw(exc)
            else:
                request = loop.send(done)
    except StopIteration as stop:
        return stop.value


def steps(
    engine: Any,
    task: Task,
    task_ref: TaskRef,
    config: TrainConfig,
    *,
    callback: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: TrainState | None = None,
    save_every: int = 0,
    on_snapshot: Callable[[TrainState], None] | None = None,
) -> Any:
    """The loop as a generator: it yields a :class:`Backward` where a step needs its backward pass and is sent
    the result (:func:`drive`); it returns the :class:`MaskResult`."""
    world = distributed.current()
    device = engine.device
    history: list[list[float]] = list(resume.history) if resume is not None else []
    step = resume.step if resume is not None else 0
    batches: Iterator[Any] = iter(task.batches("train", config.batch_size, torch.Generator().manual_seed(config.seed)))
    for _ in range(step):  # same data order on resume: replay the seeded stream
        next(batches)
    eval_every = config.eval_every if config.eval_every is not None else max(1, config.steps // 10)
    last_loss = last_task = float("nan")
    if history:  # resumed: the loss last reported, in case no step is left (the final evaluation was interrupted)
        last_loss = float(history[-1][1])
    metric: float | None = None
    t0 = time.perf_counter()
    completed = True
    ctl = _keep_controller(engine, task, config, resume)  # --keep: beta moves (maskprobe/learning/controller.py); else None

    lazy = getattr(engine, "lazy", False)  # loss and norm stay on the device until a line is due (engine.py)

    def snap(at: int | None = None) -> TrainState:
        return _with_controller(engine.snapshot(step if at is None else at, history), ctl)

    def loss_of(model: Any, chunk: Any) -> Tensor:  # --precision bf16: the forward and the loss only, the loss back in fp32
        with autocast_for(config.precision, device):
            value = task_loss(task, model, to_device(chunk, device), step)
        return scalar_loss(task, value, device).float()

    try:
        with engine.frozen(), polled(should_stop), tf32_for(config.precision):
            while step < config.steps:
                stop = should_stop is not None and should_stop()
                if stop and not world.distributed:
                    completed = False
                    break
                # under torchrun every rank draws the same global batch and runs its share of the K chunks
                # (distributed.py); any failure is held until every rank has reported (agree_step)
                error, local, bsz = None, float("nan"), 1
                try:
                    batch = _next_batch(task, batches, step)
                    bsz = batch_size_of(batch)
                    k = max(1, min(config.samples, bsz))
                    share = distributed.sample_share(k, world)
                    local = yield Backward(engine, step, split_batch(batch, k), share, k, loss_of, task, config)
                except Exception as exc:  # noqa: BLE001 - re-raised by agree_step, on every rank
                    error = exc
                summed, stop = distributed.agree_step(world, local, error, stop)
                if stop:
                    completed = False
                    break
                reg = regulariser_grad(config.beta if ctl is None else ctl.beta, bsz)
                last_task = summed
                last_loss = summed + reg * engine.logit_sum()
                if not lazy and not math.isfinite(last_loss):
                    raise NumericalError(
                        f"task {task.name!r}: loss is {last_loss} at step {step + 1} (task loss {summed})",
                        state=snap() if engine.finite() else None,
                    )
                with held(should_stop):  # the logits, the Adam state and ``step`` move together, or not at all
                    norm = engine.update(step, reg, config.clip)  # the regulariser counted once; logits untouched if non-finite
                    step += 1 if lazy or math.isfinite(norm) else 0
                if not lazy and not math.isfinite(norm):
                    raise NumericalError(
                        f"task {task.name!r}: the gradient of the logits of {engine.nonfinite_gradient() or '?'!r} is "
                        f"non-finite at step {step + 1} (loss {last_loss:.4g})",
                        state=snap(),
                    )
                if lazy and (save_every and step % save_every == 0 or step % eval_every == 0 or step % config.log_every == 0
                             or step == config.steps or (ctl is not None and ctl.due(step, config.steps))):  # fmt: skip
                    last_loss, last_task = _read_back(engine, task, last_loss, last_task, snap)
                if save_every and on_snapshot is not None and step % save_every == 0:
                    on_snapshot(snap())
                if ctl is not None and ctl.due(step, config.steps):
                    metric = ctl.measure(engine, task, config.eval_batch_size, step)
                elif step % eval_every == 0 or step == config.steps:
                    metric = _quick_metric(engine, task, config)
                if step % config.log_every == 0 or step == config.steps:
                    if not engine.finite():
                        # these logits are bad: the last good state is the last snapshot
                        raise NumericalError(f"task {task.name!r}: logits became non-finite by step {step}", state=None)
                    d = engine.density()
                    history.append([step, last_loss, d])
                    if callback is not None and world.is_main:
                        elapsed = time.perf_counter() - t0
                        callback(StepEvent(task.name, step, config.steps, last_loss, last_task, d, elapsed, metric, task.metric))
    except KeyboardInterrupt:  # a second signal inside a step (Ctrl-C twice): the step it cut short changed nothing
        if should_stop is None or world.distributed:
            raise
        completed = False
    if lazy:
        last_loss, last_task = _read_back(engine, task, last_loss, last_task, snap)
    with held(should_stop):
        state = snap()
        masks = engine.masks() if ctl is None or ctl.best is None else ctl.best  # --keep: the sparsest that met it
    if should_stop is not None and should_stop() and not world.distributed:  # a signal in the last step: no final evaluation
        completed = False
    if not completed:  # the caller saves ``state`` for --resume, which runs the final evaluation
        return MaskResult(task, task_ref, config, masks, state, last_loss, {}, {}, False, engine.info(), [], last_task)
    try:
        metric_full = engine.evaluate(task, None, config.eval_batch_size)
        metric_masked = engine.evaluate(task, masks, config.eval_batch_size)
    except KeyboardInterrupt:  # a signal stops the final evaluation at once; what training learned is ``state``
        if should_stop is None or world.distributed:
            raise
        return MaskResult(task, task_ref, config, masks, state, last_loss, {}, {}, False, engine.info(), [], last_task)
    summary = None if ctl is None else ctl.summary_of(metric_full.get(task.metric), metric_masked.get(task.metric))
    return MaskResult(task, task_ref, config, masks, state, last_loss, metric_full, metric_masked, completed,
                      engine.info(), engine.layers(), last_task, summary)  # fmt: skip


def autocast_for(precision: str, device: torch.device) -> Any:
    """The context a training forward runs in: ``torch.autocast`` to bfloat16 for ``"bf16"``, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def tf32_for(precision: str) -> Iterator[None]:
    """CUDA's TF32 matmuls and convolutions while the training loop runs (``"tf32"``), the flags as they were after,
    also on an exception; nothing for another precision (and nothing changes on the CPU, which has no TF32).

    The flags are read and set through the API the process already uses: the legacy ``allow_tf32`` unless the new
    ``fp32_precision`` was set to TF32 (reading ``allow_tf32`` then raises, torch >= 2.9).
    """
    from ..config import PRECISIONS
    from ..errors import BadInputError

    if precision not in PRECISIONS:  # the library path (train_mask) skips TrainConfig.check()
        raise BadInputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "tf32":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        targets, on = [(matmul, "allow_tf32"), (cudnn, "allow_tf32")], True
        old = [getattr(o, a) for o, a in targets]
    except RuntimeError:  # the new API is in use
        targets, on = [(matmul, "fp32_precision"), (cudnn.conv, "fp32_precision")], "tf32"
        old = [getattr(o, a) for o, a in targets]
    try:
        for o, a in targets:
            setattr(o, a, on)
        yield
    finally:
        for (o, a), v in zip(targets, old, strict=True):
            setattr(o, a, v)


def _keep_controller(engine: Any, task: Task, config: TrainConfig, resume: TrainState | None) -> Any:
    """The beta controller of ``config.keep`` (None without it), measuring the unmasked metric once."""
    if config.keep is None:
        return None
    from .controller import KeepController

    ctl = KeepController(config.keep, config.beta, config.steps, task.higher_is_better, config.init, config.lr)
    ctl.full = (engine.evaluate(task, None, config.eval_batch_size, batches=1) or {}).get(task.metric)
    ctl.load(resume.controller if resume is not None else None)
    return ctl


def _with_controller(state: TrainState, ctl: Any) -> TrainState:
    if ctl is not None:
        state.controller = ctl.state()
    return state


def _read_back(engine: Any, task: Task, loss: Any, task_loss: Any, snap: Callable[[int], TrainState]) -> tuple[float, float]:
    """A lazy engine's numbers read back (the progress line, a snapshot, the end): the loss as floats, or the
    :class:`NumericalError` the per-step checks raise, with the state at the start of the failing step (the
    engine skipped every update from that step on)."""
    fail = engine.failure()
    if fail is None:
        return float(loss), float(task_loss)
    at = fail["step"]
    if fail["kind"] == "loss":
        raise NumericalError(f"task {task.name!r}: loss is {fail['loss']} at step {at + 1} (task loss {fail['task_loss']})",
                             state=snap(at) if engine.finite() else None)  # fmt: skip
    raise NumericalError(
        f"task {task.name!r}: the gradient of the logits of {fail['tensor'] or '?'!r} is non-finite at step {at + 1} "
        f"(loss {fail['loss']:.4g})",
        state=snap(at),
    )


def _next_batch(task: Task, batches: Iterator[Any], step: int) -> Any:
    try:
        return next(batches)
    except StopIteration:
        raise PluginError(f"{describe_task(task)}: the 'train' batch stream ended at step {step}; it must be endless") from None
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"{describe_task(task)}: batches('train') failed: {plugin_failure(exc)}") from exc


def _quick_metric(engine: Any, task: Task, config: TrainConfig) -> float | None:
    """The task's metric under the current mask on the first evaluation batch (for the progress line)."""
    value = engine.evaluate(task, engine.masks(), config.eval_batch_size, batches=1).get(task.metric)
    return None if value is None or value != value else float(value)


__all__ = [
    "MaskResult",
    "REGULARISER",
    "StepEvent",
    "TrainConfig",
    "TrainState",
    "evaluate_task",
    "run",
    "train_mask",
]
