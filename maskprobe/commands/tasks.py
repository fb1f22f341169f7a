"""``maskprobe tasks``: the task plugins found, where from, their arguments and metric; ``--check NAME`` runs one
through the contract checks of :func:`maskprobe.testing.check_task` (exit 3 when it violates the contract)."""

from __future__ import annotations

import inspect
from typing import Any


def _argument_text(annotation: Any, default: Any) -> str:
    kind = getattr(annotation, "__name__", None) or ("" if annotation is inspect.Parameter.empty else str(annotation))
    kind = "" if kind in ("_empty", "") else f": {kind}"
    return f"{kind} (required)" if default is inspect.Parameter.empty else f"{kind} = {default!r}"


def _rows() -> list[dict[str, Any]]:
    from ..tasks import discover_tasks, task_arguments

    rows = []
    for info in discover_tasks():
        cls = info.cls
        args = {k: _argument_text(a, d) for k, (a, d) in task_arguments(cls).items()} if cls is not None else {}
        rng = getattr(cls, "metric_range", None)
        rows.append(
            {
                "name": info.name,
                "source": info.source,
                "metric": getattr(cls, "metric", None),
                "higher_is_better": getattr(cls, "higher_is_better", None),
                "metric_range": list(rng) if rng is not None else None,
                "arguments": args,
                "doc": (inspect.getdoc(cls) or "").split("\n")[0] if cls is not None else "",
                "error": info.error,
            }
        )
    return rows


def _run_check(ref: str, task_arg: list[str], json_out: bool) -> None:
    from ..cli import _stdout
    from ..errors import PluginError
    from ..render import dumps
    from ..session import resolve_tasks
    from ..testing import check_task

    ((task, _),) = resolve_tasks([ref], task_arg)
    report = check_task(task)
    out = _stdout()
    if json_out:
        out.out(
            dumps(
                {
                    "schema": "maskprobe.task-check/1",
                    "task": report.task,
                    "ok": report.ok,
                    "passed": report.passed,
                    "problems": report.problems,
                }
            )
        )
    else:
        out.print(f"Checking {report.task}")
        for line in report.passed:
            out.print(f"  [green]ok[/green]    {line}")
        for line in report.problems:
            out.print(f"  [red]FAIL[/red]  {line}")
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise PluginError(f"{report.task}: {report.problems[0]}{more}")


def run_tasks(*, check: str | None = None, task_arg: list[str] | None = None, json_out: bool = False) -> None:
    from rich.table import Table

    from ..cli import _stdout
    from ..errors import BadInputError
    from ..render import dumps

    if check is not None:
        _run_check(check, list(task_arg or []), json_out)
        return
    if task_arg:
        raise BadInputError("--task-arg needs --check NAME")
    rows = _rows()
    out = _stdout()
    if json_out:
        out.out(dumps({"schema": "maskprobe.tasks/1", "tasks": rows}))
        return
    t = Table(title="Task plugins (entry-point group maskprobe.tasks)", title_justify="left")
    for col in ("name", "metric", "arguments (--task-arg key=value)", "source"):
        t.add_column(col, overflow="fold")
    for r in rows:
        metric = r["metric"] or ""
        if metric:
            metric += " (higher is better)" if r["higher_is_better"] else " (lower is better)"
            if r["metric_range"] is not None:
                metric += f" in [{r['metric_range'][0]:g}, {r['metric_range'][1]:g}]"
        args = "\n".join(f"{k}{v}" for k, v in r["arguments"].items()) or "none"
        name = r["name"] + (f"\n[dim]{r['doc']}[/dim]" if r["doc"] else "")
        t.add_row(name, metric, args if not r["error"] else f"[red]broken: {r['error']}[/red]", r["source"])
    out.print(t)
    out.print("Also usable without registering: --task package.module:Class or --task path/to/file.py:Class")
    out.print("Check a plugin against the contract: maskprobe tasks --check NAME [--task-arg key=value]")
