"""``compare --group``: several mask files per task (multi-seed runs), reported as mean ± std over runs.

The paper reports every number as the mean and standard deviation over 10 seeds. Here a *group* is the set of
mask files of one task, a *run* one file from each group; runs are matched by the checkpoint the masks record
(one base network per seed), then by the mask's seed, then by file name. Each run is compared on its own, and
:func:`aggregate` averages the reports leaf by leaf, so the mean report has exactly the shape of a single one.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInputError


def group_files(masks: Sequence[str | os.PathLike[str]], specs: Sequence[str]) -> dict[str, list[Path]]:
    """``--group task`` groups ``masks`` by the task name in their metadata; ``--group NAME=GLOB`` (repeated)
    names each group by a glob.

    Raises:
        BadInputError: a glob that matches nothing, a file in two groups, fewer than two groups.
    """
    from ..masks.maskfile import open_masks

    groups: dict[str, list[Path]] = {}
    for spec in specs:  # the form of every --group first: a wrong one is named, not a consequence of it
        name, sep, pattern = spec.partition("=")
        if spec != "task" and not (sep and name.strip() and pattern):
            raise BadInputError(f"--group {spec!r}: expected 'task' or NAME=GLOB")
    if "task" in specs and set(specs) != {"task"}:
        raise BadInputError("--group task groups the MASK files by their task; it cannot be combined with --group NAME=GLOB")
    if "task" in specs:
        for p in masks:
            with open_masks(p) as r:
                groups.setdefault(r.task_name, []).append(Path(p))
    else:
        if masks:
            raise BadInputError("with --group NAME=GLOB the globs name the files; give no MASK arguments")
        for spec in specs:
            name, _, pattern = spec.partition("=")
            found = sorted(Path(f) for f in glob.glob(os.path.expanduser(pattern)))
            if not found:
                raise BadInputError(f"--group {spec!r}: the glob matches no file")
            have = {f.resolve() for f in groups.get(name, [])}  # a name given twice collects both globs, each file once
            groups.setdefault(name, []).extend(f for f in found if f.resolve() not in have)
        seen: dict[Path, str] = {}
        for name, files in groups.items():
            for f in files:
                if f.resolve() in seen:
                    raise BadInputError(f"{f} is in two groups ({seen[f.resolve()]!r} and {name!r})")
                seen[f.resolve()] = name
    if len(groups) < 2:
        raise BadInputError(f"--group needs masks of at least two tasks, found {list(groups) or 'none'}")
    return groups


def match_runs(groups: dict[str, list[Path]]) -> list[list[Path]]:
    """One list of files per run (one file per group, in group order).

    Raises:
        BadInputError: groups of different sizes, or a run whose masks record different checkpoints.
    """
    from ..masks.maskfile import open_masks

    sizes = {name: len(files) for name, files in groups.items()}
    if len(set(sizes.values())) != 1:
        raise BadInputError(f"every group needs the same number of mask files (one per run), got {sizes}")

    def key(path: Path) -> tuple[str, int, str]:
        with open_masks(path) as r:
            ckpt = r.metadata.get("checkpoint") or {}
            identity = ckpt.get("identity")  # else the file SHA-256 older masks record
            sha = str(sorted(identity.items())) if isinstance(identity, dict) else ckpt.get("sha256") or ""
            seed = r.metadata.get("seed")
        return (sha, seed if isinstance(seed, int) else -1, path.name)

    ordered = {name: sorted(files, key=key) for name, files in groups.items()}
    runs = [list(files) for files in zip(*ordered.values(), strict=True)]
    for run in runs:
        shas = {key(p)[0] for p in run} - {""}
        if len(shas) > 1:
            raise BadInputError(f"cannot match runs: {', '.join(p.name for p in run)} record different checkpoints")
    return runs


def is_number(x: Any) -> bool:
    """A JSON number (``True`` is an ``int`` to Python, not a number here)."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def aggregate(reports: Sequence[Any]) -> tuple[Any, Any]:
    """Mean and sample standard deviation of every numeric leaf over reports of the same shape.

    Non-numeric leaves are taken from the first report; ``None`` (a NaN metric) is left out of that leaf's
    statistics, and a leaf with no numbers left is ``None``.
    """
    first = reports[0]
    if isinstance(first, dict):
        pairs = {k: aggregate([r[k] for r in reports]) for k in first}
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
    if isinstance(first, list):
        if any(not isinstance(r, list) or len(r) != len(first) for r in reports):
            return first, None
        pairs_l = [aggregate([r[k] for r in reports]) for k in range(len(first))]
        return [p[0] for p in pairs_l], [p[1] for p in pairs_l]
    if is_number(first) or first is None:
        vals = [float(r) for r in reports if is_number(r) and math.isfinite(r)]
        if not vals:
            return None, None
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return mean, std
    return first, None
