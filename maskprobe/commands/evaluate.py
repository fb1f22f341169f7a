"""``maskprobe evaluate``: task metrics on the checkpoint, unmasked or under a mask."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import AllowMismatch, Device, Json, Model, ModelArgs, TaskArgs, Trust, TrustMaskTasks


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="Checkpoint file or folder.")],
    task: Annotated[
        list[str],
        typer.Option("--task", "-t", help="Task: entry-point name, module:Class or file.py:Class (default: the --mask's own)."),
    ] = [],
    mask: Annotated[Path | None, typer.Option("--mask", "-m", help="Apply this mask (keep only its weights).")] = None,
    invert: Annotated[bool, typer.Option("--invert", help="Remove the mask's weights instead of keeping only them.")] = False,
    task_arg: TaskArgs = [],
    trust_mask_tasks: TrustMaskTasks = False,
    model: Model = None,
    model_arg: ModelArgs = [],
    trust_checkpoint: Trust = False,
    device: Device = "auto",
    allow_mismatch: AllowMismatch = False,
    json_out: Json = False,
) -> None:
    """The task metrics on the checkpoint, unmasked or under a mask (without --task: the task the mask records)."""
    from .. import console
    from ..devices import resolve_device
    from ..errors import BadInputError
    from ..loading.checkpoints import load_checkpoint, parse_model_args
    from ..measure.evaluation import evaluate_under_mask
    from ..render import dumps
    from ..render.train import evaluate_payload, metric_table
    from ..tasks.args import resolve_tasks

    if invert and mask is None:
        raise BadInputError("--invert needs --mask")
    if task:
        if trust_mask_tasks:
            raise BadInputError("--trust-mask-tasks applies to the task rebuilt from the mask; with --task it has no use")
        tasks = [t for t, _ in resolve_tasks(task, task_arg)]
    elif mask is not None:
        tasks = _tasks_of_mask(mask, task_arg, trust_mask_tasks)
    else:
        raise BadInputError("give at least one --task, or a --mask whose recorded task is evaluated")
    run_device = resolve_device(device)
    ckpt = load_checkpoint(
        checkpoint, tasks=tasks, model=model, model_args=parse_model_args(model_arg), trust=trust_checkpoint, device=run_device
    )  # read onto the run's device: evaluate_under_mask makes no copy
    rows = evaluate_under_mask(ckpt, tasks, mask, invert=invert, device=run_device, allow_mismatch=allow_mismatch)
    if json_out:
        console.print_json(dumps(evaluate_payload(ckpt.to_dict(), mask, invert, rows, tasks)))
        return
    how = "" if mask is None else (f" with {mask} removed" if invert else f" with only {mask} kept")
    ranges = {t.name: t.metric_range for t in tasks}
    console.out().print(metric_table(f"{checkpoint}{how}", rows, ranges))


def _tasks_of_mask(mask: Path, task_arg: list[str], trust: bool) -> list:
    """The task the mask file records, rebuilt as ``compare`` rebuilds it (an installed task only, unless ``trust``;
    ``--task-arg`` over the recorded arguments; a recorded data file that moved is named with the way to give it
    again)."""
    from ..masks.maskfile import open_masks
    from ..masks.masksets import tasks_from_metadata

    with open_masks(mask) as reader:
        return tasks_from_metadata([reader], task_arg, trust_tasks=trust)
