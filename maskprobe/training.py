"""The mask-training loop (DESIGN §2). Library code: it never prints; progress goes to ``callback``.

Per step and task: draw a batch of ``B``; split it into ``K = samples`` chunks; run each chunk with its
own mask sample (hard Gumbel-sigmoid, straight-through, :mod:`maskprobe.gates`); loss =
``mean_k task_loss_k + (beta / B) * sum(all logits)``; Adam on the logits only, gradient-norm clip over
the logits. The weights stay frozen and the model in eval mode. The final mask keeps ``logit > 0``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__, distributed
from .batching import batch_size_of, split_batch, to_device
from .errors import NumericalError, PluginError
from .gates import binarize
from .masked import MaskedModel, frozen, masked_weights
from .maskstep import NOISE, MaskLogits
from .selection import Selection, select_parameters
from .tasks import Task, TaskRef, describe_task

EVAL_SEED = 1234  # eval batches are drawn from a fixed seed so that every run scores on the same data


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults are the paper's code's except ``steps`` (paper: 20,000)."""

    steps: int = 5000
    batch_size: int = 128
    lr: float = 1e-2
    beta: float = 1e-4
    samples: int = 4
    init: float = 2.0
    tau: float = 1.0
    clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"  # mask-step kernels: auto | numba | torch (maskstep.py)
    eval_batch_size: int = 1024
    log_every: int = 25
    selection: Selection = field(default_factory=Selection)

    def hparams(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("selection")
        d.pop("log_every")
        return d


@dataclass
class StepEvent:
    """Progress report, sent every ``log_every`` steps and at the end."""

    task: str
    step: int
    steps: int
    loss: float
    density: float
    elapsed: float

    @property
    def steps_per_s(self) -> float:
        return self.step / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class TrainState:
    """Everything needed to continue a run bitwise: logits, Adam state, RNG states, step count."""

    step: int
    logits: dict[str, Tensor]
    optimizer: dict[str, Any]
    noise_rng: Tensor
    history: list[list[float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "logits": self.logits,
            "optimizer": self.optimizer,
            "noise_rng": self.noise_rng,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(int(d["step"]), d["logits"], d["optimizer"], d["noise_rng"], d.get("history", []))


@dataclass
class MaskResult:
    """One task's trained mask and everything the mask file records about it."""

    task: Task
    task_ref: TaskRef
    config: TrainConfig
    masks: dict[str, Tensor]
    state: TrainState
    final_loss: float
    metric_full: dict[str, float]
    metric_masked: dict[str, float]
    completed: bool = True
    engine: dict[str, str] = field(default_factory=dict)  # backend and noise generator actually used

    @property
    def steps_run(self) -> int:
        return self.state.step

    def density(self) -> dict[str, Any]:
        per = {n: float(m.float().mean()) for n, m in self.masks.items()}
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return {"per_tensor": per, "total": kept / total if total else 0.0, "kept": kept, "numel": total}

    def metadata(self, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "task": {
                "name": self.task.name,
                "ref": self.task_ref.ref,
                "args": self.task_ref.args,
                "metric": self.task.metric,
                "higher_is_better": self.task.higher_is_better,
            },
            "checkpoint": checkpoint or {},
            "hparams": {**self.config.hparams(), "regulariser": "beta / batch_size * sum(logits)"},
            "selection": self.config.selection.to_dict(),
            "seed": self.config.seed,
            "steps": self.steps_run,
            "final_loss": self.final_loss,
            "density": self.density(),
            "metric_full": self.metric_full,
            "metric_masked": self.metric_masked,
            "engine": self.engine,
            "versions": _versions(),
        }


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        from .errors import BadInputError

        raise BadInputError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import BadInputError

        raise BadInputError("--device cuda was asked for but no CUDA device is available")
    return dev


def _check_metrics(task: Task, metrics: Any) -> dict[str, float]:
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


def evaluate_task(
    module: nn.Module,
    task: Task,
    overrides: dict[str, Tensor] | None = None,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> dict[str, float]:
    """The task's metrics with ``overrides`` (name -> effective weight) applied; eval mode, no grad."""
    gen = torch.Generator().manual_seed(EVAL_SEED)
    model = MaskedModel(module, overrides or {})
    with torch.no_grad(), frozen(module):
        batches = (to_device(b, device) for b in task.batches("eval", batch_size, gen))
        try:
            metrics = task.evaluate(model, batches)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{describe_task(task)}: evaluate() failed: {_plugin_failure(exc)}") from exc
    return _check_metrics(task, metrics)


def _task_loss(task: Task, model: Any, chunk: Any, step: int) -> Any:
    """``task.loss(model, chunk)``; a plugin's exception (e.g. data that does not fit the model) becomes a PluginError."""
    try:
        return task.loss(model, chunk)
    except PluginError:
        raise
    except Exception as exc:
        hint = "" if _is_device_mix(exc) else " (does the task's data fit this model?)"
        raise PluginError(f"{describe_task(task)}: loss() failed at step {step + 1}: {_plugin_failure(exc)}{hint}") from exc


def _is_device_mix(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("expected device" in text or "same device" in text)


def _plugin_failure(exc: BaseException) -> str:
    """One line about a plugin's exception; tensors on two devices get the contract's remedy."""
    text = " ".join(str(exc).split())[:300]
    if _is_device_mix(exc):
        return (
            f"wrong device: {text} (a task must make its tensors on the batch's device, "
            "e.g. torch.zeros(n, device=x.device), never a fixed one)"
        )
    return f"{type(exc).__name__}: {text}"


def _scalar_loss(task: Task, value: Any, device: torch.device | None = None) -> Tensor:
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
    """Learn one task's mask on the frozen ``module`` (moved to ``config.device``).

    Args:
        callback: receives a :class:`StepEvent` every ``config.log_every`` steps and at the end.
        should_stop: polled at every step boundary; when it returns True the loop stops and the result
            has ``completed=False`` (its ``state`` resumes the run).
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
    device = torch.device(config.device)
    module.to(device)
    names = select_parameters(module, config.selection)
    params = dict(module.named_parameters())
    weights = {n: params[n].detach() for n in names}

    # logits, Adam state and the fused gate/update live in one engine (maskstep.py); the noise of sample k
    # at step t is a hash of (seed, t, k), so it needs no RNG state and a resumed run draws the same noise
    engine = MaskLogits(weights, init=config.init, lr=config.lr, tau=config.tau, seed=config.seed, backend=config.backend)
    world = distributed.current()
    logits = engine.logits()
    data_gen = torch.Generator().manual_seed(config.seed)
    history: list[list[float]] = []
    start = 0
    if resume is not None:
        engine.load_state(resume.logits, resume.optimizer)
        history = list(resume.history)
        start = resume.step
    flat = list(logits.values())

    def snapshot(step: int) -> TrainState:
        return TrainState(
            step,
            {n: t.detach().cpu().clone() for n, t in logits.items()},
            engine.state_dict(),
            _seed_bytes(config.seed),  # the noise is keyed by (seed, step): there is no RNG state to keep
            list(history),
        )

    def density() -> float:
        kept = sum(int((t > 0).sum()) for t in flat)
        return kept / sum(t.numel() for t in flat)

    batches: Iterator[Any] = iter(task.batches("train", config.batch_size, data_gen))
    for _ in range(start):  # same data order on resume: replay the seeded stream
        next(batches)

    last_loss = float("nan")
    t0 = time.perf_counter()
    step = start
    completed = True
    with frozen(module):
        while step < config.steps:
            stop = should_stop is not None and should_stop()
            if stop and not world.distributed:
                completed = False
                break
            # under torchrun every rank draws the same global batch and runs its share of the K chunks
            # (distributed.py); any failure is held until every rank has reported (agree_step)
            error, local_loss, grads, bsz = None, float("nan"), [], 1
            try:
                try:
                    batch = next(batches)
                except StopIteration:
                    raise PluginError(
                        f"{describe_task(task)}: the 'train' batch stream ended at step {step}; it must be endless"
                    ) from None
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"{describe_task(task)}: batches('train') failed: {_plugin_failure(exc)}") from exc
                bsz = batch_size_of(batch)
                k = max(1, min(config.samples, bsz))
                share = distributed.sample_share(k, world)
                engine.sample_offset = share.start
                chunks = split_batch(batch, k)
                task_loss = torch.zeros((), device=device)
                samples = []
                for i, j in enumerate(share):
                    gated = engine.sample(step, i)
                    samples.append(gated)
                    chunk = to_device(chunks[j], device)
                    chunk_loss = _task_loss(task, MaskedModel(module, gated), chunk, step)
                    task_loss = task_loss + _scalar_loss(task, chunk_loss, device) / k
                local_loss = float(task_loss.detach())
                grads = _sample_grads(task_loss, samples)
            except Exception as exc:  # noqa: BLE001 - re-raised by agree_step, on every rank
                error = exc
            summed_loss, stop = distributed.agree_step(world, local_loss, error, stop)
            if stop:
                completed = False
                break
            reg_grad = config.beta / bsz  # d/dl of the regulariser (beta / B) * sum(logits)
            last_loss = summed_loss + reg_grad * engine.logit_sum
            if not math.isfinite(last_loss):
                err = NumericalError(
                    f"task {task.name!r}: loss is {last_loss} at step {step + 1} "
                    f"(task loss {summed_loss})"
                )
                good = all(bool(torch.isfinite(t).all()) for t in flat)
                err.state = snapshot(step) if good else None  # type: ignore[attr-defined]
                raise err
            grad_norm = engine.gradient(step, grads, reg_grad if world.is_main else 0.0)  # the regulariser counted once
            if world.distributed:
                grad_norm = distributed.reduce_gradient(engine.gradient_buffer(), world)
            if not math.isfinite(grad_norm):  # checked before the update, so the logits stay good
                bad = engine.nonfinite_gradient() or "?"
                err = NumericalError(
                    f"task {task.name!r}: the gradient of the logits of {bad!r} is non-finite at step {step + 1} "
                    f"(loss {last_loss:.4g})"
                )
                err.state = snapshot(step)  # type: ignore[attr-defined]
                raise err
            engine.adam(min(1.0, config.clip / (grad_norm + 1e-6)))  # clip_grad_norm_'s factor, folded into Adam
            step += 1
            if save_every and on_snapshot is not None and step % save_every == 0:
                on_snapshot(snapshot(step))
            if step % config.log_every == 0 or step == config.steps:
                bad = next((n for n, t in logits.items() if not torch.isfinite(t).all()), None)
                if bad is not None:
                    err = NumericalError(f"task {task.name!r}: logits of {bad!r} became non-finite by step {step}")
                    err.state = None  # type: ignore[attr-defined]  # these logits are bad: keep the last snapshot
                    raise err
                d = density()
                history.append([step, last_loss, d])
                if callback is not None:
                    callback(StepEvent(task.name, step, config.steps, last_loss, d, time.perf_counter() - t0))

    state = snapshot(step)
    masks = {n: binarize(t.detach()).cpu() for n, t in logits.items()}
    metric_full = evaluate_task(module, task, device=device, batch_size=config.eval_batch_size)
    metric_masked = evaluate_task(module, task, masked_weights(module, masks), device=device, batch_size=config.eval_batch_size)
    result = MaskResult(task, task_ref, config, masks, state, last_loss, metric_full, metric_masked, completed)
    result.engine = {"backend": engine.backend, "noise": NOISE}
    return result


def _seed_bytes(seed: int) -> Tensor:
    return torch.tensor(list((seed & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")), dtype=torch.uint8)


def _sample_grads(loss: Tensor, samples: list[dict[str, Tensor]]) -> list[dict[str, Tensor | None]]:
    """``dloss / d(gated weight)`` per sample and name (None where the loss does not use it)."""
    leaves = [t for s in samples for t in s.values()]
    if not loss.requires_grad:
        return [dict.fromkeys(s) for s in samples]
    grads = iter(torch.autograd.grad(loss, leaves, allow_unused=True))
    return [{n: next(grads) for n in s} for s in samples]


def _versions() -> dict[str, Any]:
    """What a bitwise reproduction needs besides seed, hyper-parameters and device (docs/reliability.md)."""
    import platform

    import numpy
    import safetensors

    return {
        "maskprobe": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
    }

