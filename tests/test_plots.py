"""``compare --plot``: every figure is written as a valid PNG of the documented size."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from maskprobe.cli import run  # noqa: E402
from maskprobe.compare import compare  # noqa: E402
from maskprobe.maskfile import save_masks  # noqa: E402
from maskprobe.render import plots  # noqa: E402


def png_size(path):
    """(width, height) from the PNG signature and IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"), f"{path} is truncated"
    return struct.unpack(">II", data[16:24])


def expected(kind):
    w, h = plots.FIGSIZE[kind]
    return round(w * plots.DPI), round(h * plots.DPI)


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
        ["overlap_task0_task1.png", "overlap_task0_task2.png", "overlap_task1_task2.png", "density.png", "drops.png",
         "kept_net.0.weight.png", "kept_net.1.weight.png", "kept_net.2.weight.png"]
    )  # fmt: skip
    for p in written:
        kind = p.name.split("_")[0].removesuffix(".png")
        assert png_size(p) == expected(kind), p.name
        assert p.stat().st_size > 5000  # something was drawn


def test_cli_writes_the_figures_for_two_masks(tmp_path, capsys):
    a, b = _masks(tmp_path, 2)
    assert run(["compare", str(a), str(b), "--plot", str(tmp_path / "figs"), "--quiet"]) == 0
    got = {p.name for p in (tmp_path / "figs").iterdir()}
    assert got == {"overlap_task0_task1.png", "density.png", "kept_net.0.weight.png", "kept_net.1.weight.png",
                   "kept_net.2.weight.png"}  # fmt: skip
    assert png_size(tmp_path / "figs" / "density.png") == expected("density")


def test_large_matrices_are_shown_by_blocks():
    a = np.zeros((2048, 1000), bool)
    a[:1024] = True
    b = plots._blocks(a, limit=512)
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
