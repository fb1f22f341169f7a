"""``compare --plot``: every figure is written as a valid PNG of the documented size."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from maskprobe.cli import run  # noqa: E402
from maskprobe.masks.maskfile import save_masks  # noqa: E402
from maskprobe.measure.compare import compare  # noqa: E402
from maskprobe.render import figure, kept, plots  # noqa: E402


def png_size(path):
    """(width, height) from the PNG signature and IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"), f"{path} is truncated"
    return struct.unpack(">II", data[16:24])


def expected(kind):
    w, h = figure.FIGSIZE[kind]
    return round(w * figure.DPI), round(h * figure.DPI)


def _masks(tmp_path, n):
    rng = np.random.default_rng(1)
    shapes = {"net.0.weight": (16, 12), "net.1.weight": (16, 16), "net.2.weight": (4, 16), "net.2.bias": (4,)}
    paths = []
    for k in range(n):
        m = {name: torch.as_tensor(rng.random(s) < 0.2 + 0.2 * k) for name, s in shapes.items()}
        paths.append(save_masks(tmp_path / f"m{k}.safetensors", m, {"task": {"name": f"task{k}"}}))
    return paths


def with_ablation(report):
    """A structural report plus the ablation section the drop heat maps read (no checkpoint needed)."""
    d = [[0.9, 0.1, 0.2], [0.05, 0.8, None], [0.3, 0.2, 1.0]]
    drops = {k: d for k in ("kept", "inverted", "exclusive", "control", "control_exclusive")}
    return {**report, "ablation": {"tasks": ["task0", "task1", "task2"], "drops": drops}, "scores": {"p_specialize": 0.5}}


def test_every_figure_is_a_png_of_the_documented_size(tmp_path):
    paths = _masks(tmp_path, 3)
    report = with_ablation(compare(paths).to_dict())
    written = plots.plot_compare(report, tmp_path / "figs", masks=paths)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "overlap_task0_task1.png",
            "overlap_task0_task2.png",
            "overlap_task1_task2.png",
            "density.png",
            "drops.png",
            "kept_net.N.weight.png",
        ]
    )  # fmt: skip  (one overview per layer kind: net.0, net.1 and net.2 are one kind)
    for p in written:
        kind = p.name.split("_")[0].removesuffix(".png")
        assert png_size(p) == expected("kind" if kind == "kept" else kind), p.name
        assert p.stat().st_size > 5000  # something was drawn


def test_cli_writes_the_figures_for_two_masks(tmp_path, capsys):
    a, b = _masks(tmp_path, 2)
    assert run(["compare", str(a), str(b), "--plot", str(tmp_path / "figs"), "--quiet"]) == 0
    got = {p.name for p in (tmp_path / "figs").iterdir()}
    assert got == {"overlap_task0_task1.png", "density.png", "kept_net.N.weight.png"}
    assert png_size(tmp_path / "figs" / "density.png") == expected("density")
    assert png_size(tmp_path / "figs" / "kept_net.N.weight.png") == expected("kind")
    assert run(["compare", str(a), str(b), "--plot", str(tmp_path / "more"), "--plot-tensors", "--quiet"]) == 0
    tensors = sorted(p.name for p in (tmp_path / "more" / "tensors").iterdir())
    assert tensors == ["kept_net.0.weight.png", "kept_net.1.weight.png", "kept_net.2.weight.png"]
    assert png_size(tmp_path / "more" / "tensors" / tensors[0]) == expected("kept")
    assert run(["compare", str(a), str(b), "--plot-tensors"]) == 2  # without --plot: nowhere to write them
    assert "--plot-tensors needs --plot" in capsys.readouterr().err


def test_large_matrices_are_shown_by_blocks():
    a = np.zeros((2048, 1000), bool)
    a[:1024] = True
    b = kept._blocks(a, limit=512)
    assert b.shape == (512, 500)
    assert b[:256].min() == 1.0 and b[256:].max() == 0.0


def test_plot_into_a_file_is_refused(tmp_path):
    from maskprobe.errors import BadInputError

    (tmp_path / "f").write_text("x")
    paths = _masks(tmp_path, 2)
    with pytest.raises(BadInputError, match="not a folder"):
        plots.plot_compare(compare(paths).to_dict(), tmp_path / "f")


def test_a_hundred_tensors_are_pooled_by_block_with_exact_ratios(tmp_path):
    """A 12-layer transformer's names (8 tensors a block, 96 in all): the bar charts get one bar per block, whose
    IoU / density are the pooled sums of its tensors, and the figures keep their documented size."""
    rng = np.random.default_rng(0)
    kinds = ["attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out", "ln1", "ln2"]
    shapes = {f"encoder.layer.{b}.{k}.weight": ((6,) if k.startswith("ln") else (6, 5)) for b in range(12) for k in kinds}
    paths = []
    for t in range(2):
        m = {name: torch.as_tensor(rng.random(s) < 0.3 + 0.3 * t) for name, s in shapes.items()}
        paths.append(save_masks(tmp_path / f"m{t}.safetensors", m, {"task": {"name": f"t{t}"}}))
    report = compare(paths).to_dict()
    rows, pooled = plots.grouped(report["layers"])
    assert pooled and [r["name"] for r in rows] == [f"layer.{b} (8)" for b in range(12)]
    members = [c for c in report["layers"] if c["name"].startswith("encoder.layer.3.")]
    inter = sum(c["intersection"][0][1] for c in members)
    union = sum(c["union"][0][1] for c in members)
    assert rows[3]["iou"][0][1] == pytest.approx(inter / union)
    assert rows[3]["density"][1] == pytest.approx(sum(c["counts"][1] for c in members) / sum(c["numel"] for c in members))
    assert 0 < rows[3]["chance_iou"][0][1] < rows[3]["iou"][0][0] == 1.0
    few, pooled_few = plots.grouped(report["layers"][:5])
    assert not pooled_few and len(few) == 5
    written = plots.plot_compare(report, tmp_path / "figs")
    for p in written:
        assert png_size(p) == expected(p.name.split("_")[0].removesuffix(".png"))


# ---- kept-weights figures: real indices, ticks that do not collide, no blank images (issue 21 item 6) ----------


def _texts(fig):
    """Every tick label, title and axis label drawn, with its box in pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        shown = []
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            shown += [t.label1 for t in axis.get_major_ticks() if lo <= t.get_loc() <= hi]  # drawn ticks only
        for t in [*shown, ax.title, ax.xaxis.label, ax.yaxis.label]:
            if t.get_visible() and t.get_text():
                out.append((t.get_text(), t.get_window_extent(renderer)))
    return out


def assert_no_collisions(fig):
    texts = _texts(fig)
    for k, (a, box_a) in enumerate(texts):
        for b, box_b in texts[k + 1 :]:
            assert not box_a.overlaps(box_b), f"{a!r} overlaps {b!r}"


@pytest.mark.parametrize("shape", [(1536, 384), (384, 1536)])
def test_a_block_averaged_tensor_is_labelled_in_its_own_indices(shape):
    rng = np.random.default_rng(0)
    arrays = [rng.random(shape) < 0.3, rng.random(shape) < 0.5]
    fig = kept.kept_figure("encoder.layer.0.intermediate.dense.weight", arrays, ["a", "b"])
    ax = fig.axes[0]
    assert ax.get_images()[0].get_array().shape[:2] == (min(shape[0], 512), min(shape[1], 512))  # averaged over blocks
    assert ax.get_xlim() == (-0.5, shape[1] - 0.5) and ax.get_ylim() == (shape[0] - 0.5, -0.5)
    fig.canvas.draw()
    xs = [int(x) for x in ax.get_xticks() if -0.5 <= x <= shape[1] - 0.5]
    ys = [int(y) for y in ax.get_yticks() if -0.5 <= y <= shape[0] - 0.5]
    for axis, hi in ((ax.xaxis, shape[1]), (ax.yaxis, shape[0])):  # each drawn label says its index
        drawn = [t for t in axis.get_major_ticks() if -0.5 <= t.get_loc() <= hi - 0.5]
        assert [t.label1.get_text() for t in drawn] == [str(int(t.get_loc())) for t in drawn]
    assert max(xs) >= shape[1] // 2 and max(ys) >= shape[0] // 2  # real indices (0-1536), not blocks (0-512)
    assert 2 <= len(xs) <= 10 and 2 <= len(ys) <= 12
    assert "averages of" in fig._suptitle.get_text()
    assert_no_collisions(fig)
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.parametrize("masks", [2, 3])
def test_the_overview_of_a_kind_has_a_panel_per_layer_and_no_collisions(masks):
    rng = np.random.default_rng(1)
    members = [(f"encoder.layer.{k}.intermediate.dense.weight", [rng.random((1536, 384)) < 0.3 for _ in range(masks)])
               for k in range(6)]  # fmt: skip
    members[4] = (members[4][0], None)  # unused: said in its panel, not drawn blank
    fig = kept.kind_figure(kept.layer_kind(members[0][0]), members, [f"t{k}" for k in range(masks)])
    assert len(fig.axes) == 6 * (1 if masks == 2 else masks)
    drawn = [ax for ax in fig.axes if ax.get_images()]
    assert len(drawn) == len(fig.axes) - (1 if masks == 2 else masks)
    assert all(ax.get_xlim() == (-0.5, 383.5) and ax.get_ylim() == (1535.5, -0.5) for ax in drawn)
    words = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "no mask keeps" in words
    labels = [ax.get_title() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes]
    assert "layer 5" in labels and "layer 0" in labels
    assert_no_collisions(fig)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_an_unused_tensor_gets_no_image_and_is_named_in_the_overview(tmp_path):
    rng = np.random.default_rng(2)
    shapes = {f"encoder.layer.{b}.ffn.weight": (8, 6) for b in range(3)} | {"pooler.dense.weight": (6, 6)}
    paths = []
    for t in range(2):
        m = {n: torch.as_tensor(rng.random(s) < 0.4) for n, s in shapes.items()}
        m["pooler.dense.weight"] = torch.zeros(6, 6, dtype=torch.bool)  # no task reads the pooler
        paths.append(save_masks(tmp_path / f"m{t}.safetensors", m, {"task": {"name": f"t{t}"}}))
    report = compare(paths).to_dict()
    assert kept.unused_tensors(report) == ["pooler.dense.weight"]
    written = {p.relative_to(tmp_path / "figs").as_posix() for p in
               plots.plot_compare(report, tmp_path / "figs", masks=paths, per_tensor=True)}  # fmt: skip
    assert "kept_encoder.layer.N.ffn.weight.png" in written
    assert not any("pooler" in name for name in written)  # neither an overview nor a per-tensor image
    assert {n for n in written if n.startswith("tensors/")} == {
        f"tensors/kept_encoder.layer.{b}.ffn.weight.png" for b in range(3)
    }
    # the overview names it: density.png carries the note (drawn from the same report)
    import matplotlib.pyplot as plt

    seen = []
    real_save = plots.save
    try:
        plots.save = lambda fig, path: seen.append([t.get_text() for t in fig.texts]) or real_save(fig, path)
        plots.plot_density(report, tmp_path / "d.png")
    finally:
        plots.save = real_save
    assert any("kept by no mask: pooler.dense.weight" in t for t in seen[0])
    plt.close("all")


def test_layer_kinds_and_bar_labels():
    assert kept.layer_kind("encoder.layer.3.attention.self.query.weight") == "encoder.layer.N.attention.self.query.weight"
    assert kept.layer_kind("pooler.dense.weight") == "pooler.dense.weight"
    assert kept._member_label("encoder.layer.N.ffn.weight", "encoder.layer.3.ffn.weight") == "layer 3"
    layers = [{"name": f"encoder.layer.0.attention.self.{k}.weight", "role": "hidden"} for k in ("query", "key")]
    assert plots._layer_labels(layers) == ["query", "key"]
    long = [{"name": "a." + "x" * 40 + ".weight", "role": "input"}]
    assert plots._layer_labels(long) == ["…" + "x" * (plots.MAX_LABEL - 1) + " (in)"]
