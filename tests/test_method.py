"""The method of DESIGN §2: sampler, straight-through gradient, frozen weights, binarisation, selection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from maskprobe.learning.gates import binarize, gate, reference_mask
from maskprobe.learning.selection import Selection, describe_selection, select_parameters
from maskprobe.learning.training import TrainConfig, train_mask
from maskprobe.tasks import TaskRef
from sample_tasks.arithmetic import AddTask


def uniform_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform draws in the open interval (0, 1) shaped like ``like`` (the engines hash a counter instead)."""
    return torch.rand(like.shape, generator=generator, dtype=torch.float32).clamp_(1e-12, 1.0 - 1e-7)


@pytest.mark.parametrize("logit", [-2.0, 0.0, 0.7, 2.0])
def test_keep_rate_matches_sigmoid_of_logit(logit):
    n = 400_000
    w = torch.ones(n)
    logits = torch.full((n,), logit)
    gen = torch.Generator().manual_seed(1)
    kept = (gate(w, logits, uniform_noise(w, gen)) != 0).float().mean().item()
    p = 1 / (1 + math.exp(-logit))
    assert abs(kept - p) < 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_gate_matches_reference_forward_and_straight_through_gradient(tau):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=gen)
    base = torch.randn(64, 32, generator=gen) * 2
    u = uniform_noise(w, gen)
    upstream = torch.randn(64, 32, generator=gen)

    l1 = base.clone().requires_grad_(True)
    out = gate(w, l1, u, tau)
    (out * upstream).sum().backward()

    l2 = base.clone().requires_grad_(True)
    ref = w * reference_mask(l2, u, tau)
    (ref * upstream).sum().backward()

    assert torch.equal(out, w * (ref.detach() != 0))  # forward: exactly w or 0
    assert torch.allclose(out, ref.detach(), atol=1e-6)
    assert torch.allclose(l1.grad, l2.grad, rtol=1e-4, atol=1e-6)
    # the straight-through derivative is w * s(1-s)/tau, not zero
    s = torch.sigmoid((base + torch.log(u) - torch.log1p(-u)) / tau)
    assert torch.allclose(l1.grad, upstream * w * s * (1 - s) / tau, rtol=1e-4, atol=1e-6)


def test_binarize_keeps_strictly_positive_logits():
    logits = torch.tensor([-1.0, -0.0, 0.0, 1e-7, 3.0])
    assert binarize(logits).tolist() == [False, False, False, True, True]


class _WithEverything(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)
        self.tok = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 2)


def test_default_selection_masks_weights_not_norms_biases_or_embeddings():
    names = select_parameters(_WithEverything())
    assert names == ["lin.weight", "out.weight"]  # norm gains only with --mask-norms (docs/method.md)
    assert select_parameters(_WithEverything(), Selection(mask_norms=True)) == ["lin.weight", "norm.weight", "out.weight"]


def test_selection_flags():
    m = _WithEverything()
    assert "lin.bias" in select_parameters(m, Selection(mask_biases=True))
    assert "norm.bias" in select_parameters(m, Selection(mask_biases=True, mask_norms=True))
    assert "norm.bias" not in select_parameters(m, Selection(mask_biases=True))  # the default leaves norms alone
    assert select_parameters(m, Selection(include=("out.*",))) == ["out.weight", "out.bias"]
    assert select_parameters(m, Selection(include=("tok.*",))) == ["tok.weight"]  # explicit include wins
    assert select_parameters(m, Selection(exclude=("norm.*",))) == ["lin.weight", "out.weight"]
    reasons = {r.name: r.reason for r in describe_selection(m)}
    assert reasons["tok.weight"] == "embedding" and reasons["lin.bias"] == "bias"


def test_training_leaves_weights_bitwise_unchanged_and_module_state_restored(tiny_addmul):
    _, model, hidden = tiny_addmul
    model = _copy(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = AddTask(hidden=hidden, eval_size=256)
    res = train_mask(model, task, TaskRef("arith-add", {"hidden": hidden}), TrainConfig(steps=20, batch_size=32))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training  # mode restored
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert set(res.masks) == {"0.weight", "2.weight", "4.weight"}
    for name, m in res.masks.items():
        assert m.dtype == torch.bool
        assert torch.equal(m, res.state.logits[name] > 0)
    assert res.state.step == 20


def test_regulariser_pushes_density_down_and_loss_matches_formula(tiny_addmul):
    _, model, hidden = tiny_addmul
    task = AddTask(hidden=hidden, eval_size=256)
    cfg = TrainConfig(steps=200, batch_size=32, beta=1e-1, log_every=200)
    res = train_mask(_copy(model), task, TaskRef("arith-add", {}), cfg)
    n = sum(m.numel() for m in res.masks.values())
    # with a strong regulariser most logits fall below zero; with beta=0 they stay near the 2.0 init
    assert res.density()["total"] < 0.9
    res0 = train_mask(_copy(model), task, TaskRef("arith-add", {}), TrainConfig(steps=200, batch_size=32, beta=0.0))
    assert res0.density()["total"] > res.density()["total"]
    assert n == 42 * 24 + 24 * 24 + 24 * 20


def test_same_seed_same_mask(tiny_addmul):
    _, model, hidden = tiny_addmul
    task = AddTask(hidden=hidden, eval_size=128)
    cfg = TrainConfig(steps=30, batch_size=16, seed=7)
    a = train_mask(_copy(model), task, TaskRef("arith-add", {}), cfg)
    b = train_mask(_copy(model), task, TaskRef("arith-add", {}), cfg)
    c = train_mask(_copy(model), task, TaskRef("arith-add", {}), TrainConfig(steps=30, batch_size=16, seed=8))
    assert all(torch.equal(a.state.logits[k], b.state.logits[k]) for k in a.masks)
    assert not all(torch.equal(a.state.logits[k], c.state.logits[k]) for k in a.masks)


def _copy(model):
    import copy

    return copy.deepcopy(model)
