"""``maskprobe compare``: structural overlap, with a checkpoint the functional ablation; thresholds for CI
(exit 1 with one line per violation), a baseline to measure moves, markdown/JSON output, plots, and
``--group`` for mean ± std over several mask files per task."""

from __future__ import annotations

import sys
from typing import Any

from ..errors import BadInputError, CheckFailed, MaskFileError


def run_compare(
    *,
    masks,
    checkpoint,
    task,
    task_arg,
    model,
    model_arg,
    trust_checkpoint,
    keep_io,
    io_layer=(),
    group=(),
    seed,
    device,
    allow_mismatch,
    min_specialize=(),
    max_reuse=(),
    max_iou=(),
    max_iomin=(),
    min_density=(),
    baseline=None,
    max_regression=None,
    plot=None,
    output_format="table",
    json_out=False,
    quiet,
) -> None:
    from ..checks import compare_baseline, evaluate_thresholds, load_baseline
    from ..cli import _stderr, _stdout, real_stdout
    from ..progress import status_line
    from ..render import dumps

    fmt = "json" if json_out else output_format
    if fmt not in ("table", "json", "markdown"):
        raise BadInputError(f"--format must be table, json or markdown, got {output_format!r}")
    if max_regression is not None and baseline is None:
        raise BadInputError("--max-regression needs --baseline OLD.json")
    if keep_io and checkpoint is None:
        raise BadInputError("--keep-io changes the ablation: it needs --checkpoint")
    if group and task:
        raise BadInputError("--task gives one task per mask file; with --group the tasks come from the masks' metadata")
    old = load_baseline(baseline) if baseline is not None else None  # bad input before any long work
    if plot is not None:
        from ..plots import require_matplotlib

        require_matplotlib()
    say = status_line(_stderr(), quiet or fmt != "table")
    _refuse_repeated_files(list(masks))
    if group:
        from ..groups import group_files, match_runs

        groups = group_files(masks, group)
        runs = match_runs(groups)
    else:
        if len(masks) < 2:
            raise BadInputError("compare needs at least two mask files")
        groups, runs = None, [list(masks)]
    single = None
    reports = []
    for k, run in enumerate(runs):
        if len(runs) > 1:
            say(f"run {k + 1}/{len(runs)}: {', '.join(p.name for p in run)}")
        single = _analyse(run, checkpoint, task, task_arg, model, model_arg, trust_checkpoint, keep_io, io_layer, seed,
                          device, allow_mismatch, say)  # fmt: skip
        reports.append(single[2])
    report = reports[0] if groups is None else _group_report(reports, groups, runs)
    checks = evaluate_thresholds(
        report, min_specialize=min_specialize, max_reuse=max_reuse, max_iou=max_iou, max_iomin=max_iomin, min_density=min_density
    )
    if old is not None:
        moved = compare_baseline(old, report, max_regression)
        checks += moved.pop("checks")
        report["baseline"] = {"path": str(baseline), **moved}
    report["checks"] = checks
    report["passed"] = all(c["passed"] for c in checks)
    if plot is not None:
        from ..plots import plot_compare

        files = runs[0] if groups is None and len(runs[0]) <= 4 else None
        for path in plot_compare(report, plot, masks=files):
            say(f"wrote {path}")
    out = _stdout()
    if fmt == "json":
        out.out(dumps(report))
    elif fmt == "markdown" or groups is not None:
        from ..markdown import compare_markdown

        real_stdout().write(compare_markdown(report))
        real_stdout().flush()
    else:
        _print_tables(out, single[0], single[1], report)  # type: ignore[index]
    failed = [c for c in checks if not c["passed"]]
    for c in failed:  # one line per violation, where a CI log shows it
        print(f"FAIL {c['reason']}", file=sys.stderr)
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(checks)} checks failed")


def _analyse(paths, checkpoint, task, task_arg, model, model_arg, trust, keep_io, io_layer, seed, device, allow_mismatch, say):
    """(overlap, ablation or None, report) for one set of mask files."""
    from ..analysis import overlap
    from ..render import compare_json

    ov = overlap(paths, allow_mismatch=allow_mismatch, io=io_layer)
    ab = None
    if checkpoint is not None:
        ab, ov = _ablate(ov, paths, checkpoint, task, task_arg, model, model_arg, trust, keep_io, io_layer, seed, device,
                         allow_mismatch, say)  # fmt: skip
    names = list(ov.tasks)
    ov.tasks = unique_labels(names)  # two masks of one task: arith-add#1, arith-add#2 in every table and the ablation
    if ab is not None:
        ab.tasks = unique_labels(ab.tasks)
    report = compare_json(ov, ab)
    for m, name, label in zip(report["masks"], names, ov.tasks, strict=True):
        m["task"], m["label"] = name, label
    return ov, ab, report


def unique_labels(names: list[str]) -> list[str]:
    """The names, with ``#1``, ``#2`` ... added where several masks share one (unique names stay as they are)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if names.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}#{seen[name]}"
        out.append(name)
    return out


def _refuse_repeated_files(masks: list[Any]) -> None:
    """The same mask file twice (also through a symlink or hard link) compares it with itself: refused."""
    import os

    seen: dict[tuple[int, int], Any] = {}
    for path in masks:
        try:
            st = os.stat(path)
        except OSError:
            continue  # reading it reports the problem
        first = seen.setdefault((st.st_dev, st.st_ino), path)
        if first is not path:
            raise BadInputError(f"{path} is given twice (the same file as {first}); compare needs different mask files")


def _group_report(reports: list[dict[str, Any]], groups: dict[str, Any], runs: list[list[Any]]) -> dict[str, Any]:
    """The mean report over runs, with ``std`` (same shape), ``runs`` and ``groups``."""
    from ..groups import aggregate

    mean, std = aggregate(reports)
    for m, name in zip(mean["masks"], groups, strict=True):
        m["path"] = f"{name} ({len(runs)} files)"
        m["task"] = m["label"] = name
    if mean.get("ablation"):
        mean["ablation"]["tasks"] = list(groups)
    mean["std"] = std
    mean["runs"] = [[str(p) for p in run] for run in runs]
    mean["groups"] = {name: [str(p) for p in files] for name, files in groups.items()}
    return mean


def _print_tables(out: Any, ov: Any, ab: Any, report: dict[str, Any]) -> None:
    from ..render import ablation_tables, baseline_table, overlap_table, pairwise_tables, scores_table

    out.print(overlap_table(ov, 0, 1))
    if len(ov.paths) > 2:
        for t in pairwise_tables(ov):
            out.print(t)
    if ab is not None:
        for t in ablation_tables(ab):
            out.print(t)
        out.print(scores_table(ab))
    if report.get("baseline"):
        out.print(baseline_table(report["baseline"]))
    for c in report.get("checks", []):
        out.print(f"{'PASS' if c['passed'] else 'FAIL'} {c['reason']}", markup=False)


def _ablate(ov, masks, checkpoint, task, task_arg, model, model_arg, trust, keep_io, io_layer, seed, device, allow_mismatch, say):
    from ..ablation import ablate
    from ..analysis import overlap
    from ..devices import resolve_device
    from ..maskfile import load_masks
    from ..session import open_checkpoint, resolve_tasks, tasks_from_masks

    if task:
        if len(task) != len(masks):
            raise BadInputError(f"give one --task per mask ({len(masks)}), or none to use the masks' metadata")
        tasks = resolve_tasks(task, task_arg)
    else:
        tasks = tasks_from_masks(ov.metadata, ov.paths)
    ckpt = open_checkpoint(checkpoint, [t for t, _ in tasks], model, model_arg, trust)
    verify_masks_fit(ckpt, ov.paths, ov.metadata, allow_mismatch)
    order = [n for n, _ in ckpt.model.named_parameters()]
    ov = overlap(masks, allow_mismatch=allow_mismatch, order=order, io=io_layer)  # model order for the I/O layers
    say(f"ablating {len(masks)} masks on {checkpoint} ...")
    ab = ablate(
        ckpt.model,
        [t for t, _ in tasks],
        [load_masks(p).masks for p in masks],
        device=resolve_device(device),
        seed=seed,
        keep_io=keep_io,
        io=[c.name for c in ov.layers if c.role != "hidden"] if keep_io else None,
        progress=say,
    )
    return ab, ov


def verify_masks_fit(ckpt: Any, paths, metas, allow_mismatch: bool) -> None:
    """Every mask tensor names a parameter of the checkpoint with the same shape; recorded hashes agree."""
    params = {n: tuple(p.shape) for n, p in ckpt.model.named_parameters()}
    from ..maskfile import open_masks

    for path, meta in zip(paths, metas, strict=True):
        with open_masks(path) as r:
            for name in r.names:
                if name not in params:
                    raise MaskFileError(
                        f"{path} masks {name!r}, which {ckpt.path} does not have: the mask belongs to another model"
                    )
                if r.shape(name) != params[name]:
                    raise MaskFileError(
                        f"{path}: {name!r} has shape {r.shape(name)} but the checkpoint's is "
                        f"{params[name]}: the mask belongs to another model"
                    )
        sha = (meta.get("checkpoint") or {}).get("sha256")
        if sha and sha != ckpt.sha256 and not allow_mismatch:
            raise MaskFileError(
                f"{path} was trained on another checkpoint (sha256 {sha[:12]}, this one "
                f"{ckpt.sha256[:12]}); pass --allow-mismatch if that is intended"
            )
