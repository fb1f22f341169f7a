"""``maskprobe train``: learn one mask per task and save them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import BadInputError, Interrupted, NumericalError


def _state_key(config: Any, task_ref: Any, ckpt: Any) -> dict[str, str]:
    """What a state file must agree on to be resumed: settings, task, checkpoint, the masked tensors."""
    import json

    return {
        "hparams": repr(sorted(config.hparams().items())),
        "selection": json.dumps(config.selection.to_dict(), sort_keys=True),
        "task": task_ref.to_json(),
        "checkpoint_sha256": ckpt.sha256,
    }


def _save_state(path: Path, state: Any, key: dict[str, str]) -> None:
    import torch

    from .. import distributed
    from ..atomic import atomic_write

    payload = {"format": "maskprobe.state/1", **key, **state.to_dict()}
    distributed.on_main(distributed.current(), lambda: atomic_write(path, lambda tmp: torch.save(payload, tmp)))


def _load_state(path: Path, key: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> Any:
    import torch

    from ..training import TrainState

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(f"cannot resume: {path} is not a readable state file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != "maskprobe.state/1":
        raise BadInputError(f"cannot resume: {path} is not a maskprobe state file")
    differ = [k for k, v in key.items() if payload.get(k) != v]
    if differ:
        what = {"hparams": "settings", "selection": "--include/--exclude/--mask-biases", "task": "task arguments"}
        raise BadInputError(
            f"cannot resume from {path}: it was made with other {', '.join(what.get(k, 'checkpoint') for k in differ)}; "
            "rerun with the same flags and checkpoint, or pass --force instead of --resume to start over"
        )
    try:
        state = TrainState.from_dict(payload)
        bad = sorted(set(shapes) ^ set(state.logits)) or [n for n in shapes if tuple(state.logits[n].shape) != shapes[n]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"cannot resume: {path} is damaged ({type(exc).__name__}: {exc})") from None
    if bad:
        raise BadInputError(f"cannot resume from {path}: its logits do not fit the masked parameters (first: {bad[0]!r})")
    return state


def _memory_plan_table(plan: dict[str, Any]) -> Any:
    """``--dry-run``: one column per mode, one row per part of the estimate (distributed.memory_plan)."""
    from rich.table import Table

    from ..memory import human

    modes = plan["modes"]
    table = Table(
        title=f"Estimated memory per process on {plan['device']}: {plan['masked']:,} masked weights, "
        f"batch {plan['batch_size']}, {plan['samples']} samples (nothing was trained)"
    )
    table.add_column("part")
    for m in modes:
        head = f"{m['mode']}\n{m['processes']} proc" + ("" if m["processes"] == 1 else f", K/R={m['samples_per_process']}")
        table.add_column(head, justify="right")
    for part in modes[0]["parts"]:
        table.add_row(part, *(human(m["parts"][part]) for m in modes))
    table.add_row("total", *(human(m["total"]) for m in modes))
    return table


def _meta_checkpoint(path: Any, tasks: list, model: Any, model_arg: Any, world: Any, stateful: Any) -> Any:
    """``--shard``: the architecture on the meta device (names and shapes, no memory) and the file's identity."""
    import torch

    from ..checkpoints import Checkpoint, detect_format, sha256_of
    from ..session import architecture

    if not world.distributed:
        raise BadInputError("--shard runs under torchrun with 2 or more processes (docs/distributed.md)")
    if stateful:
        raise BadInputError("--shard keeps no resumable state yet: drop --resume/--save-every")
    fmt = detect_format(path)
    if fmt == "hf-folder" and not model:
        from ..sharded import hf_architecture

        build = hf_architecture(path)
    else:
        build = architecture(tasks, model, model_arg)

    def build_checked() -> Any:
        module = build() if build else None
        if module is None:
            raise BadInputError(f"{path} holds only weights and no task defines build_model(); give --model pkg.module:factory")
        return module

    with torch.device("meta"):
        module = build_checked()
    ckpt = Checkpoint(model=module, path=Path(path), format=fmt, sha256=sha256_of(path))
    ckpt.build = build_checked  # type: ignore[attr-defined]  # train_mask_sharded builds its own, sharded copy
    return ckpt


def _write_mask(plan: Any, result: Any, ckpt: Any, pack_bits: bool = False) -> None:
    """Save the mask, then drop the run's state file (rank 0 only under torchrun)."""
    from ..maskfile import save_masks

    save_masks(plan.mask, result.masks, result.metadata(ckpt.to_dict()), pack_bits=pack_bits)
    if plan.state.exists():
        plan.state.unlink()


def _parse_list(text: str, kind: type, flag: str) -> list:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (``kind`` each); a one-line error for anything else or a repeat."""
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BadInputError(f"{flag} takes a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise BadInputError(f"{flag} is empty")
    if len(set(values)) != len(values):
        raise BadInputError(f"{flag} repeats a value: {text!r}")
    return values


def _job_name(task: str, seed: int, beta: float, by_seed: bool, by_beta: bool) -> str:
    """File stem of one mask: the task, plus the seed and/or beta where several are trained."""
    return task + (f".seed{seed}" if by_seed else "") + (f".beta{beta:g}" if by_beta else "")


def _check_hparams(**values: float) -> None:
    """Non-finite or non-positive settings would make NaN logits by design; refuse them up front."""
    import math

    for name, v in values.items():
        if not math.isfinite(v):
            raise BadInputError(f"--{name} must be a finite number, got {v}")
        if name in ("lr", "tau", "clip") and v <= 0:
            raise BadInputError(f"--{name} must be > 0, got {v}")
        if name == "beta" and v < 0:
            raise BadInputError(f"--beta must be >= 0, got {v}")


def _check_memory(module: Any, task: Any, config: Any, names: list[str], flag: str | None, budget: int | None) -> None:
    """Refuse before the first step when the estimate exceeds ``--memory-limit`` (default: the device's free memory)."""
    from ..memory import available_bytes, check_fits

    if flag not in (None, "auto") and budget is None:  # --memory-limit off
        return
    if budget is None:
        budget = available_bytes(config.device)
        if budget is None:
            return
    check_fits(_estimate_memory(module, task, config, names), budget)


def _estimate_memory(module: Any, task: Any, config: Any, names: list[str]) -> Any:
    """memory.estimate for this run; ``config.samples`` is what one process runs."""
    import torch

    from ..batching import batch_size_of, split_batch
    from ..evaluation import task_loss as _task_loss
    from ..masked import MaskedModel, frozen
    from ..memory import activation_bytes_per_example, estimate

    batch = next(iter(task.batches("train", config.batch_size, torch.Generator().manual_seed(config.seed))))
    size = batch_size_of(batch)
    one = split_batch(batch, max(1, size))[0]  # a single example: cheap even for a large model
    with frozen(module):
        act = activation_bytes_per_example(module, lambda: _task_loss(task, MaskedModel(module, {}), one, 0), 1)
    size, k = config.batch_size, config.samples
    return estimate(module, names, device=config.device, batch_size=size, samples=k, act_per_example=act)


def _refuse_overwriting_checkpoint(checkpoint: Any, plans: list) -> None:
    """No output (mask, state or lock file) may be the checkpoint, one of its shards, or lie in its folder,
    whatever the flags: ``--force`` overwrites masks, never the network they were learned on."""
    import os

    from ..locking import lock_path

    path = Path(checkpoint)
    if not path.exists():
        return  # loading reports it
    if path.is_dir():
        files, folder = [], path.resolve()
    else:
        files, folder = [path.resolve()], None
        if path.name.endswith(".index.json"):
            from ..checkpoints import read_shard_index
            from ..errors import CheckpointError

            try:
                files += read_shard_index(path)[2]
            except CheckpointError:
                pass  # loading reports it
    for plan in plans:
        for target in (plan.mask, plan.state, lock_path(plan.mask)):
            resolved = target.resolve()
            if folder is not None and (resolved == folder or folder in resolved.parents):
                raise BadInputError(f"--out: {target} lies inside the checkpoint folder {checkpoint}; write the masks elsewhere")
            if resolved in files or (target.exists() and any(os.path.samefile(target, f) for f in files)):
                raise BadInputError(
                    f"--out: {target} is the checkpoint {checkpoint}; refusing to overwrite it, choose another --out"
                )


def _refuse_existing(plans: list) -> None:
    existing = [str(p.mask) for p in plans if p.mask.exists()]
    if existing:
        raise BadInputError(f"{existing[0]} exists; pass --force to overwrite or --resume to continue")
    stale = [str(p.state) for p in plans if p.state.exists()]
    if stale:  # hours of an interrupted run must not be overwritten by accident
        raise BadInputError(f"{stale[0]} holds an interrupted run; pass --resume to continue it or --force to start over")


class _Snapshots:
    """``--save-every``: a snapshot that cannot be written (disk full) is a warning, not the end of the run;
    the last good snapshot stays in place (atomic writes) and training goes on."""

    def __init__(self, path: Path, key: dict[str, str], warn: Any) -> None:
        self.path, self.key, self.warn, self.failing = path, key, warn, False

    def __call__(self, state: Any) -> None:
        try:
            _save_state(self.path, state, self.key)
        except BadInputError as exc:
            if not self.failing:  # once per stretch of failures, not every N steps
                kept = f"{self.path} keeps the last good snapshot" if self.path.exists() else "no snapshot is kept yet"
                self.warn(f"maskprobe: warning: snapshot at step {state.step} failed ({exc}); training goes on, {kept}")
            self.failing = True
        else:
            self.failing = False


def run_train(
    *,
    checkpoint,
    task,
    out,
    task_arg,
    model,
    model_arg,
    trust_checkpoint,
    steps,
    batch_size,
    lr,
    beta,
    samples,
    init,
    tau,
    clip,
    seed,
    device,
    include,
    exclude,
    mask_biases,
    force,
    resume,
    json_out,
    quiet,
    save_every=0,
    memory_limit="auto",
    seeds=None,
    backend="auto",
    dry_run=False,
    shard=False,
    pack_bits=False,
) -> None:
    from .. import distributed
    from ..cli import _stderr
    from ..locking import OutputLock
    from ..progress import status_line
    from ..session import output_paths, resolve_tasks

    quiet = quiet or not distributed.detect().is_main  # under torchrun only rank 0 prints
    err = _stderr()
    say = status_line(err, quiet)
    tasks = resolve_tasks(task, task_arg)
    betas = _parse_list(str(beta), float, "--beta")
    seed_list = _parse_list(seeds, int, "--seeds") if seeds is not None else [seed]
    # one mask per (task, seed, beta); they share the loaded checkpoint, the process and the compiled kernels
    jobs = [(t, ref, s, b) for t, ref in tasks for s in seed_list for b in betas]
    names = [_job_name(t.name, s, b, len(seed_list) > 1, len(betas) > 1) for t, _, s, b in jobs]
    plans = output_paths(out, names)
    _refuse_overwriting_checkpoint(checkpoint, plans)
    if not (force or resume or dry_run):
        _refuse_existing(plans)
    from ..atomic import check_writable

    for p in plans:  # before the checkpoint is loaded and hours are spent
        check_writable(p.mask)
    if save_every < 0:
        raise BadInputError(f"--save-every must be >= 0, got {save_every}")
    for b in betas:
        _check_hparams(beta=b)
    _check_hparams(lr=lr, init=init, tau=tau, clip=clip)
    from ..memory import parse_size

    budget_flag = None if memory_limit in (None, "auto") else parse_size(memory_limit)
    if batch_size < samples:
        raise BadInputError(
            f"--batch-size {batch_size} is smaller than --samples {samples}: the batch must hold at least K={samples} "
            "examples, one chunk per mask sample (raise --batch-size or lower --samples)"
        )
    lock = OutputLock([] if dry_run or not distributed.detect().is_main else [p.mask for p in plans])
    lock.acquire()  # a second train into the same --out refuses here (one line), before any work
    try:
        if not (force or resume or dry_run):
            _refuse_existing(plans)  # written meanwhile by a run that held the lock before us
        _train_all(
            checkpoint=checkpoint, tasks=tasks, jobs=jobs, plans=plans, err=err, say=say, quiet=quiet, model=model,
            model_arg=model_arg, trust_checkpoint=trust_checkpoint, steps=steps, batch_size=batch_size, lr=lr,
            betas=betas, samples=samples, init=init, tau=tau, clip=clip, seed_list=seed_list, device=device,
            include=include, exclude=exclude, mask_biases=mask_biases, resume=resume, json_out=json_out,
            save_every=save_every, memory_limit=memory_limit, budget_flag=budget_flag, backend=backend, dry_run=dry_run,
            shard=shard, pack_bits=pack_bits,
        )  # fmt: skip
    except BaseException:
        lock.release()
        lock.remove_created_folders()  # only the folders this run made, and only where empty
        raise
    lock.release()


def _train_all(
    *, checkpoint, tasks, jobs, plans, err, say, quiet, model, model_arg, trust_checkpoint, steps, batch_size, lr,
    betas, samples, init, tau, clip, seed_list, device, include, exclude, mask_biases, resume, json_out, save_every,
    memory_limit, budget_flag, backend, dry_run, shard, pack_bits,
) -> None:  # fmt: skip
    """run_train after the checks and under the output lock: load, train every job, save, report."""
    from .. import distributed
    from ..cli import _Signals, _stdout
    from ..devices import resolve_device
    from ..progress import TrainProgress
    from ..render import dumps, metric_table, selection_table, train_result_table
    from ..selection import Selection, describe_selection, parse_globs
    from ..session import open_checkpoint
    from ..training import TrainConfig, train_mask

    world, dev = distributed.setup(resolve_device(device))
    distributed.sample_share(samples, world)  # refuse a K that does not split, up front
    selection = Selection(parse_globs(include), parse_globs(exclude), mask_biases)
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        beta=betas[0],
        samples=samples,
        init=init,
        tau=tau,
        clip=clip,
        seed=seed_list[0],
        device=str(dev),
        backend=backend,
        selection=selection,
    )
    shard = shard and not dry_run  # --dry-run estimates every mode from the loaded model
    if shard:
        ckpt = _meta_checkpoint(checkpoint, [t for t, _ in tasks], model, model_arg, world, resume or save_every)
    else:
        ckpt = open_checkpoint(checkpoint, [t for t, _ in tasks], model, model_arg, trust_checkpoint)
    rows = describe_selection(ckpt.model, selection)
    if not quiet:
        err.print(selection_table(rows, title=f"{checkpoint} ({ckpt.format}); parameters to mask"))
    shapes = {r.name: r.shape for r in rows}
    masked = [r.name for r in rows if r.masked]
    per_process = dataclasses.replace(config, samples=samples // world.size)  # K/R samples each
    if dry_run:
        plan = distributed.memory_plan(_estimate_memory(ckpt.model, tasks[0][0], config, masked), world.size)
        if world.is_main:
            _stdout().out(dumps(plan)) if json_out else _stdout().print(_memory_plan_table(plan))
        return
    if not shard:  # a meta-device model has no activations to measure
        _check_memory(ckpt.model, tasks[0][0], per_process, masked, memory_limit, budget_flag)
    stdout = _stdout()
    summaries = []
    with _Signals() as signals:
        for (t, ref, job_seed, job_beta), plan in zip(jobs, plans, strict=True):
            cfg = dataclasses.replace(config, seed=job_seed, beta=job_beta)
            if resume and plan.mask.exists() and not plan.state.exists():
                say(f"{t.name}: {plan.mask} already complete, skipped")
                continue
            key = _state_key(cfg, ref, ckpt)
            masked_shapes = {r.name: tuple(r.shape) for r in rows if r.masked}
            state = _load_state(plan.state, key, masked_shapes) if resume and plan.state.exists() else None
            if state is not None:
                say(f"{t.name}: resuming at step {state.step} from {plan.state}")
            try:
                with TrainProgress(err, t.name, steps, start=state.step if state else 0, quiet=quiet) as cb:
                    if shard:
                        from ..sharded import train_mask_sharded

                        result = train_mask_sharded(ckpt.build, checkpoint, t, ref, cfg, callback=cb, should_stop=signals)
                    else:
                        result = train_mask(
                            ckpt.model,
                            t,
                            ref,
                            cfg,
                            callback=cb,
                            should_stop=signals,
                            resume=state,
                            save_every=save_every,
                            on_snapshot=_Snapshots(plan.state, key, lambda line: err.print(line, markup=False, highlight=False)),
                        )
            except NumericalError as exc:
                good = exc.state
                if good is not None:
                    try:
                        _save_state(plan.state, good, key)
                    except BadInputError as write_error:
                        raise NumericalError(f"{exc}; the last good state could not be saved ({write_error})") from None
                where = (
                    f"the last good state is in {plan.state} (--resume continues from it)"
                    if plan.state.exists()
                    else "no state was saved"
                )
                raise NumericalError(f"{exc}; {where}") from None
            if not result.completed:
                where = f"step {result.steps_run}/{steps} of {t.name}"
                try:
                    _save_state(plan.state, result.state, key)
                except BadInputError as write_error:
                    lost = f"interrupted at {where}; the state could not be saved ({write_error})"
                    raise Interrupted(lost, signals.signum or 2) from None
                import shlex
                import sys

                cmd = " ".join(shlex.quote(a) for a in ["maskprobe", *sys.argv[1:]] if a not in ("--force", "--resume"))
                raise Interrupted(
                    f"interrupted at {where}; state saved to {plan.state}; continue with: {cmd} --resume",
                    signals.signum or 2,
                )
            try:
                distributed.on_main(world, lambda plan=plan, result=result: _write_mask(plan, result, ckpt, pack_bits))
            except BadInputError as write_error:  # the disk filled up at the end: keep what was learned if possible
                try:
                    _save_state(plan.state, result.state, key)
                except BadInputError:
                    raise write_error from None
                raise BadInputError(f"{write_error}; the learned state is in {plan.state} (--resume writes the mask)") from None
            say(f"{t.name}: saved {plan.mask}")
            summaries.append((result, plan))
            if not json_out and world.is_main:
                stdout.print(train_result_table(result, shapes))
                stdout.print(metric_table(f"{t.name}: metrics", [(t.name, result.metric_full, result.metric_masked)]))
    if json_out and world.is_main:
        stdout.out(
            dumps(
                {
                    "schema": "maskprobe.train/1",
                    "checkpoint": ckpt.to_dict(),
                    "masks": [
                        {
                            "path": str(p.mask),
                            "task": r.task.name,
                            "seed": r.config.seed,
                            "beta": r.config.beta,
                            "steps": r.steps_run,
                            "final_loss": r.final_loss,
                            "density": r.density()["total"],
                            "metric_full": r.metric_full,
                            "metric_masked": r.metric_masked,
                        }
                        for r, p in summaries
                    ],
                }
            )
        )
