"""``maskprobe tasks``: the task plugins found, where from, their arguments and metric; ``--check NAME`` runs one
through the contract checks of :func:`maskprobe.testing.check_task` (exit 3 when it violates the contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import Json, Model, ModelArgs, TaskArgs, Trust


def tasks(
    check: Annotated[
        str | None,
        typer.Option("--check", help="Run this task (name, module:Class or file.py:Class) through the contract checks."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="With --check: run the task on this checkpoint's network.")
    ] = None,
    task_arg: TaskArgs = [],
    model: Model = None,
    model_arg: ModelArgs = [],
    trust_checkpoint: Trust = False,
    json_out: Json = False,
) -> None:
    """List the task plugins found (entry-point group maskprobe.tasks), or check one with --check NAME (exit 3 if broken)."""
    from .. import console
    from ..errors import BadInputError
    from ..render import dumps
    from ..render import tasks as show

    if check is None:
        if task_arg or checkpoint is not None:
            raise BadInputError("--task-arg and --checkpoint need --check NAME")
        from ..tasks.plugins import discover_tasks

        rows = show.task_rows(discover_tasks())
        if json_out:
            console.print_json(dumps({"schema": "maskprobe.tasks/1", "tasks": rows}))
            return
        o = console.out()
        o.print(show.tasks_table(rows))
        for line in show.TASKS_FOOTER:
            o.print(line, markup=False)
        return
    from ..errors import PluginError
    from ..tasks.args import resolve_tasks
    from ..testing import check_task

    ((task, _),) = resolve_tasks([check], task_arg)
    module = None
    if checkpoint is not None:
        from ..loading.checkpoints import load_checkpoint, parse_model_args

        module = load_checkpoint(
            checkpoint, tasks=[task], model=model, model_args=parse_model_args(model_arg), trust=trust_checkpoint
        ).model
    report = check_task(task, model=module)
    if json_out:
        console.print_json(dumps(show.check_payload(report)))
    else:
        o = console.out()
        for line in show.check_lines(report):
            o.print(line, markup=False)
    if report.bad_input:  # the data, labels or tokenizer given: exit 2, as train and evaluate give for them
        raise BadInputError(f"{report.task}: {report.bad_input[0]}")
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise PluginError(f"{report.task}: {report.problems[0]}{more}")
    if report.skipped:
        raise BadInputError(f"{report.task}: not every check ran: {report.skipped[0]}")
