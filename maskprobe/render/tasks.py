"""Tables and JSON of ``maskprobe tasks`` and ``maskprobe tasks --check``."""

from __future__ import annotations

import inspect
from typing import Any

from rich.table import Table

from . import add_row


def _argument_text(annotation: Any, default: Any) -> str:
    kind = getattr(annotation, "__name__", None) or ("" if annotation is inspect.Parameter.empty else str(annotation))
    kind = "" if kind in ("_empty", "") else f": {kind}"
    return f"{kind} (required)" if default is inspect.Parameter.empty else f"{kind} = {default!r}"


def task_rows(infos: list[Any]) -> list[dict[str, Any]]:
    """One JSON-able row per discovered task (:class:`maskprobe.tasks.TaskInfo`)."""
    from ..tasks.plugins import task_arguments

    rows = []
    for info in infos:
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


def tasks_table(rows: list[dict[str, Any]]) -> Table:
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
        name = r["name"] + (f"\n{r['doc']}" if r["doc"] else "")
        add_row(t, name, metric, args if not r["error"] else f"broken: {r['error']}", r["source"])
    return t


TASKS_FOOTER = (
    "Also usable without registering: --task package.module:Class or --task path/to/file.py:Class",
    "Check a plugin against the contract: maskprobe tasks --check NAME [--task-arg key=value] [--checkpoint CKPT]",
)


def check_lines(report: Any) -> list[str]:
    return [f"Checking {report.task}", *(f"  ok    {line}" for line in report.passed),
            *(f"  FAIL  {line}" for line in report.problems), *(f"  SKIP  {line}" for line in report.skipped)]  # fmt: skip


def check_payload(report: Any) -> dict[str, Any]:
    return {"schema": "maskprobe.task-check/1", "task": report.task, "ok": report.ok, "passed": report.passed,
            "problems": report.problems, "skipped": report.skipped}  # fmt: skip
