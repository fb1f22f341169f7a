"""Options several commands share (typer annotations only: importing this loads neither torch nor a plugin)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

# train --help groups its options in panels, so that each panel's table gives the descriptions room at 80 columns
METHOD = "Method (docs/method.md)"
WEIGHTS = "Which weights get a mask"
RUNNING = "Running, resuming, storing"


def in_panel(panel: str, metavar: str, help: str, *flags: str, **extra: Any) -> Any:
    """An option of ``panel`` in --help (``metavar`` "": an on/off switch, no type printed after it)."""
    return typer.Option(*flags, rich_help_panel=panel, metavar=metavar, help=help, **extra)


# which parameters get a mask (train, inspect); defaults: config.Selection's
Include = Annotated[
    list[str], in_panel(WEIGHTS, "GLOB", "Glob(s) of parameter names to mask (replaces the default rule).", "--include")
]
Exclude = Annotated[list[str], in_panel(WEIGHTS, "GLOB", "Glob(s) of parameter names not to mask.", "--exclude")]
MaskBiases = Annotated[bool, in_panel(WEIGHTS, "", "Mask biases too.", "--mask-biases")]
MaskNorms = Annotated[
    bool, in_panel(WEIGHTS, "", "Mask norm gains (off by default: docs/method.md).", "--mask-norms/--no-mask-norms")
]
Json = Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON object on stdout instead of tables.")]
Tasks = Annotated[
    list[str], typer.Option("--task", "-t", metavar="TASK", help="Task: entry-point name, module:Class or file.py:Class.")
]
TaskArgs = Annotated[
    list[str],
    typer.Option(
        "--task-arg",
        metavar="KEY=VALUE",
        help="key=value for the tasks (typed from their __init__); TASK:key=value or N:key=value for one task only "
        "(its name, or its place among the --task options, from 1).",
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model", metavar="MODULE:FN", help="Architecture factory for weights-only checkpoints (package.module:function)."
    ),
]
ModelArgs = Annotated[
    list[str], typer.Option("--model-arg", metavar="KEY=VALUE", help="key=value passed to the --model factory.")
]
Trust = Annotated[
    bool, typer.Option("--trust-checkpoint", metavar="", help="Allow unpickling arbitrary objects (runs code from the file!).")
]
TrustMaskTasks = Annotated[
    bool,
    typer.Option(
        "--trust-mask-tasks",
        metavar="",
        help="Rebuild a mask's recorded task even if its ref is a file path or a module not installed as a task "
        "(imports code named inside the mask file!).",
    ),
]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress output.")]
AllowMismatch = Annotated[
    bool, typer.Option("--allow-mismatch", metavar="", help="Use masks recorded from other weights or architecture.")
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        metavar="N",
        help="CPU threads for torch and the mask kernels (default: the cores torch sees, at most 2 per busy core "
        "measured free; docs/benchmarks.md).",
    ),
]
