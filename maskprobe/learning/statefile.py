"""The ``.state.pt`` file beside a mask: what an interrupted run learned, and what must agree to resume it.

Written on SIGINT/SIGTERM, on a NaN (the last good state), every ``--save-every`` steps and when the final mask
cannot be written; read by ``--resume``. A ``torch.save`` dict (read back with ``weights_only=True``): the
format tag, the resume key (:func:`resume_key`) and :meth:`TrainState.to_dict`. :func:`save_interrupted` and
:func:`save_on_nan` save it when a run stops and give the one line that says where it is and how to go on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInputError, Interrupted, NumericalError

if TYPE_CHECKING:
    from torch import Tensor

FORMAT = "maskprobe.state/1"


@dataclass
class TrainState:
    """Everything needed to continue a run bitwise: logits, Adam state, step count, progress history."""

    step: int
    logits: dict[str, Tensor]
    optimizer: dict[str, Any]
    noise_rng: Tensor  # the seed's bytes: the noise is a hash of (seed, step), there is no RNG state
    history: list[list[float]]
    controller: dict[str, Any] | None = None  # --keep: maskprobe.learning.controller.KeepController.state()

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "logits": self.logits, "optimizer": self.optimizer, "noise_rng": self.noise_rng,
                "history": self.history, **({"controller": self.controller} if self.controller is not None else {})}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(int(d["step"]), d["logits"], d["optimizer"], d["noise_rng"], d.get("history", []), d.get("controller"))


def resume_key(config: Any, task_ref: Any, sha256: str) -> dict[str, str]:
    """What a state file must agree on to be resumed: settings, selection, task and its arguments, checkpoint."""
    return {
        "hparams": repr(sorted(config.hparams().items())),
        "selection": json.dumps(config.selection.to_dict(), sort_keys=True),
        "task": task_ref.to_json(),
        "checkpoint_sha256": sha256,
    }


# where a mask runs, not what it is: a mask is the same function of the seed on every device and backend
_PLACEMENT = ("device", "backend")
_NOT_SETTINGS = ("regulariser", "controller", *_PLACEMENT)


def _plain(value: Any) -> Any:
    """``value`` as it reads back from a mask file's JSON metadata (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finished_differences(metadata: dict[str, Any], config: Any, task_ref: Any, checkpoint: Any) -> list[str]:
    """How a finished mask's recorded settings differ from a requested run's: ``"steps 20, asked 40"`` each.

    Compared: the task's ref and arguments, every hyper-parameter but where it ran (device, backend), the
    selection, and the checkpoint (a :class:`~maskprobe.loading.checkpoints.Checkpoint`: by the identity the mask
    records, or by the file's SHA-256 for masks written before identities).
    """
    out = []
    task = metadata.get("task") if isinstance(metadata.get("task"), dict) else {}
    asked_task = _plain({"ref": task_ref.ref, "args": task_ref.args})
    for key, what in (("ref", "task"), ("args", "task arguments")):
        if _plain(task.get(key)) != asked_task[key]:
            out.append(f"{what} {_short(task.get(key))}, asked {_short(asked_task[key])}")
    recorded = metadata.get("hparams") if isinstance(metadata.get("hparams"), dict) else {}
    recorded = {k: v for k, v in recorded.items() if k not in _NOT_SETTINGS}
    asked = {k: v for k, v in _plain(config.hparams()).items() if k not in _NOT_SETTINGS}
    for key in sorted(set(recorded) | set(asked)):
        if recorded.get(key) != asked.get(key):
            out.append(f"{key} {_short(recorded.get(key))}, asked {_short(asked.get(key))}")
    selection = _plain(config.selection.to_dict())
    if _plain(metadata.get("selection")) != selection:
        out.append(f"selection {_short(metadata.get('selection'))}, asked {_short(selection)}")
    from ..masks.masksets import fits_recorded

    recorded_ckpt = metadata.get("checkpoint") if isinstance(metadata.get("checkpoint"), dict) else {}
    differ = fits_recorded(recorded_ckpt, checkpoint)  # as evaluate and compare check a mask against a checkpoint
    if differ:
        out.append(f"another checkpoint ({differ})")
    return out


def check_finished(path: Path, config: Any, task_ref: Any, checkpoint: Any) -> None:
    """``--resume`` skips the finished mask ``path`` only when it was made with the requested settings.

    Raises:
        BadInputError: what differs (at most three settings), and how to proceed; or an unreadable mask file.
    """
    from ..masks.maskfile import open_masks

    with open_masks(path) as reader:
        differ = finished_differences(reader.metadata, config, task_ref, checkpoint)
    if differ:
        more = f"; and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise BadInputError(
            f"--resume: {path} is finished but was made with other settings ({'; '.join(differ[:3])}{more}); "
            "pass --force to train it again with these, or write to another --out"
        )


def save_state(path: Path, state: Any, key: dict[str, str]) -> None:
    """Write the state atomically (rank 0 only under torchrun; every rank agrees on the outcome).

    Raises:
        BadInputError: the file cannot be written (disk full, no permission).
    """
    import torch

    from ..atomic import atomic_write
    from . import distributed

    payload = {"format": FORMAT, **key, **state.to_dict()}
    distributed.on_main(distributed.current(), lambda: atomic_write(path, lambda tmp: torch.save(payload, tmp)))


def load_state(path: Path, key: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> Any:
    """The :class:`TrainState` in ``path``, after checking it belongs to this run.

    Raises:
        BadInputError: unreadable, not a state file, made with other settings/task/checkpoint, or logits that do
            not fit the masked parameters.
    """
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(f"cannot resume: {path} is not a readable state file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInputError(f"cannot resume: {path} is not a maskprobe state file")
    differ = [k for k, v in key.items() if payload.get(k) != v]
    if differ:
        what = {"hparams": "settings", "selection": "--include/--exclude/--mask-biases/--mask-norms", "task": "task arguments"}
        raise BadInputError(
            f"cannot resume from {path}: it was made with other {', '.join(what.get(k, 'checkpoint') for k in differ)}; "
            "rerun with the same flags and checkpoint, or pass --force instead of --resume to start over"
        )
    try:
        state = TrainState.from_dict(payload)
        bad = sorted(set(shapes) ^ set(state.logits)) or [n for n in shapes if tuple(state.logits[n].shape) != shapes[n]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"cannot resume: {path} is damaged ({type(exc).__name__}: {exc})") from None
    if bad:
        raise BadInputError(f"cannot resume from {path}: its logits do not fit the masked parameters (first: {bad[0]!r})")
    return state


def save_on_nan(exc: NumericalError, plan: Any, key: dict[str, str]) -> NumericalError:
    """Save the last good state a NaN/inf left (``exc.state``) beside the mask; the error to raise, saying where it is."""
    if exc.state is not None:
        try:
            save_state(plan.state, exc.state, key)
        except BadInputError as write_error:
            return NumericalError(f"{exc}; the last good state could not be saved ({write_error})")
    where = (
        f"the last good state is in {plan.state} (--resume continues from it)" if plan.state.exists() else "no state was saved"
    )
    return NumericalError(f"{exc}; {where}")


def save_interrupted(result: Any, plan: Any, key: dict[str, str], should_stop: Any, written: list[Path],
                     others: int = 0) -> None:  # fmt: skip
    """Save the state of a run a signal stopped (no further signal interrupts the save) and raise Interrupted,
    whose one line says where it stopped, what was kept and how to continue (``others``: the states of that many
    more masks, stopped with it under ``--together``, already saved)."""
    import shlex
    import sys

    from ..interrupts import by, held, signum_of

    signum = signum_of(should_stop)
    steps = f"step {result.steps_run}/{result.config.steps}"
    where = f"at {steps} of {result.task.name}"
    if result.steps_run >= result.config.steps:
        where = f"after training {result.task.name} ({steps}), before its final evaluation finished"
    where = f"by {by(should_stop)} {where}" + (f" (kept: {', '.join(str(p) for p in written)})" if written else "")
    try:
        with held(should_stop):
            save_state(plan.state, result.state, key)
    except BadInputError as write_error:
        raise Interrupted(f"interrupted {where}; the state could not be saved ({write_error})", signum) from None
    cmd = " ".join(shlex.quote(a) for a in ["maskprobe", *sys.argv[1:]] if a not in ("--force", "--resume"))
    more = f" (and {others} more beside their masks)" if others else ""
    raise Interrupted(f"interrupted {where}; state saved to {plan.state}{more}; continue with: {cmd} --resume", signum)


class Snapshots:
    """``--save-every``: a snapshot that cannot be written (disk full) is a warning, not the end of the run; the
    last good snapshot stays in place (atomic writes) and training goes on."""

    def __init__(self, path: Path, key: dict[str, str], warn: Any) -> None:
        self.path, self.key, self.warn, self.failing = path, key, warn, False

    def __call__(self, state: Any) -> None:
        try:
            save_state(self.path, state, self.key)
        except BadInputError as exc:
            if not self.failing:  # once per stretch of failures, not every N steps
                kept = f"{self.path} keeps the last good snapshot" if self.path.exists() else "no snapshot is kept yet"
                self.warn(f"snapshot at step {state.step} failed ({exc}); training goes on, {kept}")
            self.failing = True
        else:
            self.failing = False
