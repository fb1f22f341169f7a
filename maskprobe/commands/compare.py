"""``maskprobe compare``: parse the flags, call :func:`maskprobe.measure.compare.compare`, render the report.

Exit codes: 0 every check holds, 1 a check failed (one ``FAIL`` line each on stderr), 2 bad input, 3 a broken
task plugin (docs/compare.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import CONTROL_SEED, SEED_MAX, SEED_MIN
from .options import AllowMismatch, Device, Model, ModelArgs, Quiet, TaskArgs, Trust, TrustMaskTasks


def compare(
    masks: Annotated[
        list[Path] | None, typer.Argument(metavar="MASK...", help="Two or more mask files over the same checkpoint.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Run the functional ablation on this checkpoint.")
    ] = None,
    task: Annotated[
        list[str], typer.Option("--task", "-t", help="Task per mask, in order (default: from each mask's metadata).")
    ] = [],
    task_arg: TaskArgs = [],
    trust_mask_tasks: TrustMaskTasks = False,
    model: Model = None,
    model_arg: ModelArgs = [],
    trust_checkpoint: Trust = False,
    keep_io: Annotated[
        bool, typer.Option("--keep-io", help="Paper's 'first full mask' variant: never remove input/output layer weights.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random-removal controls.")] = CONTROL_SEED,
    device: Device = "auto",
    allow_mismatch: AllowMismatch = False,
    io_layer: Annotated[
        list[str],
        typer.Option(
            "--io-layer", help="Glob of the input/output layers' tensors, or 'none' (default: the roles recorded at train time)."
        ),
    ] = [],
    group: Annotated[
        list[str],
        typer.Option("--group", help="'task': several files per task, mean ± std over runs; or NAME=GLOB per task (no MASK)."),
    ] = [],
    min_specialize: Annotated[
        list[str], typer.Option("--min-specialize", help="Exit 1 if P_specialize < X; TASK=X: that task's S_i.")
    ] = [],
    max_reuse: Annotated[list[str], typer.Option("--max-reuse", help="Exit 1 if P_reuse > X; A:B=X: R[A->B].")] = [],
    max_iou: Annotated[list[str], typer.Option("--max-iou", help="Exit 1 if any pair's total IoU > X; A:B=X: that pair.")] = [],
    max_iomin: Annotated[list[str], typer.Option("--max-iomin", help="Exit 1 if any pair's total IoMin > X; A:B=X.")] = [],
    min_density: Annotated[list[str], typer.Option("--min-density", help="Exit 1 if a mask's density < X; TASK=X.")] = [],
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="A previous compare JSON: report what moved and by how much.")
    ] = None,
    max_regression: Annotated[
        float | None, typer.Option("--max-regression", help="With --baseline: exit 1 if P_specialize fell or P_reuse rose more.")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write PNG figures into this folder (the plot extra).")] = None,
    plot_tensors: Annotated[
        bool, typer.Option("--plot-tensors", help="With --plot: also one kept-weights figure per tensor (DIR/tensors/).")
    ] = False,
    output_format: Annotated[str, typer.Option("--format", help="table, json or markdown (CI job summaries).")] = "table",
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    quiet: Quiet = False,
) -> None:
    """Per-layer overlap of masks against chance; with --checkpoint, ablations and specialization/reuse scores.

    Exit codes: 0 all checks hold, 1 a check failed (one FAIL line each on stderr), 2 bad input.
    """
    import sys

    from .. import console
    from ..devices import resolve_device
    from ..errors import BadInputError, CheckFailed
    from ..measure.compare import compare as run_compare
    from ..measure.compare import compare_groups
    from ..measure.thresholds import Thresholds, load_baseline
    from ..progress import status_line
    from ..tasks.args import resolve_tasks

    fmt = "json" if json_out else output_format
    if fmt not in ("table", "json", "markdown"):
        raise BadInputError(f"--format must be table, json or markdown, got {output_format!r}")
    if group and task:
        raise BadInputError("--task gives one task per mask file; with --group the tasks come from the masks' metadata")
    if not SEED_MIN <= seed <= SEED_MAX:  # beyond it, an overflow inside torch after the long work
        raise BadInputError(f"--seed must be an integer from {SEED_MIN} to {SEED_MAX}, got {seed}")
    checks = Thresholds(
        min_specialize=min_specialize,
        max_reuse=max_reuse,
        max_iou=max_iou,
        max_iomin=max_iomin,
        min_density=min_density,
        baseline=load_baseline(baseline) if baseline is not None else None,
        baseline_path=str(baseline or ""),
        max_regression=max_regression,
    )  # fmt: skip  (bad input fails here, before any long work)
    if checks.functional_flag and checkpoint is None:
        raise BadInputError(f"{checks.functional_flag} needs --checkpoint (it is a functional score)")
    groups = None
    if group:
        from ..measure.groups import group_files

        groups = group_files(masks or [], group)
    if plot_tensors and plot is None:
        raise BadInputError("--plot-tensors needs --plot DIR (the folder the figures go to)")
    if plot is not None:
        from ..learning.outputs import refuse_writing_into_checkpoints
        from ..render.plots import check_plot_folder, require_matplotlib

        require_matplotlib()
        check_plot_folder(plot)  # before any work: a folder that cannot be made is one line, not exit 70
        files = [f for fs in groups.values() for f in fs] if groups else masks or []
        refuse_writing_into_checkpoints("--plot", plot, [checkpoint, *_recorded_checkpoints(files)])
    say = status_line(console.err(), quiet or fmt != "table")
    tasks = [t for t, _ in resolve_tasks(task, task_arg)] if task else None
    opener, run_device = None, resolve_device(device)
    if checkpoint is not None:
        from ..loading.checkpoints import load_checkpoint, parse_model_args

        margs = parse_model_args(model_arg)

        def opener(tasks):  # read onto the run's device, so the ablation makes no copy
            return load_checkpoint(
                checkpoint, tasks=tasks, model=model, model_args=margs, trust=trust_checkpoint, device=run_device
            )

    kwargs = dict(tasks=tasks, keep_io=keep_io, io=io_layer or None, seed=seed, device=run_device,
                  allow_mismatch=allow_mismatch, thresholds=checks, progress=say, open_checkpoint=opener,
                  task_args=() if task else task_arg, trust_tasks=trust_mask_tasks)  # fmt: skip
    if groups is not None:
        kwargs.pop("tasks")
        report = compare_groups(groups, **kwargs)
    else:
        report = run_compare(masks or [], **kwargs)
    data = report.to_dict()
    foreign = [Path(m["path"]).name for m in data["masks"] if m.get("foreign")]
    if foreign and not quiet:  # a mask from another tool: counted like any other, but nothing says where it came from
        console.err().print(
            f"maskprobe: note: {', '.join(foreign)}: no maskprobe metadata (a mask from another tool): labelled by file "
            "name; task, checkpoint and training unknown", markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    if plot is not None:
        from ..render.plots import plot_compare

        for path in plot_compare(data, plot, masks=None if group or len(masks or []) > 4 else masks, per_tensor=plot_tensors):
            say(f"wrote {path}")
    if fmt == "json":
        from ..render import dumps

        console.print_json(dumps(data))
    elif fmt == "markdown":
        from ..render.markdown import compare_markdown

        stream = console.results_stream()
        stream.write(compare_markdown(data))
        stream.flush()
    else:
        from ..render.compare import compare_tables

        o = console.out()
        for item in compare_tables(data, o.width):
            o.print(item, markup=False) if isinstance(item, str) else o.print(item)
    failed = [c for c in report.checks if not c["passed"]]
    if fmt != "table" or not _same_terminal():  # the tables already showed them on this screen
        for c in failed:  # one line per violation, where a CI log shows it
            print(f"FAIL {c['reason']}", file=sys.stderr)
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(report.checks)} checks failed")


def _same_terminal() -> bool:
    """stdout and stderr are one terminal (a FAIL line in the tables and again on stderr would show twice)."""
    import os

    try:
        return os.isatty(1) and os.isatty(2) and os.ttyname(1) == os.ttyname(2)
    except OSError:
        return False


def _recorded_checkpoints(masks: list[Path]) -> list[str]:
    """The checkpoints the masks record (absolute paths only: a relative one was relative to another directory);
    a file that cannot be read is left to compare to report."""
    from ..errors import MaskprobeError
    from ..masks.maskfile import open_masks

    out = []
    for m in masks:
        try:
            with open_masks(m) as reader:
                ckpt = reader.metadata.get("checkpoint")
        except MaskprobeError:
            continue
        path = ckpt.get("path") if isinstance(ckpt, dict) else None
        if isinstance(path, str) and Path(path).is_absolute():
            out.append(path)
    return out
