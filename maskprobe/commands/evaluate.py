"""``maskprobe evaluate``: task metrics on the checkpoint, unmasked or under a mask."""

from __future__ import annotations


def run_evaluate(
    *, checkpoint, task, mask, invert, task_arg, model, model_arg, trust_checkpoint, device, allow_mismatch, json_out
) -> None:
    from ..cli import _stdout
    from ..devices import resolve_device
    from ..errors import BadInputError
    from ..evaluation import evaluate_task
    from ..masked import masked_weights
    from ..maskfile import load_masks
    from ..render import dumps, metric_table
    from ..session import open_checkpoint, resolve_tasks
    from .compare import verify_masks_fit

    if invert and mask is None:
        raise BadInputError("--invert needs --mask")
    tasks = resolve_tasks(task, task_arg)
    ckpt = open_checkpoint(checkpoint, [t for t, _ in tasks], model, model_arg, trust_checkpoint)
    dev = resolve_device(device)
    ckpt.model.to(dev)  # with or without a mask: the task's batches go to dev (evaluate_task)
    overrides = None
    if mask is not None:
        ms = load_masks(mask)
        verify_masks_fit(ckpt, [ms.path], [ms.metadata], allow_mismatch)
        keep = {n: (~m if invert else m) for n, m in ms.masks.items()}
        overrides = masked_weights(ckpt.model, keep)
    rows = []
    for t, _ in tasks:
        full = evaluate_task(ckpt.model, t, device=dev)
        masked = evaluate_task(ckpt.model, t, overrides, device=dev) if overrides is not None else None
        rows.append((t.name, full, masked))
    out = _stdout()
    if json_out:
        out.out(
            dumps(
                {
                    "schema": "maskprobe.evaluate/1",
                    "checkpoint": ckpt.to_dict(),
                    "mask": str(mask) if mask else None,
                    "invert": invert,
                    "results": [
                        {"task": n, "metric": t.metric, "unmasked": f, "masked": m}
                        for (n, f, m), (t, _) in zip(rows, tasks, strict=True)
                    ],
                }
            )
        )
    else:
        how = "" if mask is None else (f" with {mask} removed" if invert else f" with only {mask} kept")
        out.print(metric_table(f"{checkpoint}{how}", rows))
