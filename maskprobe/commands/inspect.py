"""``maskprobe inspect``: what a checkpoint or a mask file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import Selection
from .options import Exclude, Include, Json, MaskBiases, MaskNorms, Model, ModelArgs, TaskArgs, Trust


def inspect(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A checkpoint or a mask file.")],
    include: Include = [],
    exclude: Exclude = [],
    mask_biases: MaskBiases = Selection.mask_biases,
    mask_norms: MaskNorms = Selection.mask_norms,
    task: Annotated[
        list[str], typer.Option("--task", "-t", metavar="TASK", help="Task whose build_model() gives the architecture.")
    ] = [],
    task_arg: TaskArgs = [],
    model: Model = None,
    model_arg: ModelArgs = [],
    trust_checkpoint: Trust = False,
    json_out: Json = False,
) -> None:
    """What a checkpoint or mask file holds: format, parameters, what would be masked, metadata."""
    from .. import console
    from ..learning.selection import parse_globs
    from ..loading.checkpoints import parse_model_args
    from ..masks.inspection import inspect_checkpoint, inspect_mask, is_mask_file
    from ..render import dumps
    from ..render import inspect as show
    from ..tasks.args import resolve_tasks

    if is_mask_file(path):
        summary = inspect_mask(path)
        if json_out:
            console.print_json(dumps(show.mask_payload(summary)))
        else:
            o = console.out()
            for table in show.mask_tables(summary, o.width):  # long tensor names whole at 80 columns
                o.print(table)
        return
    selection = Selection(parse_globs(include), parse_globs(exclude), mask_biases, mask_norms)
    tasks = [t for t, _ in resolve_tasks(task, task_arg)] if task else []
    summary = inspect_checkpoint(path, selection, tasks=tasks, model=model, model_args=parse_model_args(model_arg),
                                 trust=trust_checkpoint)  # fmt: skip
    if json_out:
        console.print_json(dumps(show.checkpoint_payload(summary)))
    else:
        o = console.out()
        o.print(show.checkpoint_table(summary, o.width))
