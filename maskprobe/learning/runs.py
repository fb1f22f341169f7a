"""``train_masks()``: every mask of one ``maskprobe train`` run on one loaded checkpoint, nothing lost.

A run is one mask per (task, seed, beta), sharing the loaded checkpoint, the process and the compiled kernels.
This module owns what lies around :func:`maskprobe.learning.training.train_mask`: where each mask and its state file go
(:func:`maskprobe.paths.output_paths`, checked by :mod:`maskprobe.learning.outputs`), the lock that keeps a second run
out, the settings chosen for the model, the memory check (:mod:`maskprobe.learning.footprint`), resuming and the state
saved on a signal, a NaN or a full disk (:mod:`maskprobe.learning.statefile`), and writing the mask files. It reports
through a :class:`Reporter` (the CLI's draws tables and progress; a notebook may pass none) and never prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import TrainConfig
from ..errors import BadInputError, Interrupted, NumericalError
from ..interrupts import held


@dataclass(frozen=True)
class TrainRequest:
    """What ``maskprobe train`` was asked for.

    Attributes:
        checkpoint: the checkpoint file or folder.
        tasks: ``(Task, TaskRef)`` pairs (:func:`maskprobe.tasks.resolve_tasks`).
        out: one ``NAME.safetensors`` (one mask) or a folder (``<task>[.seedS][.betaB].safetensors`` each).
        config: the settings; ``seeds`` and ``betas`` vary its ``seed`` and ``beta`` per mask.
        seeds, betas: one mask per value (default: the config's one).
        model, model_args: the ``--model`` factory for weights-only checkpoints.
        trust: allow unpickling (``--trust-checkpoint``).
        force, resume: overwrite existing masks / continue interrupted ones from their state files.
        save_every: snapshot the state every N steps (0: on signals only).
        memory_limit: bytes, None for no check, or ``"auto"`` (the device's free memory).
        shard: FSDP2 under torchrun (``--shard``).
        pack_bits: 8 weights per byte in the mask files.
        dry_run: estimate memory only.
        allow_mismatch: accept a ``--fix-from`` mask recorded from another checkpoint.
        together: train the masks at once, their backward passes batched where they can be
            (:mod:`maskprobe.learning.together`), resumed ones too; not with ``shard`` or torchrun.
    """

    checkpoint: Path
    tasks: Sequence[tuple[Any, Any]]
    out: Path
    config: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = ()
    betas: tuple[float, ...] = ()
    model: str | None = None
    model_args: dict[str, str] = field(default_factory=dict)
    trust: bool = False
    force: bool = False
    resume: bool = False
    save_every: int = 0
    memory_limit: int | str | None = "auto"
    shard: bool = False
    pack_bits: bool = False
    dry_run: bool = False
    allow_mismatch: bool = False
    together: bool = False

    def jobs(self) -> list[tuple[Any, Any, TrainConfig, str]]:
        """``(task, ref, config, file stem)`` per mask: the task, plus the seed and/or beta where several are trained."""
        seeds = self.seeds or (self.config.seed,)
        betas = self.betas or (self.config.beta,)
        out = []
        for t, ref in self.tasks:
            for s in seeds:
                for b in betas:
                    stem = t.name + (f".seed{s}" if len(seeds) > 1 else "") + (f".beta{b:g}" if len(betas) > 1 else "")
                    out.append((t, ref, dataclasses.replace(self.config, seed=s, beta=b), stem))
        return out

    def label(self, task_name: str, config: TrainConfig) -> str:
        """The run's name wherever it is shown (progress, messages, tables): the task, plus the seed and/or the beta
        where several are trained (``keep-outputs beta=1e-05``), as the file stems of :meth:`jobs` tell them apart."""
        seeds = self.seeds or (self.config.seed,)
        betas = self.betas or (self.config.beta,)
        seed = f" seed={config.seed}" if len(seeds) > 1 else ""
        return task_name + seed + (f" beta={config.beta:g}" if len(betas) > 1 else "")


class Reporter(Protocol):
    """What a run tells its caller (all optional to act on)."""

    def selection(self, rows: list[Any], title: str) -> None: ...
    def status(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def progress(self, task: str, steps: int, start: int) -> Any: ...  # a context manager giving callback(StepEvent)
    def written(self, result: Any, path: Path) -> None: ...


class Silent:
    """A :class:`Reporter` that reports nothing (the library default)."""

    def selection(self, rows: list[Any], title: str) -> None:
        pass

    def status(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def progress(self, task: str, steps: int, start: int) -> Any:
        import contextlib

        return contextlib.nullcontext(None)

    def written(self, result: Any, path: Path) -> None:
        pass


@dataclass
class RunResult:
    """The masks a run wrote (``(MaskResult, path)`` each), or with ``dry_run`` the memory plan."""

    checkpoint: dict[str, Any]
    written: list[tuple[Any, Path]] = field(default_factory=list)
    memory_plan: dict[str, Any] | None = None


def train_masks(
    request: TrainRequest, reporter: Reporter | None = None, should_stop: Callable[[], bool] | None = None
) -> RunResult:
    """Train every mask of ``request`` (see the module docstring).

    Raises:
        BadInputError: an output that would overwrite the checkpoint or an earlier result, a held lock, settings
            that cannot run, a state file of another run, memory that does not suffice, a disk that is full.
        Interrupted: ``should_stop`` (a signal); the state is saved beside the mask for ``--resume``.
        NumericalError: NaN/inf; the last good state is saved when there is one.
        CheckpointError, PluginError: as :func:`maskprobe.loading.checkpoints.load_checkpoint` and the task.
    """
    from ..atomic import check_writable
    from ..locking import OutputLock
    from ..paths import output_paths
    from . import distributed
    from .outputs import refuse_existing, refuse_overwriting_checkpoint

    reporter = reporter or Silent()
    jobs = request.jobs()
    plans = output_paths(request.out, [stem for *_, stem in jobs])
    refuse_overwriting_checkpoint(request.checkpoint, plans)
    if not (request.force or request.resume or request.dry_run):
        refuse_existing(plans)
    for p in plans:  # before the checkpoint is loaded and hours are spent
        check_writable(p.mask)
    if request.save_every < 0:
        raise BadInputError(f"--save-every must be >= 0, got {request.save_every}")
    for _, _, cfg, _ in jobs:
        cfg.check()
    main = distributed.detect().is_main
    lock = OutputLock([] if request.dry_run or not main else [p.mask for p in plans])
    lock.acquire()  # a second train into the same --out refuses here (one line), before any work
    written: list[Path] = []  # the masks written so far, for the message of an interrupted run
    try:
        if not (request.force or request.resume or request.dry_run):
            refuse_existing(plans)  # written meanwhile by a run that held the lock before us
        result = _train_locked(request, jobs, plans, reporter, should_stop, written)
    except KeyboardInterrupt as exc:  # a signal outside the training loop (loading, data, set-up): stop at once
        lock.release()
        lock.remove_created_folders()
        from ..interrupts import by, signum_of

        raise Interrupted(f"interrupted by {by(should_stop, exc)} {_kept(written, 'before a mask was finished')}",
                          signum_of(should_stop, exc)) from None  # fmt: skip
    except BaseException:
        lock.release()
        lock.remove_created_folders()  # only the folders this run made, and only where empty
        raise
    lock.release()
    return result


def _kept(written: list[Path], otherwise: str) -> str:
    """What an interrupted run kept, for its one line."""
    if not written:
        return f"{otherwise}; nothing was written"
    return f"after writing {', '.join(str(p) for p in written)} (kept; --resume trains the rest)"


def _train_locked(
    request: TrainRequest, jobs: list, plans: list, reporter: Reporter, should_stop: Any, written: list[Path]
) -> RunResult:
    from ..devices import resolve_device
    from ..tasks.contract import setup_tasks
    from . import distributed
    from .selection import describe_selection
    from .statefile import Snapshots, check_finished, load_state, resume_key, save_interrupted, save_on_nan, save_state

    world, dev = distributed.setup(resolve_device(request.config.device))
    distributed.sample_share(request.config.samples, world)  # refuse a K that does not split, up front
    config = dataclasses.replace(request.config, device=str(dev))
    shard = request.shard and not request.dry_run  # --dry-run estimates every mode from the loaded model
    ckpt = _open_checkpoint(request, world, shard)
    if config.fixed_from and not request.allow_mismatch:
        from .outputs import refuse_other_checkpoint

        refuse_other_checkpoint("--fix-from", config.fixed_from, ckpt)
    setup_tasks([t for t, _ in request.tasks], ckpt)
    rows = describe_selection(ckpt.model, config.selection, stored_dtypes=ckpt.dtypes)
    empty = [f"{r.name} {tuple(r.shape)}" for r in rows if r.masked and r.numel == 0]
    if empty and not any(r.numel for r in rows if r.masked):  # 0/0 density: no mask to learn
        raise BadInputError(f"no weight to mask: every selected tensor is empty ({', '.join(empty[:3])}); a layer of size 0?")
    auto = _chosen_settings(config, sum(r.numel for r in rows if r.masked), reporter)  # the run's first line
    if config.precision == "tf32" and not str(dev).startswith("cuda"):  # once per run (docs/method.md, "Precision")
        reporter.warning(f"--precision tf32 changes nothing on {dev}: TF32 is a CUDA mode; the masks are trained in fp32")
    config = dataclasses.replace(config, **auto)
    reporter.selection(rows, f"{request.checkpoint} ({ckpt.format}); parameters to mask")
    masked = [r.name for r in rows if r.masked]
    task0 = request.tasks[0][0]
    at_once = len(jobs) if request.together and not shard and not world.distributed else 1
    if request.dry_run:
        from .footprint import estimate_run
        from .memory import memory_plan

        plan = memory_plan(estimate_run(ckpt.model, task0, config, masked, at_once), world.size)
        return RunResult(ckpt.to_dict(), memory_plan=plan)
    if not shard:  # a meta-device model has no activations to measure
        from .footprint import check_run

        per_process = dataclasses.replace(config, samples=config.samples // world.size)  # K/R samples each
        check_run(ckpt.model, task0, per_process, masked, request.memory_limit, at_once)
    shapes = {r.name: tuple(r.shape) for r in rows if r.masked}
    if config.fixed_from and not shard:  # the fixed tensors keep no logits in a state file
        from .engine import fixed_masks

        for name in fixed_masks(ckpt.model, masked, config):
            shapes.pop(name)
    out = RunResult(ckpt.to_dict())
    configs = [dataclasses.replace(c, device=str(dev), **auto) for _, _, c, _ in jobs]
    labels = [request.label(t.name, c) for (t, *_), c in zip(jobs, configs, strict=True)]
    keys = [resume_key(c, ref, ckpt.identity_key) for (_, ref, *_), c in zip(jobs, configs, strict=True)]

    def resume_of(i: int) -> Any:
        """``--resume``: ``"done"`` (a finished mask, skipped), the saved state to go on from, or None."""
        plan, ref = plans[i], jobs[i][1]
        if request.resume and plan.mask.exists() and not plan.state.exists():
            check_finished(plan.mask, configs[i], ref, ckpt)  # skipped only when made with these settings
            reporter.status(f"{labels[i]}: {plan.mask} already complete, skipped")
            return "done"
        state = load_state(plan.state, keys[i], shapes) if request.resume and plan.state.exists() else None
        if state is not None:
            reporter.status(f"{labels[i]}: resuming at step {state.step} from {plan.state}")
        return state

    ahead = None  # --together: every mask trained at once (together.py), then written below in order
    if at_once > 1:
        from .together import train_together

        # resumed masks train together again: those stopped by one signal go on from the same step, in lockstep
        resumes = [resume_of(i) for i in range(len(jobs))]
        todo = [i for i, r in enumerate(resumes) if r != "done"]
        results = train_together(ckpt.model, [jobs[i][:2] for i in todo], [configs[i] for i in todo],
                                 [labels[i] for i in todo], reporter, should_stop, request.save_every,
                                 [Snapshots(plans[i].state, keys[i], reporter.warning) for i in todo],
                                 [resumes[i] for i in todo])  # fmt: skip
        ahead = dict.fromkeys(range(len(jobs)), "done") | dict(zip(todo, results, strict=True))
        for r, plan, key in zip(ahead.values(), plans, keys, strict=True):  # a signal stopped them all: every state is kept
            if r != "done" and not isinstance(r, BaseException) and not r.completed:
                save_state(plan.state, r.state, key)
    failed: BaseException | None = None  # --together: the first mask that failed, raised once the others are written
    for i, ((task, ref, _, _), plan) in enumerate(zip(jobs, plans, strict=True)):
        cfg, label, key = configs[i], labels[i], keys[i]
        state = resume_of(i) if ahead is None else None
        if state == "done" or (ahead is not None and ahead[i] == "done"):
            continue
        try:
            if ahead is not None:
                if isinstance(ahead[i], BaseException):
                    raise ahead[i]
                result = ahead[i]
            else:
                result = _train_one(request, ckpt, task, ref, cfg, plan, key, state, label, shard, reporter, should_stop)
        except NumericalError as exc:
            error = save_on_nan(exc, plan, key)
            if ahead is None:
                raise error from None
            failed = failed or error
            continue
        except Exception as exc:
            if ahead is None:
                raise
            failed = failed or exc
            continue
        if not result.completed:
            later = list((ahead or {}).values())[i + 1 :]
            others = sum(1 for r in later if r != "done" and not isinstance(r, BaseException) and not r.completed)
            save_interrupted(result, plan, key, should_stop, written, others)
        try:
            with held(should_stop):  # a signal now waits for the mask (a second or two): it is what the run is for
                distributed.on_main(world, lambda plan=plan, result=result: _write_mask(plan, result, ckpt, request.pack_bits))
        except BadInputError as write_error:  # the disk filled up at the end: keep what was learned if possible
            try:
                save_state(plan.state, result.state, key)
            except BadInputError:
                raise write_error from None
            raise BadInputError(f"{write_error}; the learned state is in {plan.state} (--resume writes the mask)") from None
        written.append(plan.mask)
        reporter.status(f"{label}: saved {plan.mask}")
        if result.controller is not None:  # --keep: whether the target was met, and with what beta
            from .controller import describe

            reporter.status(f"{label}: {describe(result)}")
        for line in result.warnings():
            reporter.warning(f"{label}: {line}")
        reporter.written(result, plan.mask)
        out.written.append((result, plan.mask))
        if should_stop is not None and should_stop() and len(out.written) < len(jobs) and not world.distributed and ahead is None:
            raise KeyboardInterrupt  # a signal while the mask was written: the next mask is not started (--together:
            # every mask is trained already, the rest are written)
    if failed is not None:
        raise failed
    return out


def _train_one(request: TrainRequest, ckpt: Any, task: Any, ref: Any, cfg: TrainConfig, plan: Any, key: dict[str, str],
               state: Any, label: str, shard: bool, reporter: Reporter, should_stop: Any) -> Any:  # fmt: skip
    """One mask, alone: with its progress bar, on the fused engine (or the sharded one under ``--shard``)."""
    from .statefile import Snapshots
    from .training import train_mask

    with reporter.progress(label, cfg.steps, state.step if state else 0) as callback:
        if shard:
            from .sharded import train_mask_sharded

            return train_mask_sharded(ckpt, task, ref, cfg, callback=callback, should_stop=should_stop)
        snapshots = Snapshots(plan.state, key, reporter.warning)
        return train_mask(ckpt.model, task, ref, cfg, callback=callback, should_stop=should_stop, resume=state,
                          save_every=request.save_every, on_snapshot=snapshots)  # fmt: skip


def _chosen_settings(config: TrainConfig, masked: int, reporter: Reporter) -> dict[str, Any]:
    """The settings not given (``config.chosen``), chosen from the masked weight count and the device
    (:func:`maskprobe.config.auto_settings`), said in one line; {} when every setting was given."""
    from ..config import auto_settings

    if not config.chosen:
        return {}
    auto = auto_settings(masked, config.device, config, config.chosen)
    flags = {"keep": "--keep", "beta": "--beta", "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr"}
    said = ", ".join(f"{flags[k]} {v:g}" for k, v in auto.items())
    if auto:
        reporter.status(
            f"settings for {masked:,} masked weights on {config.device}: {said} (give them to choose; docs/method.md)"
        )
    return {**auto, "chosen": tuple(auto)}  # what was chosen (a beta left to the paper's default was not)


def _open_checkpoint(request: TrainRequest, world: Any, shard: bool) -> Any:
    from ..loading.checkpoints import load_checkpoint
    from . import distributed

    if shard:
        distributed.require_group(world)
        if request.resume or request.save_every:
            raise BadInputError("--shard keeps no resumable state yet: drop --resume/--save-every")
    tasks = [t for t, _ in request.tasks]
    return load_checkpoint(request.checkpoint, tasks=tasks, model=request.model, model_args=request.model_args,
                           trust=request.trust, meta=shard)  # fmt: skip


def _write_mask(plan: Any, result: Any, ckpt: Any, pack_bits: bool = False) -> None:
    """Save the mask, then drop the run's state file (rank 0 only under torchrun)."""
    from ..masks.maskfile import save_masks

    save_masks(plan.mask, result.masks, result.metadata(ckpt.to_dict()), pack_bits=pack_bits)
    if plan.state.exists():
        plan.state.unlink()
