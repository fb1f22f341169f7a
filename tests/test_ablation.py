"""Functional ablation: drops and scores on constructed cases, exclusive sets of N masks, the random control's
sizes, and the paper's "first full mask" variant (--keep-io) that never removes input/output weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from maskprobe.measure import analysis
from maskprobe.measure.ablation import _random_like_counts, ablate, exclusive_masks, io_tensors
from maskprobe.tasks import Task


def test_drops_and_scores_by_hand():
    full = [0.8, 0.5]
    # rows: removal of mask i; columns: task j
    d = analysis.drop_matrix(full, [[0.2, 0.45], [0.8, 0.1]])
    assert d[0] == pytest.approx([0.75, 0.1]) and d[1] == pytest.approx([0.0, 0.8])
    assert analysis.specialization(d) == pytest.approx([0.65, 0.8])
    assert analysis.p_specialize(d) == pytest.approx(0.725)
    ctrl = [[0.5, 0.05], [0.1, 0.3]]
    r = analysis.reuse(d, ctrl)
    assert math.isnan(r[0][0]) and r[0][1] == pytest.approx(0.05) and r[1][0] == 0.0  # 0 - 0.1 clipped at 0
    assert analysis.p_reuse(d, ctrl) == pytest.approx(0.025)
    assert analysis.relative_drop(0.8, 0.9) == 0.0  # better than full: no drop, never negative
    assert analysis.relative_drop(0.0, 0.0) == 0.0
    assert analysis.relative_drop(2.0, 4.0, higher_is_better=False) == pytest.approx(0.5)  # a loss that doubled


def test_exclusive_sets_of_three_masks():
    a = {"w": torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)}
    b = {"w": torch.tensor([0, 1, 1, 1, 0, 0], dtype=torch.bool)}
    c = {"w": torch.tensor([0, 0, 1, 1, 1, 0], dtype=torch.bool)}
    e = exclusive_masks([a, b, c])
    assert e[0]["w"].tolist() == [True, False, False, False, False, True]
    assert e[1]["w"].tolist() == [False] * 6  # every weight of b is also in a or c
    assert e[2]["w"].tolist() == [False, False, False, False, True, False]


def test_random_control_removes_as_many_per_layer_and_is_seeded():
    m = {"a": torch.rand(30, 7) < 0.3, "b": torch.rand(50) < 0.8}
    r1 = _random_like_counts(m, torch.Generator().manual_seed(3))
    r2 = _random_like_counts(m, torch.Generator().manual_seed(3))
    for k in m:
        assert int(r1[k].sum()) == int(m[k].sum()) and r1[k].shape == m[k].shape
        assert torch.equal(r1[k], r2[k])
    assert not torch.equal(r1["a"], m["a"])


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def test_io_tensors_are_the_first_and_last_layer_with_their_biases():
    net = _net()
    names = [n for n, _ in net.named_parameters()]
    assert io_tensors(net, names) == ("0.weight", "0.bias", "4.weight", "4.bias")
    assert io_tensors(net, ["0.weight", "2.weight", "4.weight"]) == ("0.weight", "4.weight")


class Regress(Task):
    """A toy task: match the unmasked network's outputs; metric = R^2 clipped at 0."""

    name, metric, higher_is_better = "copy", "score", True

    def __init__(self, net):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 6, generator=gen)
        with torch.no_grad():
            self.y = net(self.x)

    def batches(self, split, batch_size, generator):
        yield (self.x, self.y)

    def loss(self, model, batch):
        return ((model(batch[0]) - batch[1]) ** 2).mean()

    def evaluate(self, model, batches):
        mse = sum(float(((model(x) - y) ** 2).mean()) for x, y in batches)
        return {"score": max(0.0, 1.0 - mse / float(self.y.var()))}


def test_keep_io_never_removes_input_and_output_weights():
    net = _net()
    task = Regress(net)
    names = [n for n, p in net.named_parameters() if n.endswith("weight")]
    shapes = dict(net.named_parameters())
    # a mask that keeps exactly the input and output layers: removing it empties those layers
    io_only = {n: torch.full(shapes[n].shape, n in ("0.weight", "4.weight")) for n in names}
    plain = ablate(net, [task], [io_only], seed=0)
    kept = ablate(net, [task], [io_only], seed=0, keep_io=True)
    assert plain.full == kept.full and plain.full[0] == pytest.approx(1.0)
    assert plain.inverted[0][0] < 0.9 * plain.full[0]  # the I/O weights mattered
    assert kept.inverted[0][0] == pytest.approx(kept.full[0])  # ... and were kept whole
    assert kept.control[0][0] == pytest.approx(kept.full[0])  # the control removes from the same layers only
    assert kept.keep_io and kept.io_tensors == ("0.weight", "4.weight")


def test_ablate_and_evaluate_under_mask_never_move_the_callers_module(tmp_path):
    """On another device they work on a copy (issue 22): the caller's network stays where it was. 'meta' stands
    in for a GPU on the CPU: the work there fails, but before the fix the caller's weights had moved to it."""
    from types import SimpleNamespace

    from maskprobe.measure.evaluation import evaluate_under_mask

    net = _net()
    task = Regress(net)
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if n.endswith("weight")}
    with pytest.raises(Exception):  # noqa: B017 - evaluating on 'meta' fails; where the weights are is the point
        ablate(net, [task], [mask], device="meta")
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    ckpt = SimpleNamespace(model=net, path=None, format="module")
    with pytest.raises(Exception):  # noqa: B017
        evaluate_under_mask(ckpt, [task], None, device="meta")
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    rows = evaluate_under_mask(ckpt, [task], None, device="cpu")  # on its own device: no copy, the same numbers
    assert rows[0][1]["score"] == pytest.approx(1.0)
