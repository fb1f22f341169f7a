"""Structural overlap: hand-computed IoU/IoMin/shared/chance on toy masks, N-mask set arithmetic against
Python sets, the streamed counting pass (plain and packed bits, many chunks, threads) against in-memory
counts, damaged files, and the I/O layer split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskprobe.errors import MaskFileError
from maskprobe.masks import counting
from maskprobe.masks.layout import names_layout, natural_order, with_io
from maskprobe.masks.maskfile import load_masks, open_masks, save_masks
from maskprobe.measure.analysis import chance_iomin, chance_iou
from maskprobe.measure.overlap import count_tensor, overlap, sum_counts


def _save(path, masks, task="t", pack=False):
    save_masks(path, {k: torch.as_tensor(np.asarray(v, dtype=bool)) for k, v in masks.items()},
               {"task": {"name": task}}, pack_bits=pack)  # fmt: skip
    return path


def test_pair_metrics_by_hand():
    a = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)  # |A| = 4
    b = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0, 0], bool)  # |B| = 6, |A∩B| = 2, |A∪B| = 8
    c = count_tensor("w", [a, b])
    assert c.counts == [4, 6] and c.intersection == [[4, 2], [2, 6]]
    assert c.iou(0, 1) == pytest.approx(2 / 8)
    assert c.iomin(0, 1) == pytest.approx(2 / 4)
    assert c.shared(0, 1) == pytest.approx(2 / 4) and c.shared(1, 0) == pytest.approx(2 / 6)
    # chance: p = 0.4, q = 0.6 -> IoU pq/(p+q-pq) = 0.24/0.76, IoMin max(p, q) = 0.6
    assert c.chance_iou(0, 1) == pytest.approx(0.24 / 0.76) == pytest.approx(chance_iou(0.4, 0.6))
    assert c.chance_iomin(0, 1) == pytest.approx(0.6) == pytest.approx(chance_iomin(0.4, 0.6))
    assert c.excess_iou(0, 1) == pytest.approx(0.25 - 0.24 / 0.76)
    assert c.excess_iomin(0, 1) == pytest.approx(0.5 - 0.6)
    assert c.by_k == [2, 6, 2]


def test_empty_masks_give_zero_not_nan():
    z = np.zeros(5, bool)
    c = count_tensor("w", [z, np.ones(5, bool)])
    assert c.iou(0, 1) == 0.0 and c.iomin(0, 1) == 0.0 and c.shared(0, 1) == 0.0
    assert c.chance_iou(0, 1) == 0.0 and c.chance_iomin(0, 1) == 0.0 and c.empty(0, 1)


def test_total_pools_counts_and_chance_uses_per_layer_densities():
    # layer 1: 100 weights, A keeps 50, B keeps 50, 50 shared; layer 2: 900 weights, A 9, B 9, none shared
    l1 = count_tensor("l1", [np.r_[np.ones(50), np.zeros(50)].astype(bool)] * 2)
    a2 = np.zeros(900, bool)
    a2[:9] = True
    b2 = np.zeros(900, bool)
    b2[9:18] = True
    l2 = count_tensor("l2", [a2, b2])
    t = sum_counts("total", [l1, l2])
    assert t.counts == [59, 59] and t.intersection[0][1] == 50
    assert t.iou(0, 1) == pytest.approx(50 / 68)  # a ratio of sums: not the mean of 1.0 and 0.0
    # expected intersection: 50*50/100 + 9*9/900 = 25.09; chance IoU = 25.09 / (59 + 59 - 25.09)
    assert t.expected[0][1] == pytest.approx(25.09)
    assert t.chance_iou(0, 1) == pytest.approx(25.09 / (118 - 25.09))
    assert t.chance_iomin(0, 1) == pytest.approx(25.09 / 59)
    # pooled densities would say p = q = 0.059 -> chance IoU 0.03: far below the right level
    assert t.chance_iou(0, 1) > 5 * chance_iou(0.059, 0.059)


def _brute(masks):
    """Set arithmetic with Python sets: the reference the counts must match."""
    sets = [set(np.flatnonzero(m.reshape(-1)).tolist()) for m in masks]
    n = len(sets)
    size = masks[0].size
    inter = [[len(sets[i] & sets[j]) for j in range(n)] for i in range(n)]
    in_others = [len(sets[i] & set().union(*[sets[j] for j in range(n) if j != i])) for i in range(n)]
    by_k = [sum(1 for x in range(size) if sum(x in s for s in sets) == k) for k in range(n + 1)]
    return inter, in_others, by_k


def test_three_masks_set_arithmetic_by_hand():
    a = np.array([1, 1, 1, 0, 0, 0, 1], bool)
    b = np.array([0, 1, 1, 1, 0, 0, 1], bool)
    c = np.array([0, 0, 1, 1, 1, 0, 0], bool)
    t = count_tensor("w", [a, b, c])
    assert t.by_k == [1, 2, 3, 1]  # k=0: {5}; k=1: {0, 4}; k=2: {1, 3, 6}; k=3: {2}
    assert t.in_others == [3, 4, 2]  # a's weights that b or c also keep: {1, 2, 6}; b: {1, 2, 3, 6}; c: {2, 3}
    assert t.share_of_others(0) == pytest.approx(3 / 4)
    assert t.intersection == [[4, 3, 1], [3, 4, 2], [1, 2, 3]]
    assert t.matrix("iou")[0][2] == pytest.approx(1 / 6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 4), size=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_counts_match_python_sets(n, size, seed):
    rng = np.random.default_rng(seed)
    masks = [rng.random(size) < rng.random() for _ in range(n)]
    c = count_tensor("w", masks)
    inter, in_others, by_k = _brute(masks)
    assert c.intersection == inter and c.in_others == in_others and c.by_k == by_k


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("pack", [False, True])
def test_streamed_counts_equal_in_memory_counts_over_many_chunks(tmp_path, monkeypatch, n, pack):
    monkeypatch.setattr(counting, "CHUNK", 16)  # bytes: dozens of chunks, a ragged last one, two threads
    rng = np.random.default_rng(n)
    shapes = {"layers.0.weight": (13, 7), "layers.0.bias": (13,), "layers.10.weight": (5, 13), "layers.2.weight": (13, 13)}
    masks = [{k: rng.random(s) < d for k, s in shapes.items()} for d in (0.3, 0.6, 0.5)[:n]]
    paths = [_save(tmp_path / f"m{i}.safetensors", m, f"t{i}", pack) for i, m in enumerate(masks)]
    ov = overlap(paths, workers=2)
    assert [c.name for c in ov.layers] == ["layers.0.bias", "layers.0.weight", "layers.2.weight", "layers.10.weight"]
    for c in ov.layers:
        ref = count_tensor(c.name, [m[c.name] for m in masks])
        assert (c.counts, c.intersection, c.in_others, c.by_k) == (ref.counts, ref.intersection, ref.in_others, ref.by_k)
        assert c.shape == shapes[c.name]
    assert ov.total.numel == sum(int(np.prod(s)) for s in shapes.values())


def test_packed_and_plain_files_compare_alike_and_mixed(tmp_path):
    rng = np.random.default_rng(0)
    a = {"w": rng.random((9, 11)) < 0.4}
    b = {"w": rng.random((9, 11)) < 0.5}
    plain = overlap([_save(tmp_path / "a.safetensors", a), _save(tmp_path / "b.safetensors", b)])
    packed = overlap([_save(tmp_path / "ap.safetensors", a, pack=True), _save(tmp_path / "bp.safetensors", b, pack=True)])
    mixed = overlap([tmp_path / "a.safetensors", tmp_path / "bp.safetensors"])
    for ov in (packed, mixed):
        assert ov.total.to_dict() == plain.total.to_dict()
    assert (tmp_path / "ap.safetensors").stat().st_size < (tmp_path / "a.safetensors").stat().st_size
    assert torch.equal(load_masks(tmp_path / "ap.safetensors").masks["w"], torch.as_tensor(a["w"]))
    with open_masks(tmp_path / "ap.safetensors") as r:
        assert r.packed and r.shape("w") == (9, 11) and (r.get("w") == a["w"]).all()


def _corrupt_byte(path, name, index, value):
    span = counting.tensor_spans(path)[name]
    data = bytearray(path.read_bytes())
    data[span.offset + index] = value
    path.write_bytes(bytes(data))


def test_a_bool_byte_other_than_0_or_1_is_refused(tmp_path):
    a = _save(tmp_path / "a.safetensors", {"w": np.ones(64, bool)})
    b = _save(tmp_path / "b.safetensors", {"w": np.zeros(64, bool)})
    _corrupt_byte(b, "w", 40, 2)
    with pytest.raises(MaskFileError, match="damaged"):
        overlap([a, b])


def test_packed_padding_bits_are_refused(tmp_path):
    a = _save(tmp_path / "a.safetensors", {"w": np.ones(13, bool)}, pack=True)
    b = _save(tmp_path / "b.safetensors", {"w": np.zeros(13, bool)}, pack=True)
    _corrupt_byte(b, "w", 1, 0b1000_0000)  # bit 15 of a 13-weight tensor: padding
    with pytest.raises(MaskFileError, match="padding"):
        overlap([a, b])
    with pytest.raises(MaskFileError, match="padding"):
        load_masks(b)


def test_natural_order_and_io_roles():
    names = natural_order(["net.10.weight", "net.2.weight", "net.0.bias", "net.0.weight", "net.2.bias"])
    assert names == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight", "net.10.weight"]
    shapes = {"net.0.bias": (4,), "net.0.weight": (4, 3), "net.2.bias": (4,), "net.2.weight": (4, 4), "net.10.weight": (2, 4)}
    roles = dict(names_layout(names, shapes).roles)
    assert roles == {"net.0.bias": "input", "net.0.weight": "input", "net.2.bias": "hidden", "net.2.weight": "hidden",
                     "net.10.weight": "output"}  # fmt: skip
    by_glob = with_io(names_layout(names, shapes), ["net.0.*", "net.10.*"]).roles
    assert by_glob["net.0.weight"] == "input" and by_glob["net.10.weight"] == "output" and by_glob["net.2.bias"] == "hidden"


def test_overlap_reports_hidden_layers_apart_from_trivially_disjoint_io(tmp_path):
    # input and output layers disjoint (as in the double-addition task), hidden layers identical
    ones = np.ones((4, 4), bool)
    half = np.r_[np.ones(8), np.zeros(8)].astype(bool).reshape(4, 4)
    a = {"l.0.weight": half, "l.1.weight": ones, "l.2.weight": half.copy()}
    b = {"l.0.weight": ~half, "l.1.weight": ones.copy(), "l.2.weight": ~half}
    ov = overlap([_save(tmp_path / "a.safetensors", a), _save(tmp_path / "b.safetensors", b)])
    assert [c.role for c in ov.layers] == ["input", "hidden", "output"]
    assert ov.hidden is not None and ov.hidden.iou(0, 1) == 1.0
    assert ov.total.iou(0, 1) == pytest.approx(16 / 48)
    s = ov.summary()
    assert s["hidden"]["pooled"]["iou"][0][1] == 1.0
    assert s["all"]["layer_mean"]["iou"][0][1] == pytest.approx(1 / 3)  # per-layer mean vs pooled
