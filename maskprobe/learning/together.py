"""Several masks on one frozen model, trained together: ``train --together`` (issue 23 item 4).

Each mask keeps its own loop (:func:`maskprobe.learning.training.steps`: its data, noise, regulariser, checks,
progress and result, exactly as alone); they advance in lockstep, and at every step the backward passes that can
run as one computation do: the masks' K samples each, stacked, in one ``torch.func.vmap`` over the shared module
(:func:`backward_together`), one forward and one backward for all. Masks can run together when they train the
same task object (a ``--seeds`` or ``--beta`` sweep of one ``--task``) at the same step with the same chunk
shapes, ``--precision`` and module, and hold no ``--fix`` tensors; others run their own backward, as alone. The
noise of every sample is the one it has alone (the counter hash of seed, step and sample), so a mask trained
together equals the one trained alone up to float rounding (tests/test_together.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .engine import FusedEngine, stack_chunks, vmap_backward


def train_together(module: Any, tasks: Sequence[tuple[Any, Any]], configs: Sequence[Any], labels: Sequence[str],
                   reporter: Any, should_stop: Any, save_every: int, snapshots: Sequence[Any],
                   resumes: Sequence[Any] | None = None) -> list[Any]:  # fmt: skip
    """Train one mask per ``(task, ref)`` with its config on ``module``, together; one result (a MaskResult, or the
    exception its loop raised) per mask, in order. Each mask's progress bar, snapshots and stop are its own;
    ``resumes``: per mask the saved :class:`~maskprobe.learning.statefile.TrainState` to go on from, or None."""
    from ..devices import module_on
    from ..interrupts import polled
    from .masked import frozen
    from .training import steps, tf32_for

    module = module_on(module, torch.device(configs[0].device))  # one copy for all, when the caller's is elsewhere
    with contextlib.ExitStack() as stack:
        # the loops enter these too, and leave them in any order: entered once around all of them, each loop's
        # own entry and exit only sees (and restores) this state
        stack.enter_context(frozen(module))
        stack.enter_context(polled(should_stop))
        for precision in sorted({c.precision for c in configs}):
            stack.enter_context(tf32_for(precision))
        loops = []
        resumes = resumes or [None] * len(tasks)
        for (task, ref), cfg, label, snapshot, state in zip(tasks, configs, labels, snapshots, resumes, strict=True):
            engine = FusedEngine(module, cfg)
            if state is not None:
                engine.load_state(state)
            # one mask left (the others finished before a --resume) runs, and is recorded, as alone
            engine.together = (
                "alone (--fix-from tensors are held fixed)" if engine.fixed else "together" if len(tasks) > 1 else None
            )
            callback = stack.enter_context(reporter.progress(label, cfg.steps, state.step if state else 0))
            loops.append(steps(engine, task, ref, cfg, callback=callback, should_stop=should_stop, resume=state,
                               save_every=save_every, on_snapshot=snapshot))  # fmt: skip
        return run_together(loops)


def run_together(loops: Sequence[Any]) -> list[Any]:
    """Drive :func:`~maskprobe.learning.training.steps` generators in lockstep to their results (a
    :class:`~maskprobe.learning.training.MaskResult`, or the exception a loop raised: the other loops go on)."""
    results: list[Any] = [None] * len(loops)
    pending: dict[int, Any] = {}
    alone: set[int] = set()  # loops whose engines could not run with others (the reason is on the engine)

    def advance(i: int, send: Any = None, throw: BaseException | None = None, start: bool = False) -> None:
        try:
            pending[i] = next(loops[i]) if start else loops[i].throw(throw) if throw is not None else loops[i].send(send)
        except StopIteration as stop:
            results[i] = stop.value
        except BaseException as exc:  # noqa: BLE001 - the caller raises it once the others are done
            results[i] = exc

    for i in range(len(loops)):
        advance(i, start=True)
    while pending:
        groups: dict[Any, list[int]] = {}
        for i, request in pending.items():
            groups.setdefault(None if i in alone else _key(request), []).append(i)
        for key, members in groups.items():
            requests = [pending.pop(i) for i in members]
            outs = None
            if key is not None and len(members) > 1:
                try:
                    outs = backward_together(requests)
                except (KeyboardInterrupt, Exception) as exc:
                    if isinstance(exc, KeyboardInterrupt):
                        for i in members:
                            advance(i, throw=exc)
                        continue
                    why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                    for i, r in zip(members, requests, strict=True):
                        alone.add(i)
                        r.engine.together = f"alone (together failed: {why})"
            if outs is not None:
                for i, out in zip(members, outs, strict=True):
                    advance(i, send=out)
                continue
            for i, r in zip(members, requests, strict=True):
                try:
                    out = r.run()
                except BaseException as exc:  # noqa: BLE001 - raised in its loop, where it asked
                    advance(i, throw=exc)
                else:
                    advance(i, send=out)
    return results


def _key(request: Any) -> Any:
    """What masks must share to run one backward together (None: this one runs alone)."""
    engine = request.engine
    if getattr(engine, "together", None) != "together":
        return None
    return (id(request.task), request.step, len(request.share), request.k, request.config.precision,
            id(engine.module), str(engine.device))  # fmt: skip


def backward_together(requests: Sequence[Any]) -> list[float | Tensor] | None:
    """One step of several masks (:class:`~maskprobe.learning.training.Backward` each) as one vmap: every mask's
    samples drawn into its stacked buffers (:meth:`MaskLogits.sample_stacked`, bitwise its samples alone),
    concatenated, run on the stacked chunks with the first mask's ``loss_of`` (the same task and step for all),
    and one backward; each engine gets its samples' gradients and its own loss, summed in the order of its loop.
    None when the chunks cannot be stacked (the masks then run alone this step)."""
    first = requests[0]
    n = len(first.share)
    stacked = stack_chunks([r.chunks[j] for r in requests for j in r.share])
    if stacked is None:  # e.g. text batches padded to other lengths: alone this step, together again after
        return None
    for r in requests:
        r.engine.mask.sample_offset = r.share.start
    return vmap_backward([r.engine for r in requests], first.step, n, [r.k for r in requests], stacked, first.loss_of)
