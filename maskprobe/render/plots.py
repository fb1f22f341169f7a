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
FIGSIZE = {"overlap": (7.0, 3.2), "density": (7.0, 3.2), "drops": (7.5, 3.0), "kept": (6.4, 4.2), "kind": (10.0, 6.0)}
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
    unused = unused_tensors(report)
    if unused:  # their kept-weights images would be blank: said here instead
        names = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
        fig.text(0.01, 0.99, f"kept by no mask: {names}", fontsize=7, color="0.3", va="top")
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


def layer_kind(name: str) -> str:
    """``encoder.layer.3.attention.self.query.weight`` -> ``encoder.layer.N.attention.self.query.weight``: the name
    with its first layer index replaced, so that the same tensor of every layer is one kind; a name without an
    index is its own kind."""
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join([*parts[:k], "N", *parts[k + 1 :]])
    return name


def unused_tensors(report: dict[str, Any]) -> list[str]:
    """Masked tensors of which no mask keeps a single weight (a pooler a task never reads): drawn as nothing, named
    in ``density.png``."""
    return [c["name"] for c in report["layers"] if not any(c["counts"])]


def _kept_image(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, int, int]:
    """``(rgb image, rows per pixel, columns per pixel)`` of which weights two masks keep: white none, blue A only,
    orange B only, black both; block averages beyond :data:`MAX_PIXELS` per side."""
    from matplotlib.colors import to_rgb

    a, b = (np.asarray(x, dtype=bool) for x in arrays)
    img = np.ones((*_blocks(a).shape, 3))
    for mask, color in ((a & ~b, PALETTE[0]), (b & ~a, PALETTE[1]), (a & b, "#000000")):
        img = img - _blocks(mask)[..., None] * (1.0 - np.array(to_rgb(color)))  # white minus what each covers
    return np.clip(img, 0, 1), -(-a.shape[0] // img.shape[0]), -(-a.shape[1] // img.shape[1])


def _one_mask_image(arr: np.ndarray, color: str) -> tuple[np.ndarray, int, int]:
    from matplotlib.colors import to_rgb

    frac = _blocks(np.asarray(arr, dtype=bool))
    rgb = np.clip(1.0 - frac[..., None] * (1.0 - np.array(to_rgb(color))), 0, 1)
    return rgb, -(-arr.shape[0] // rgb.shape[0]), -(-arr.shape[1] // rgb.shape[1])


def _show_matrix(ax: Any, img: np.ndarray, shape: Sequence[int], rows_per: int, cols_per: int) -> None:
    """``img`` on axes in the matrix's own indices (a block-averaged pixel spans its rows and columns), with a few
    integer ticks that do not collide, however thin the panel."""
    from matplotlib.ticker import MaxNLocator

    extent = (-0.5, img.shape[1] * cols_per - 0.5, img.shape[0] * rows_per - 0.5, -0.5)
    ax.imshow(img, interpolation="nearest", aspect=_aspect(shape), extent=extent)
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)
    ax.grid(False)
    fig = ax.figure
    box = ax.get_position()
    width_in, height_in = box.width * fig.get_figwidth(), box.height * fig.get_figheight()
    size = ax.xaxis.get_ticklabels()[0].get_fontsize() if ax.xaxis.get_ticklabels() else 9
    digits = len(str(max(shape)))  # the widest label, in characters of about 0.6 em
    ax.xaxis.set_major_locator(MaxNLocator(nbins=max(1, int(width_in * 72 / (size * (0.6 * digits + 1.6)))), integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=max(1, int(height_in * 72 / (size * 3))), integer=True))


def _note_unused(ax: Any, text: str = "no mask keeps\nany weight") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.3")


def _legend_two(fig: Any, tasks: Sequence[str], left: float) -> None:
    from matplotlib.patches import Patch

    parts = [(PALETTE[0], f"{tasks[0]} only"), (PALETTE[1], f"{tasks[1]} only"), ("#000000", "both")]
    fig.legend(handles=[Patch(color=c, label=lab) for c, lab in parts], loc="upper left", bbox_to_anchor=(left, 0.84),
               fontsize=8)  # fmt: skip


def plot_kept(name: str, arrays: Sequence[np.ndarray], tasks: Sequence[str], path: Path) -> Path:
    """Which weights of one 2-D tensor each mask keeps (rows: outputs, columns: inputs), axes in the tensor's own
    indices even where the image is averaged over blocks (``compare --plot-tensors``)."""
    return _save(kept_figure(name, arrays, tasks), path)


def kept_figure(name: str, arrays: Sequence[np.ndarray], tasks: Sequence[str]) -> Any:
    """The figure of :func:`plot_kept` (not saved): for tests and notebooks."""
    plt = _pyplot()
    fig = plt.figure(figsize=FIGSIZE["kept"])
    shape = tuple(arrays[0].shape)
    if len(arrays) == 2:
        ax = fig.add_axes((0.13, 0.12, 0.66, 0.72))
        img, rp, cp = _kept_image(arrays)
        _show_matrix(ax, img, shape, rp, cp)
        _legend_two(fig, tasks, 0.8)
        axes = [ax]
    else:
        axes = [fig.add_subplot(1, len(arrays), k + 1) for k in range(len(arrays))]
        fig.subplots_adjust(left=0.1, right=0.98, top=0.8, bottom=0.12, wspace=0.35)
        for ax, arr, task, color in zip(axes, arrays, tasks, PALETTE, strict=False):
            _show_matrix(ax, *_one_mask_image(arr, color)[:1], shape, *_one_mask_image(arr, color)[1:])
            ax.set_title(task, fontsize=9)
    for ax in axes:
        ax.set_xlabel("input")
    axes[0].set_ylabel("output")
    block = _blocks(np.asarray(arrays[0])).shape
    note = "" if block == shape else f" (averages of {-(-shape[0] // block[0])}x{-(-shape[1] // block[1])} blocks)"
    fig.suptitle(f"Weights kept in {name}\n[{'x'.join(map(str, shape))}]{note}", fontsize=10)
    return fig


MAX_PANELS = 24  # a kind's overview shows at most this many of its tensors (evenly spaced), one panel each


def panels_shown(members: Sequence[Any], masks: int) -> list[Any]:
    """The members of a kind that get a panel: all of them up to :data:`MAX_PANELS` (8 rows with more than two
    masks), else that many evenly spaced from the first to the last."""
    cap = MAX_PANELS if masks == 2 else 8
    if len(members) <= cap:
        return list(members)
    return [members[round(k * (len(members) - 1) / (cap - 1))] for k in range(cap)]


Member = tuple[str, "Sequence[np.ndarray] | None"]  # a tensor's name and each mask's array (None: no mask keeps any)


def plot_kind(kind: str, members: Sequence[Member], tasks: Sequence[str], path: Path, total: int | None = None) -> Path:
    """One overview figure per layer kind: a panel per tensor of that kind (``layer 0`` ... ``layer 5``), each as in
    :func:`plot_kept`; a tensor no mask uses (``arrays`` None) says so in its panel instead of a blank image.
    ``members``: those of :func:`panels_shown`; ``total``: how many the kind has (said when more)."""
    return _save(kind_figure(kind, members, tasks, total), path)


def kind_figure(kind: str, members: Sequence[Member], tasks: Sequence[str], total: int | None = None) -> Any:
    """The figure of :func:`plot_kind` (not saved). Two masks: one coloured panel per tensor; more: a row per tensor,
    a column per mask."""
    plt = _pyplot()
    shown = panels_shown(members, len(tasks))
    total = max(total or 0, len(members))
    fig = plt.figure(figsize=FIGSIZE["kind"])
    if len(tasks) == 2:
        rows = max(1, round((len(shown) / 1.7) ** 0.5))  # about as many columns as the figure is wider than high
        cols = -(-len(shown) // rows)
        grid = fig.add_gridspec(rows, cols, left=0.07, right=0.84, top=0.84, bottom=0.08, wspace=0.45, hspace=0.6)
        cells = [[(grid[k // cols, k % cols], None)] for k in range(len(shown))]
    else:
        rows, cols = len(shown), len(tasks)
        grid = fig.add_gridspec(rows, cols, left=0.1, right=0.98, top=0.84, bottom=0.08, wspace=0.3, hspace=0.5)
        cells = [[(grid[r, m], m) for m in range(cols)] for r in range(rows)]
    for (name, arrays), panels in zip(shown, cells, strict=True):
        for spec, m in panels:
            ax = fig.add_subplot(spec)
            ax.tick_params(labelsize=7)
            label = _member_label(kind, name)
            if m is None:
                ax.set_title(label, fontsize=8)
            else:  # a grid: masks name the columns, tensors the rows
                if spec.rowspan.start == 0:
                    ax.set_title(tasks[m], fontsize=8)
                if m == 0:
                    ax.set_ylabel(label, fontsize=8)
            if arrays is None:
                _note_unused(ax)
                continue
            shape = tuple(arrays[0].shape)
            if m is None:
                _show_matrix(ax, *_kept_image(arrays)[:1], shape, *_kept_image(arrays)[1:])
            else:
                img, rp, cp = _one_mask_image(arrays[m], PALETTE[m % len(PALETTE)])
                _show_matrix(ax, img, shape, rp, cp)
    if len(tasks) == 2:
        _legend_two(fig, tasks, 0.85)
    more = f"; {len(shown)} of {total} shown" if len(shown) < total else ""
    fig.suptitle(f"Weights kept in {kind}\n(rows: outputs, columns: inputs, in the weight's own indices{more})", fontsize=10)
    return fig


def _member_label(kind: str, name: str) -> str:
    """``layer 3`` for ``encoder.layer.3...`` of ``encoder.layer.N...``; the name itself for a kind of one."""
    if kind == name:
        return name
    k = kind.split(".").index("N")
    return f"{kind.split('.')[k - 1] if k else 'index'} {name.split('.')[k]}"


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
        paths += _plot_kept_weights(report, masks, tasks, out, per_tensor)
    return paths


def _plot_kept_weights(report: dict[str, Any], masks: Sequence[Any], tasks: Sequence[str], out: Path, per_tensor: bool) -> list:
    """The kept-weights figures: a kind whose every tensor is unused gets none (density.png names them); only the
    tensors a figure shows are read."""
    from ..maskfile import open_masks

    unused = set(unused_tensors(report))
    kinds: dict[str, list[str]] = {}
    for c in report["layers"]:
        if len(c["shape"]) == 2 and c["numel"] <= MAX_KEPT_NUMEL:
            kinds.setdefault(layer_kind(c["name"]), []).append(c["name"])
    paths = []
    readers = [open_masks(p) for p in masks]
    try:
        for kind, names in kinds.items():
            if all(n in unused for n in names):
                continue
            shown = panels_shown(names, len(tasks))
            members = [(n, None if n in unused else [r.get(n) for r in readers]) for n in shown]
            paths.append(plot_kind(kind, members, tasks, out / f"kept_{_slug(kind)}.png", total=len(names)))
        if per_tensor:
            (out / "tensors").mkdir(exist_ok=True)
            for names in kinds.values():
                for n in (n for n in names if n not in unused):
                    paths.append(plot_kept(n, [r.get(n) for r in readers], tasks, out / "tensors" / f"kept_{_slug(n)}.png"))
    finally:
        for r in readers:
            r.close()
    return paths
