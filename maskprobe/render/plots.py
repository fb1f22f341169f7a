"""``compare --plot DIR``: figures of a compare report, drawn with matplotlib (optional extra ``plot``).

All figures are drawn from the JSON report of :func:`maskprobe.render.compare_json` (so a saved report can be
re-plotted) plus, for the kept-weight images, the mask files themselves:

* ``overlap_<A>_<B>.png``  per-layer IoU and IoMin of a pair of masks, each with its chance level (a black
  tick); the input and output layers stand apart from the hidden ones;
* ``density.png``          per-layer density of every mask (log scale when densities span two decades);
* ``drops.png``            the ablation drop matrices as heat maps (with ``--checkpoint``);
* ``kept_<layer>.png``     for each 2-D weight, which weights each mask keeps (two masks: one image coloured by
  A only / B only / both; more: one panel per mask). Large matrices are shown by blocks.

Every PNG has a fixed size in pixels (``FIGSIZE`` at ``DPI``): no tight bounding box, so a paper's layout does
not shift between runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError

DPI = 150
FIGSIZE = {"overlap": (7.0, 3.2), "density": (7.0, 3.2), "drops": (7.5, 3.0), "kept": (6.4, 4.2)}
# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and in greyscale print
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MAX_KEPT_NUMEL = 1 << 24  # kept-weights images for matrices up to 16M weights (each is read whole)
MAX_PIXELS = 512  # per side of a kept-weights image; larger matrices are averaged over blocks


def require_matplotlib() -> None:
    """Raises BadInputError (exit 2) with the install line when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInputError("--plot needs matplotlib: pip install 'maskprobe[plot]'") from None


def _pyplot():
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (also on a head-less CI runner)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "axes.grid.axis": "y",
            "grid.alpha": 0.3,
            "legend.frameon": False,
        }
    )
    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _layer_labels(layers: Sequence[dict[str, Any]]) -> list[str]:
    tag = {"input": " (in)", "output": " (out)"}
    return [f"{c['name']}{tag.get(c.get('role', ''), '')}" for c in layers]


def _separate_io(ax: Any, layers: Sequence[dict[str, Any]]) -> None:
    """Dashed lines between the input, hidden and output layers; I/O tick labels in grey."""
    roles = [c.get("role", "hidden") for c in layers]
    for k in range(1, len(roles)):
        if roles[k] != roles[k - 1]:
            ax.axvline(k - 0.5, color="0.5", linestyle="--", linewidth=0.8)
    for lab, role in zip(ax.get_xticklabels(), roles, strict=False):
        if role != "hidden":
            lab.set_color("0.4")


def _save(fig: Any, path: Path) -> Path:
    from ..atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _ordered(layers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rank = {"input": 0, "hidden": 1, "output": 2}
    return sorted(layers, key=lambda c: rank.get(c.get("role", "hidden"), 1))


MAX_BARS = 24  # more masked tensors than this are pooled by block (``encoder.layer.3``) in the bar charts


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
    plt = _pyplot()
    layers, pooled = grouped(_ordered(report["layers"]))
    rows = [*layers, *([report["hidden"]] if report.get("hidden") else []), report["total"]]
    tasks = [m.get("label", m["task"]) for m in report["masks"]]
    x = np.arange(len(rows), dtype=float)
    fig, ax = plt.subplots(figsize=FIGSIZE["overlap"])
    width = 0.38
    std = None if pooled else report.get("std")  # error bars per tensor only
    std_rows = None
    if std:  # a --group report: error bars of one standard deviation over runs
        by_name = {c["name"]: s for c, s in zip(report["layers"], std["layers"], strict=True)}
        std_rows = [by_name[c["name"]] for c in layers] + ([std["hidden"]] if report.get("hidden") else []) + [std["total"]]
    for k, (key, label) in enumerate((("iou", "IoU"), ("iomin", "IoMin"))):
        vals = [c[key][i][j] for c in rows]
        chance = [c[f"chance_{key}"][i][j] for c in rows]
        xs = x + (k - 0.5) * width
        err = [s[key][i][j] or 0.0 for s in std_rows] if std_rows else None
        ax.bar(xs, vals, width * 0.95, color=PALETTE[k], label=label, yerr=err, capsize=2 if err else 0)
        ax.hlines(chance, xs - width / 2, xs + width / 2, colors="black", linewidth=1.6, label="chance" if k == 0 else None)
    ax.set_xticks(x, [*_layer_labels(layers), *(["hidden"] if report.get("hidden") else []), "total"], rotation=30, ha="right")
    _separate_io(ax, [*layers, {"role": "total"}, *([{"role": "total"}] if report.get("hidden") else [])])
    ax.set_ylim(0, 1)
    ax.set_ylabel("overlap")
    per = "block (tensors pooled)" if pooled else "layer"
    ax.set_title(f"{tasks[i]} vs {tasks[j]}: overlap per {per} (black: independent random masks)")
    ax.legend(ncol=3, loc="upper center")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.22)
    return _save(fig, path)


def plot_density(report: dict[str, Any], path: Path) -> Path:
    """Bars per layer (per block beyond :data:`MAX_BARS` tensors), one per mask: the fraction of weights kept."""
    plt = _pyplot()
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
    ax.set_xticks(x, _layer_labels(layers), rotation=30, ha="right")
    _separate_io(ax, layers)
    ax.set_ylabel("density (kept / weights)")
    ax.set_title(f"Weights each mask keeps, per {'block (tensors pooled)' if pooled else 'layer'}")
    ax.legend(ncol=min(n, 4), loc="upper center")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.22)
    return _save(fig, path)


def plot_drops(report: dict[str, Any], path: Path) -> Path:
    """Heat maps of the relative drops D[i][j]: rows the mask whose weights are removed, columns the task."""
    plt = _pyplot()
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
    return _save(fig, path)


def _blocks(a: np.ndarray, limit: int = MAX_PIXELS) -> np.ndarray:
    """Average a 2-D array over blocks so that neither side exceeds ``limit`` (padding counts as 0)."""
    fr, fc = -(-a.shape[0] // limit), -(-a.shape[1] // limit)
    if fr == 1 and fc == 1:
        return a.astype(np.float32)
    pad = np.zeros((-(-a.shape[0] // fr) * fr, -(-a.shape[1] // fc) * fc), dtype=np.float32)
    pad[: a.shape[0], : a.shape[1]] = a
    return pad.reshape(pad.shape[0] // fr, fr, pad.shape[1] // fc, fc).mean(axis=(1, 3))


def _aspect(shape: Sequence[int]) -> str:
    """Square pixels unless the matrix is so thin that it would become a sliver."""
    return "equal" if 1 / 3 <= shape[0] / shape[1] <= 3 else "auto"


def plot_kept(name: str, arrays: Sequence[np.ndarray], tasks: Sequence[str], path: Path) -> Path:
    """Which weights of one 2-D tensor each mask keeps (rows: outputs, columns: inputs)."""
    plt = _pyplot()
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=FIGSIZE["kept"])
    if len(arrays) == 2:
        a, b = (np.asarray(x, dtype=bool) for x in arrays)
        parts = [(a & ~b, PALETTE[0], f"{tasks[0]} only"), (b & ~a, PALETTE[1], f"{tasks[1]} only"), (a & b, "#000000", "both")]
        img = np.ones((*_blocks(a).shape, 3))
        for mask, color, _ in parts:
            frac = _blocks(mask)[..., None]
            img = img - frac * (1.0 - np.array(to_rgb(color)))  # white minus what each category covers
        ax = fig.add_subplot(1, 1, 1)
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest", aspect=_aspect(img.shape))
        ax.legend(handles=[Patch(color=c, label=lab) for _, c, lab in parts], loc="upper left", bbox_to_anchor=(1.01, 1))
        axes = [ax]
        fig.subplots_adjust(left=0.1, right=0.74, top=0.9, bottom=0.12)
    else:
        axes = [fig.add_subplot(1, len(arrays), k + 1) for k in range(len(arrays))]
        for ax, arr, task, color in zip(axes, arrays, tasks, PALETTE, strict=False):
            frac = _blocks(np.asarray(arr, dtype=bool))[..., None]
            rgb = np.clip(1.0 - frac * (1.0 - np.array(to_rgb(color))), 0, 1)
            ax.imshow(rgb, interpolation="nearest", aspect=_aspect(rgb.shape))
            ax.set_title(task, fontsize=9)
        fig.subplots_adjust(left=0.1, right=0.98, top=0.85, bottom=0.12, wspace=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(False)
        ax.set_xlabel("input")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # weight indices, never 2.5
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("output")
    shape = "x".join(str(s) for s in arrays[0].shape)
    block = "" if _blocks(np.asarray(arrays[0])).shape == arrays[0].shape else " (block averages)"
    fig.suptitle(f"Weights kept in {name} [{shape}]{block}", fontsize=10)
    return _save(fig, path)


def plot_compare(
    report: dict[str, Any],
    out_dir: str | os.PathLike[str],
    masks: Sequence[str | os.PathLike[str]] | None = None,
    max_pairs: int = 6,
) -> list[Path]:
    """Write every figure of a compare report into ``out_dir``; returns the paths.

    Args:
        report: a compare JSON report (dict).
        masks: the mask files, for the kept-weights images (skipped when None).
        max_pairs: overlap figures for at most this many pairs.

    Raises:
        BadInputError: matplotlib missing or ``out_dir`` not a writable folder.
    """
    require_matplotlib()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--plot {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    tasks = [m.get("label", m["task"]) for m in report["masks"]]
    paths = []
    pairs = [(i, j) for i in range(len(tasks)) for j in range(i + 1, len(tasks))][:max_pairs]
    for i, j in pairs:
        paths.append(plot_overlap(report, i, j, out / f"overlap_{_slug(tasks[i])}_{_slug(tasks[j])}.png"))
    paths.append(plot_density(report, out / "density.png"))
    if report.get("ablation"):
        paths.append(plot_drops(report, out / "drops.png"))
    if masks:
        from ..maskfile import open_masks

        readers = [open_masks(p) for p in masks]
        try:
            for c in report["layers"]:
                if len(c["shape"]) == 2 and c["numel"] <= MAX_KEPT_NUMEL:
                    arrays = [r.get(c["name"]) for r in readers]
                    paths.append(plot_kept(c["name"], arrays, tasks, out / f"kept_{_slug(c['name'])}.png"))
        finally:
            for r in readers:
                r.close()
    return paths
