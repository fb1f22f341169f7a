"""``maskprobe tasks``: the task plugins found and where from."""

from __future__ import annotations


def run_tasks(*, json_out) -> None:
    from rich.table import Table

    from ..cli import _stdout
    from ..render import dumps
    from ..tasks import discover_tasks, task_arguments

    found = discover_tasks()
    rows = []
    for info in found:
        args = {}
        if info.cls is not None:
            args = {k: ("required" if d is inspect_empty() else repr(d)) for k, (_, d) in task_arguments(info.cls).items()}
        rows.append(
            {
                "name": info.name,
                "source": info.source,
                "metric": getattr(info.cls, "metric", None),
                "higher_is_better": getattr(info.cls, "higher_is_better", None),
                "arguments": args,
                "error": info.error,
            }
        )
    out = _stdout()
    if json_out:
        out.out(dumps({"schema": "maskprobe.tasks/1", "tasks": rows}))
        return
    t = Table(title="Task plugins (entry-point group maskprobe.tasks)", title_justify="left")
    for col in ("name", "metric", "arguments", "source"):
        t.add_column(col)
    for r in rows:
        args = ", ".join(f"{k}={v}" for k, v in r["arguments"].items())
        t.add_row(r["name"], r["metric"] or "", args if not r["error"] else f"[red]broken: {r['error']}[/red]", r["source"])
    out.print(t)
    out.print("Also usable without registering: --task package.module:Class or --task path/to/file.py:Class")


def inspect_empty():
    import inspect

    return inspect.Parameter.empty
