"""The kept-weights figures of ``compare --plot``: which weights of a 2-D tensor each mask keeps.

* ``kept_<kind>.png``  one overview per layer kind (``encoder.layer.N.attention.self.query.weight``): a panel per
  layer; two masks as one image coloured A only / B only / both, more as a row per tensor and a column per mask;
* ``tensors/kept_<tensor>.png``  one figure per tensor, on request (``--plot-tensors``).

Matrices larger than :data:`~maskprobe.render.figure.MAX_PIXELS` per side are averaged over blocks, yet every axis
is in the weight's own indices, with as many ticks as fit the panel. A tensor no mask keeps a weight of is never
drawn as a blank image: its panel says so, ``density.png`` names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .figure import FIGSIZE, MAX_KEPT_NUMEL, MAX_PIXELS, PALETTE, pyplot, save, slug


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


def _image(*layers: tuple[np.ndarray, str]) -> tuple[np.ndarray, int, int]:
    """``(rgb image, rows per pixel, columns per pixel)``: white minus what each boolean matrix of ``layers`` covers
    in its colour; block averages beyond :data:`MAX_PIXELS` per side."""
    from matplotlib.colors import to_rgb

    shape = layers[0][0].shape
    img = np.ones((*_blocks(layers[0][0]).shape, 3))
    for mask, color in layers:
        img = img - _blocks(mask)[..., None] * (1.0 - np.array(to_rgb(color)))
    return np.clip(img, 0, 1), -(-shape[0] // img.shape[0]), -(-shape[1] // img.shape[1])


def _kept_image(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, int, int]:
    """Which weights two masks keep: white none, blue A only, orange B only, black both."""
    a, b = (np.asarray(x, dtype=bool) for x in arrays)
    return _image((a & ~b, PALETTE[0]), (b & ~a, PALETTE[1]), (a & b, "#000000"))


def _show_matrix(ax: Any, shape: Sequence[int], img: np.ndarray, rows_per: int, cols_per: int) -> None:
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
    return save(kept_figure(name, arrays, tasks), path)


def kept_figure(name: str, arrays: Sequence[np.ndarray], tasks: Sequence[str]) -> Any:
    """The figure of :func:`plot_kept` (not saved): for tests and notebooks."""
    plt = pyplot()
    fig = plt.figure(figsize=FIGSIZE["kept"])
    shape = tuple(arrays[0].shape)
    if len(arrays) == 2:
        ax = fig.add_axes((0.13, 0.12, 0.66, 0.72))
        _show_matrix(ax, shape, *_kept_image(arrays))
        _legend_two(fig, tasks, 0.8)
        axes = [ax]
    else:
        axes = [fig.add_subplot(1, len(arrays), k + 1) for k in range(len(arrays))]
        fig.subplots_adjust(left=0.1, right=0.98, top=0.8, bottom=0.12, wspace=0.35)
        for ax, arr, task, color in zip(axes, arrays, tasks, PALETTE, strict=False):
            _show_matrix(ax, shape, *_image((np.asarray(arr, dtype=bool), color)))
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
    return save(kind_figure(kind, members, tasks, total), path)


def kind_figure(kind: str, members: Sequence[Member], tasks: Sequence[str], total: int | None = None) -> Any:
    """The figure of :func:`plot_kind` (not saved). Two masks: one coloured panel per tensor; more: a row per tensor,
    a column per mask."""
    plt = pyplot()
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
            image = _kept_image(arrays) if m is None else _image((np.asarray(arrays[m], dtype=bool), PALETTE[m % len(PALETTE)]))
            _show_matrix(ax, tuple(arrays[0].shape), *image)
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


def plot_kept_weights(report: dict[str, Any], masks: Sequence[Any], tasks: Sequence[str], out: Path, per_tensor: bool) -> list:
    """The kept-weights figures: a kind whose every tensor is unused gets none (density.png names them); only the
    tensors a figure shows are read."""
    from ..masks.maskfile import open_masks

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
            paths.append(plot_kind(kind, members, tasks, out / f"kept_{slug(kind)}.png", total=len(names)))
        if per_tensor:
            (out / "tensors").mkdir(exist_ok=True)
            for names in kinds.values():
                for n in (n for n in names if n not in unused):
                    paths.append(plot_kept(n, [r.get(n) for r in readers], tasks, out / "tensors" / f"kept_{slug(n)}.png"))
    finally:
        for r in readers:
            r.close()
    return paths
