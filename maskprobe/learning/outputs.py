"""Where a run may write: never the checkpoint (a file, a shard, or anything inside a checkpoint folder, whose
files are its identity), never over an earlier result without ``--force``/``--resume``; and ``--fix-from`` only
with a mask of the same checkpoint. ``train`` checks its outputs here before any work; ``compare --plot`` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInputError


def refuse_overwriting_checkpoint(checkpoint: Any, plans: list) -> None:
    """No output (mask, state or lock file) may be the checkpoint, one of its shards, or lie in its folder,
    whatever the flags: ``--force`` overwrites masks, never the network they were learned on."""
    import os

    from ..locking import lock_path

    path = Path(checkpoint)
    if not path.exists():
        return  # loading reports it
    files = [] if path.is_dir() else [path.resolve()]
    if not path.is_dir() and path.name.endswith(".index.json"):
        from ..errors import CheckpointError
        from ..loading.checkpoints import read_shard_index

        try:
            files += read_shard_index(path)[2]
        except CheckpointError:
            pass  # loading reports it
    for plan in plans:
        for target in (plan.mask, plan.state, lock_path(plan.mask)):
            resolved = target.resolve()
            if inside_checkpoint_folder(checkpoint, target):
                raise BadInputError(f"--out: {target} lies inside the checkpoint folder {checkpoint}; write the masks elsewhere")
            if resolved in files or (target.exists() and any(os.path.samefile(target, f) for f in files)):
                raise BadInputError(
                    f"--out: {target} is the checkpoint {checkpoint}; refusing to overwrite it, choose another --out"
                )


def inside_checkpoint_folder(checkpoint: Any, target: Any) -> bool:
    """``target`` is a checkpoint folder (a Hugging Face folder, whose files are its identity) or lies inside it."""
    path = Path(checkpoint)
    if not path.is_dir():
        return False
    folder, resolved = path.resolve(), Path(target).resolve()
    return resolved == folder or folder in resolved.parents


def refuse_writing_into_checkpoints(option: str, target: Any, checkpoints: Sequence[Any]) -> None:
    """Nothing but train's own outputs is written where a checkpoint lives: a file added to a checkpoint folder
    changes its identity (SHA-256), and every mask of it would then read as trained on another checkpoint.

    Raises:
        BadInputError: ``target`` is one of ``checkpoints`` or lies inside a checkpoint folder.
    """
    import os

    for ckpt in checkpoints:
        if ckpt is None or not Path(ckpt).exists():
            continue
        if inside_checkpoint_folder(ckpt, target):
            raise BadInputError(f"{option}: {target} lies inside the checkpoint folder {ckpt}; write it elsewhere")
        if Path(target).exists() and os.path.samefile(target, ckpt):
            raise BadInputError(f"{option}: {target} is the checkpoint {ckpt}; choose another {option}")


def refuse_other_checkpoint(option: str, mask: Any, checkpoint: Any) -> None:
    """The mask file ``mask`` was trained on ``checkpoint`` (by the identity it records, as evaluate and compare
    check it).

    Raises:
        BadInputError: it records another checkpoint (pass --allow-mismatch), or it cannot be read.
    """
    from ..masks.maskfile import open_masks
    from ..masks.masksets import fits_recorded

    with open_masks(mask) as reader:
        recorded = reader.metadata.get("checkpoint")
    differ = fits_recorded(recorded if isinstance(recorded, dict) else {}, checkpoint)
    if differ:
        raise BadInputError(
            f"{option} {mask} was trained on another checkpoint ({differ}); pass --allow-mismatch if that is intended"
        )


def refuse_existing(plans: list) -> None:
    existing = [str(p.mask) for p in plans if p.mask.exists()]
    if existing:
        raise BadInputError(f"{existing[0]} exists; pass --force to overwrite or --resume to continue")
    stale = [str(p.state) for p in plans if p.state.exists()]
    if stale:  # hours of an interrupted run must not be overwritten by accident
        raise BadInputError(f"{stale[0]} holds an interrupted run; pass --resume to continue it or --force to start over")
