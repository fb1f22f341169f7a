"""``maskprobe train``: learn one mask per task and save them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BadInputError, Interrupted, NumericalError


def _save_state(path: Path, state: Any, config: Any, task_ref: Any) -> None:
    import torch

    from ..atomic import atomic_write

    payload = {
        "format": "maskprobe.state/1",
        "hparams": repr(sorted(config.hparams().items())),
        "task": task_ref.to_json(),
        **state.to_dict(),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load_state(path: Path, config: Any, task_ref: Any) -> Any:
    import torch

    from ..training import TrainState

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(f"cannot resume: {path} is not a readable state file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != "maskprobe.state/1":
        raise BadInputError(f"cannot resume: {path} is not a maskprobe state file")
    if payload.get("hparams") != repr(sorted(config.hparams().items())) or payload.get("task") != task_ref.to_json():
        raise BadInputError(
            f"cannot resume from {path}: it was made with other settings or task arguments; "
            "rerun with the same flags, or drop --resume"
        )
    return TrainState.from_dict(payload)


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
) -> None:
    from ..cli import _Signals, _stderr, _stdout
    from ..maskfile import save_masks
    from ..progress import TrainProgress, status_line
    from ..render import dumps, metric_table, selection_table, train_result_table
    from ..selection import Selection, describe_selection, parse_globs
    from ..session import open_checkpoint, output_paths, resolve_tasks
    from ..training import TrainConfig, resolve_device, train_mask

    err = _stderr()
    say = status_line(err, quiet)
    tasks = resolve_tasks(task, task_arg)
    plans = output_paths(out, [t.name for t, _ in tasks])
    if not (force or resume):
        existing = [str(p.mask) for p in plans if p.mask.exists()]
        if existing:
            raise BadInputError(f"{existing[0]} exists; pass --force to overwrite or --resume to continue")
    dev = resolve_device(device)
    selection = Selection(parse_globs(include), parse_globs(exclude), mask_biases)
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        beta=beta,
        samples=samples,
        init=init,
        tau=tau,
        clip=clip,
        seed=seed,
        device=str(dev),
        selection=selection,
    )
    ckpt = open_checkpoint(checkpoint, [t for t, _ in tasks], model, model_arg, trust_checkpoint)
    rows = describe_selection(ckpt.model, selection)
    if not quiet:
        err.print(selection_table(rows, title=f"{checkpoint} ({ckpt.format}); parameters to mask"))
    shapes = {r.name: r.shape for r in rows}
    stdout = _stdout()
    summaries = []
    with _Signals() as signals:
        for (t, ref), plan in zip(tasks, plans, strict=True):
            if resume and plan.mask.exists() and not plan.state.exists():
                say(f"{t.name}: {plan.mask} already complete, skipped")
                continue
            state = _load_state(plan.state, config, ref) if resume and plan.state.exists() else None
            if state is not None:
                say(f"{t.name}: resuming at step {state.step} from {plan.state}")
            try:
                with TrainProgress(err, t.name, steps, start=state.step if state else 0, quiet=quiet) as cb:
                    result = train_mask(ckpt.model, t, ref, config, callback=cb, should_stop=signals, resume=state)
            except NumericalError as exc:
                _save_state(plan.state, exc.state, config, ref)  # type: ignore[attr-defined]
                raise NumericalError(f"{exc}; last good state in {plan.state}") from None
            if not result.completed:
                _save_state(plan.state, result.state, config, ref)
                import shlex
                import sys

                cmd = " ".join(shlex.quote(a) for a in ["maskprobe", *sys.argv[1:]] if a not in ("--force", "--resume"))
                raise Interrupted(
                    f"interrupted at step {result.steps_run}/{steps} of {t.name}; state saved to "
                    f"{plan.state}; continue with: {cmd} --resume",
                    signals.signum or 2,
                )
            save_masks(plan.mask, result.masks, result.metadata(ckpt.to_dict()))
            if plan.state.exists():
                plan.state.unlink()
            say(f"{t.name}: saved {plan.mask}")
            summaries.append((result, plan))
            if not json_out:
                stdout.print(train_result_table(result, shapes))
                stdout.print(metric_table(f"{t.name}: metrics", [(t.name, result.metric_full, result.metric_masked)]))
    if json_out:
        stdout.out(
            dumps(
                {
                    "schema": "maskprobe.train/1",
                    "checkpoint": ckpt.to_dict(),
                    "masks": [
                        {
                            "path": str(p.mask),
                            "task": r.task.name,
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
