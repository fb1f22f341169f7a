"""``maskprobe compare``: structural overlap, and with a checkpoint the functional ablation."""

from __future__ import annotations

from typing import Any

from ..errors import BadInputError, CheckFailed, MaskFileError


def check_thresholds(
    ov: Any, ab: Any | None, *, min_specialize: float | None, max_reuse: float | None, max_iou: float | None
) -> list[dict[str, Any]]:
    """One record per requested check: name, value, threshold, passed."""
    checks = []
    scores = ab.scores() if ab is not None else None
    for name, limit, kind in (("p_specialize", min_specialize, "min"), ("p_reuse", max_reuse, "max")):
        if limit is None:
            continue
        if scores is None:
            raise BadInputError(
                f"--{'min-specialize' if kind == 'min' else 'max-reuse'} needs --checkpoint (it is a functional score)"
            )
        value = scores[name]
        ok = value == value and (value >= limit if kind == "min" else value <= limit)
        checks.append({"check": f"{kind}:{name}", "value": value, "threshold": limit, "passed": bool(ok)})
    if max_iou is not None:
        n = ov.total.n
        for i in range(n):
            for j in range(i + 1, n):
                v = ov.total.iou(i, j)
                checks.append(
                    {"check": f"max:iou[{ov.tasks[i]},{ov.tasks[j]}]", "value": v, "threshold": max_iou, "passed": v <= max_iou}
                )
    return checks


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
    seed,
    device,
    allow_mismatch,
    min_specialize,
    max_reuse,
    max_iou,
    json_out,
    quiet,
) -> None:
    from ..analysis import overlap
    from ..cli import _stderr, _stdout
    from ..progress import status_line
    from ..render import ablation_tables, compare_json, dumps, overlap_table, pairwise_tables, scores_table

    if len(masks) < 2:
        raise BadInputError("compare needs at least two mask files")
    say = status_line(_stderr(), quiet or json_out)
    ov = overlap(masks, allow_mismatch=allow_mismatch)
    ab = None
    if checkpoint is not None:
        ab, ov = _ablate(
            ov, masks, checkpoint, task, task_arg, model, model_arg, trust_checkpoint, keep_io, seed, device, allow_mismatch, say
        )
    checks = check_thresholds(ov, ab, min_specialize=min_specialize, max_reuse=max_reuse, max_iou=max_iou)
    out = _stdout()
    if json_out:
        out.out(dumps(compare_json(ov, ab, checks)))
    else:
        out.print(overlap_table(ov, 0, 1))
        if len(masks) > 2:
            for t in pairwise_tables(ov):
                out.print(t)
        if ab is not None:
            for t in ablation_tables(ab):
                out.print(t)
            out.print(scores_table(ab))
        for c in checks:
            out.print(f"{'PASS' if c['passed'] else 'FAIL'} {c['check']} = {c['value']:.4f} (threshold {c['threshold']})")
    failed = [c for c in checks if not c["passed"]]
    if failed:
        raise CheckFailed("; ".join(f"{c['check']} = {c['value']:.4f} violates {c['threshold']}" for c in failed))


def _ablate(ov, masks, checkpoint, task, task_arg, model, model_arg, trust, keep_io, seed, device, allow_mismatch, say):
    from ..ablation import ablate
    from ..analysis import overlap
    from ..maskfile import load_masks
    from ..session import open_checkpoint, resolve_tasks, tasks_from_masks
    from ..training import resolve_device

    if task:
        if len(task) != len(masks):
            raise BadInputError(f"give one --task per mask ({len(masks)}), or none to use the masks' metadata")
        tasks = resolve_tasks(task, task_arg)
    else:
        tasks = tasks_from_masks(ov.metadata, ov.paths)
    ckpt = open_checkpoint(checkpoint, [t for t, _ in tasks], model, model_arg, trust)
    verify_masks_fit(ckpt, ov.paths, ov.metadata, allow_mismatch)
    order = [n for n, _ in ckpt.model.named_parameters()]
    ov = overlap(masks, allow_mismatch=allow_mismatch, order=order)  # re-read in model order for the tables
    say(f"ablating {len(masks)} masks on {checkpoint} ...")
    ab = ablate(
        ckpt.model,
        [t for t, _ in tasks],
        [load_masks(p).masks for p in masks],
        device=resolve_device(device),
        seed=seed,
        keep_io=keep_io,
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
