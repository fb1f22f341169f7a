"""``compare --plot DIR``: figures of a compare report, drawn with matplotlib (optional extra ``plot``).

All figures are drawn from the JSON report of :func:`maskprobe.render.compare_json` (so a saved report can be
re-plotted) plus, for the kept-weight images, the mask files themselves:

* ``overlap_<A>_<B>.png``  per-layer IoU and IoMin of a pair of masks, each with its chance level (a black
  tick); the input and output layers stand apart from the hidden ones;
* ``density.png``          per-layer density of every mask (log scale when densities span two decades);
* ``drops.png``            the ablation drop matrices as heat maps (with ``--checkpoint``);
* ``kept_<kind>.png``      which weights each mask keeps, one overview per layer kind (``--plot-tensors``: also
  one per tensor); drawn by :mod:`maskprobe.render.kept`.

Every PNG has a fixed size in pixels (``FIGSIZE`` at ``DPI``): no tight bounding box, so a paper's layout does
not shift between runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from .figure import FIGSIZE, PALETTE, pyplot, require_matplotlib, save, slug

MAX_LABEL = 26  # characters of a bar's label: longer names keep their end (``…self.query``)


def _layer_labels(layers: Sequence[dict[str, Any]]) -> list[str]:
    """Bar labels short enough not to run off the figure: the prefix all names share and a ``.weight`` suffix
    dropped, the rest cut at the front to :data:`MAX_LABEL` characters; ``(in)``/``(out)`` for I/O layers."""
    from . import common_prefix

    tag = {"input": " (in)", "output": " (out)"}
    names = [c["name"] for c in layers]
    prefix = common_prefix(names)
    out = []
    for c, name in zip(layers, names, strict=True):
        short = name[len(prefix) :].removesuffix(".weight") or name
        short = short if len(short) <= MAX_LABEL else "…" + short[-(MAX_LABEL - 1) :]
        out.append(f"{short}{tag.get(c.get('role', ''), '')}")
    return out


def _label_bars(ax: Any, labels: Sequence[str], layers: Sequence[dict[str, Any]]) -> None:
    """A slanted tick label under each bar group, dashed lines between the input, hidden and output layers, I/O
    labels in grey."""
    ax.set_xticks(np.arange(len(labels), dtype=float), labels, rotation=30, ha="right")
    roles = [c.get("role", "hidden") for c in layers]
    for k in range(1, len(roles)):
        if roles[k] != roles[k - 1]:
            ax.axvline(k - 0.5, color="0.5", linestyle="--", linewidth=0.8)
    for lab, role in zip(ax.get_xticklabels(), roles, strict=False):
        if role != "hidden":
            lab.set_color("0.4")


def _ordered(layers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rank = {"input": 0, "hidden": 1, "output": 2}
    return sorted(layers, key=lambda c: rank.get(c.get("role", "hidden"), 1))


MAX_BARS = 12  # more masked tensors than this are pooled by block (``encoder.layer.3``): labels that do not collide


def _block(name: str) -> str:
    """``encoder.layer.3.attention.self.query.weight`` -> ``encoder.layer.3``; no numbered part: the first part."""
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: k + 1])
    return parts[0] if len(parts) > 1 else name


def grouped(layers: Sequence[dict[str, Any]], limit: int = MAX_BARS) -> tuple[list[dict[str, Any]], bool]:
    """``(rows, pooled)``: the layers themselves when there are at most ``limit``, else one row per block (in model
    order) with the counts summed and every ratio pooled from the sums (chance: the expected intersection of
    independent random masks of each tensor's densities, summed), so that 100 tensors stay readable."""
    if len(layers) <= limit:
        return list(layers), False
    blocks: dict[str, list[dict[str, Any]]] = {}
    for c in layers:
        blocks.setdefault(_block(c["name"]), []).append(c)
    rows = []
    for name, members in blocks.items():
        n = len(members[0]["counts"])
        numel = sum(c["numel"] for c in members)
        counts = [sum(c["counts"][k] for c in members) for k in range(n)]
        inter = [[sum(c["intersection"][a][b] for c in members) for b in range(n)] for a in range(n)]
        union = [[counts[a] + counts[b] - inter[a][b] for b in range(n)] for a in range(n)]
        exp = [[sum(c["counts"][a] * c["counts"][b] / c["numel"] for c in members if c["numel"]) for b in range(n)]
               for a in range(n)]  # fmt: skip

        def ratio(x: float, y: float) -> float:
            return x / y if y else 0.0

        roles = {c.get("role", "hidden") for c in members}
        rows.append({
            "name": f"{'.'.join(name.split('.')[-2:])} ({len(members)})",  # encoder.layer.3 -> layer.3 (8)
            "role": roles.pop() if len(roles) == 1 else "hidden", "numel": numel,
            "counts": counts, "density": [ratio(x, numel) for x in counts],
            "iou": [[ratio(inter[a][b], union[a][b]) for b in range(n)] for a in range(n)],
            "iomin": [[ratio(inter[a][b], min(counts[a], counts[b])) for b in range(n)] for a in range(n)],
            "chance_iou": [[ratio(exp[a][b], counts[a] + counts[b] - exp[a][b]) for b in range(n)] for a in range(n)],
            "chance_iomin": [[ratio(exp[a][b], min(counts[a], counts[b])) for b in range(n)] for a in range(n)],
        })  # fmt: skip
    return rows, True


def plot_overlap(report: dict[str, Any], i: int, j: int, path: Path) -> Path:
    """Grouped bars per layer (per block beyond :data:`MAX_BARS` tensors): IoU and IoMin of masks i and j, chance
    levels as black ticks."""
    plt = pyplot()
    layers, pooled = grouped(_ordered(report["layers"]))
    totals = ["hidden", "total"] if report.get("hidden") else ["total"]
    rows = [*layers, *(report[key] for key in totals)]
    tasks = [m.get("label", m["task"]) for m in report["masks"]]
    x = np.arange(len(rows), dtype=float)
    fig, ax = plt.subplots(figsize=FIGSIZE["overlap"])
    width = 0.38
    std = None if pooled else report.get("std")  # error bars per tensor only
    if std:  # a --group report: error bars of one standard deviation over runs
        by_name = {c["name"]: s for c, s in zip(report["layers"], std["layers"], strict=True)}
        std = [by_name[c["name"]] for c in layers] + [std[key] for key in totals]
    for k, (key, label) in enumerate((("iou", "IoU"), ("iomin", "IoMin"))):
        vals = [c[key][i][j] for c in rows]
        chance = [c[f"chance_{key}"][i][j] for c in rows]
        xs = x + (k - 0.5) * width
        err = [s[key][i][j] or 0.0 for s in std] if std else None
        ax.bar(xs, vals, width * 0.95, color=PALETTE[k], label=label, yerr=err, capsize=2 if err else 0)
        ax.hlines(chance, xs - width / 2, xs + width / 2, colors="black", linewidth=1.6, label="chance" if k == 0 else None)
    _label_bars(ax, [*_layer_labels(layers), *totals], [*layers, *({"role": "total"} for _ in totals)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("overlap")
    per = "block (tensors pooled)" if pooled else "layer"
    ax.set_title(f"{tasks[i]} vs {tasks[j]}: overlap per {per} (black: independent random masks)")
    ax.legend(ncol=3, loc="upper center")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.22)
    return save(fig, path)


def plot_density(report: dict[str, Any], path: Path) -> Path:
    """Bars per layer (per block beyond :data:`MAX_BARS` tensors), one per mask: the fraction of weights kept."""
    plt = pyplot()
    layers, pooled = grouped(_ordered(report["layers"]))
    tasks = [m.get("label", m["task"]) for m in report["masks"]]
    n = len(tasks)
    x = np.arange(len(layers), dtype=float)
    fig, ax = plt.subplots(figsize=FIGSIZE["density"])
    width = 0.8 / n
    dens = np.array([[c["density"][k] for c in layers] for k in range(n)])
    for k in range(n):
        ax.bar(x + (k - (n - 1) / 2) * width, dens[k], width * 0.95, color=PALETTE[k % len(PALETTE)], label=tasks[k])
    positive = dens[dens > 0]
    if positive.size and positive.max() / positive.min() > 100:
        ax.set_yscale("log")
    _label_bars(ax, _layer_labels(layers), layers)
    ax.set_ylabel("density (kept / weights)")
    ax.set_title(f"Weights each mask keeps, per {'block (tensors pooled)' if pooled else 'layer'}")
    ax.legend(ncol=min(n, 4), loc="upper center")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.22)
    from .kept import unused_tensors

    unused = unused_tensors(report)
    if unused:  # their kept-weights images would be blank: said here instead
        names = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
        fig.text(0.01, 0.99, f"kept by no mask: {names}", fontsize=7, color="0.3", va="top")
    return save(fig, path)


def plot_drops(report: dict[str, Any], path: Path) -> Path:
    """Heat maps of the relative drops D[i][j]: rows the mask whose weights are removed, columns the task."""
    plt = pyplot()
    ab = report["ablation"]
    tasks = ab["tasks"]
    kinds = [
        ("exclusive", "exclusive weights E\nremoved"),
        ("control_exclusive", "random, |E| per layer\n(control)"),
        ("inverted", "whole mask M\nremoved"),
        ("control", "random, |M| per layer\n(control)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=FIGSIZE["drops"], sharey=True)
    fig.subplots_adjust(left=0.13, right=0.88, top=0.76, bottom=0.22, wspace=0.12)
    im = None
    for ax, (kind, title) in zip(axes, kinds, strict=True):
        m = np.array([[np.nan if v is None else v for v in row] for row in ab["drops"][kind]], dtype=float)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.grid(False)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        for (r, c), v in np.ndenumerate(m):
            ax.text(
                c, r, "n/a" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black"
            )
    axes[0].set_ylabel("weights removed of")
    fig.text(0.5, 0.02, "task evaluated", ha="center")
    box = axes[-1].get_position()
    fig.colorbar(im, cax=fig.add_axes((0.9, box.y0, 0.015, box.height)), label="relative drop D")
    fig.suptitle("Drop of each task's metric after removing weights (0 = unharmed, 1 = broken)", fontsize=10)
    return save(fig, path)


def check_plot_folder(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir`` as a Path, if figures could be written there (a folder, or one that could be made). Creates nothing.

    Raises:
        BadInputError: it is a file, a file stands where one of its parents should be, or no permission to write.
    """
    from ..atomic import check_writable

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--plot {out} exists and is not a folder")
    try:
        check_writable(out / "density.png")
    except BadInputError as exc:
        raise BadInputError(f"--plot {out}: {exc}") from None
    return out


def plot_compare(
    report: dict[str, Any],
    out_dir: str | os.PathLike[str],
    masks: Sequence[str | os.PathLike[str]] | None = None,
    max_pairs: int = 6,
    per_tensor: bool = False,
) -> list[Path]:
    """Write every figure of a compare report into ``out_dir``; returns the paths.

    Args:
        report: a compare JSON report (dict).
        masks: the mask files, for the kept-weights images (skipped when None): one overview per layer kind,
            ``kept_<kind>.png`` (``kept_encoder.layer.N.attention.self.query.weight.png``).
        max_pairs: overlap figures for at most this many pairs.
        per_tensor: also one ``tensors/kept_<tensor>.png`` per 2-D tensor that some mask uses
            (``compare --plot-tensors``).

    Raises:
        BadInputError: matplotlib missing or ``out_dir`` not a writable folder.
    """
    require_matplotlib()
    out = check_plot_folder(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only file system, a file as a parent: one line, not exit 70
        raise BadInputError(f"--plot {out}: cannot create the folder: {exc.strerror or exc}") from None
    tasks = [m.get("label", m["task"]) for m in report["masks"]]
    paths = []
    pairs = [(i, j) for i in range(len(tasks)) for j in range(i + 1, len(tasks))][:max_pairs]
    for i, j in pairs:
        paths.append(plot_overlap(report, i, j, out / f"overlap_{slug(tasks[i])}_{slug(tasks[j])}.png"))
    paths.append(plot_density(report, out / "density.png"))
    if report.get("ablation"):
        paths.append(plot_drops(report, out / "drops.png"))
    if masks:
        from .kept import plot_kept_weights

        paths += plot_kept_weights(report, masks, tasks, out, per_tensor)
    return paths
