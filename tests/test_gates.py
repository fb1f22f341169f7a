"""The fast mask step (maskprobe/learning/kernels.py, maskprobe/learning/maskstep.py) against DESIGN §2 and the
reference formula."""

from __future__ import annotations

import math

import pytest
import torch

from maskprobe.errors import BadInputError
from maskprobe.learning import kernels
from maskprobe.learning.gates import reference_mask
from maskprobe.learning.maskstep import MaskLogits, resolve_backend

BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not kernels.numba_available(), reason="numba absent"))]
FWD = {"torch": kernels.gate_forward_torch, "numba": getattr(kernels, "gate_forward_numba", None)}
BWD = {"torch": kernels.gate_backward_torch, "numba": getattr(kernels, "gate_backward_numba", None)}


def test_hash_uniforms_are_uniform_in_the_open_interval_and_independent_across_samples():
    n = 1 << 20
    a = kernels.uniform_torch(n, kernels.noise_key(0, 0, 0, 0))
    b = kernels.uniform_torch(n, kernels.noise_key(0, 0, 1, 0))
    assert 0 < float(a.min()) and float(a.max()) < 1
    assert abs(float(a.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    counts = torch.histc(a, bins=32, min=0, max=1)
    chi2 = float(((counts - n / 32) ** 2 / (n / 32)).sum())
    assert chi2 < 31 + 6 * math.sqrt(2 * 31)  # chi-square with 31 dof, ~6 sigma
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(corr) < 4 / math.sqrt(n)
    neighbours = float(torch.corrcoef(torch.stack([a[:-1], a[1:]]))[0, 1])  # counter-based: no lag-1 structure
    assert abs(neighbours) < 4 / math.sqrt(n)


def test_noise_keys_differ_for_every_field():
    base = kernels.noise_key(3, 10, 1, 2)
    others = {kernels.noise_key(4, 10, 1, 2), kernels.noise_key(3, 11, 1, 2), kernels.noise_key(3, 10, 2, 2),
              kernels.noise_key(3, 10, 1, 3)}  # fmt: skip
    assert base not in others and len(others) == 4
    assert kernels.noise_key(3, 10, 1, 2) == base


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("logit", [-3.0, 0.0, 0.7, 2.0])
def test_keep_rate_is_sigmoid_of_logit_within_4_sigma(backend, logit):
    n = 1_000_000
    w = torch.ones(n)
    p = torch.sigmoid(torch.full((n,), logit))
    out = torch.empty(n)
    FWD[backend](w, p, kernels.noise_key(1, 0, 0, 0), out)
    kept = float((out != 0).float().mean())
    q = 1 / (1 + math.exp(-logit))
    assert abs(kept - q) < 4 * math.sqrt(q * (1 - q) / n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_is_exactly_w_or_zero_and_agrees_with_the_reference_sample(backend):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5000, generator=g)
    logits = torch.randn(5000, generator=g) * 3
    key = kernels.noise_key(0, 5, 2, 1)
    out = FWD[backend](w, torch.sigmoid(logits), key, torch.empty(5000))
    ref = reference_mask(logits, kernels.uniform_torch(5000, key))
    assert torch.equal(out, torch.where(ref > 0.5, w, torch.zeros(())))
    assert set(out[out != w].tolist()) <= {0.0}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("k", [1, 3])
def test_gradient_matches_autograd_through_the_reference_formula(backend, tau, k):
    g = torch.Generator().manual_seed(1)
    n, reg = 3000, 1e-3
    w = torch.randn(n, generator=g)
    base = torch.randn(n, generator=g) * 2
    upstream = [torch.randn(n, generator=g) for _ in range(k)]
    keys = [kernels.noise_key(9, 4, j, 0) for j in range(k)]
    # the reference: loss = sum_k <upstream_k, w * m_k> + reg * sum(l), differentiated by autograd
    lref = base.clone().requires_grad_(True)
    loss = sum(
        (up * w * reference_mask(lref, kernels.uniform_torch(n, key), tau)).sum() for up, key in zip(upstream, keys, strict=True)
    )
    (loss + reg * lref.sum()).backward()
    out = torch.empty(n)
    sq = BWD[backend](w, torch.sigmoid(base), base, upstream, keys, tau, reg, out)
    assert torch.allclose(out, lref.grad, rtol=1e-4, atol=1e-6)
    assert math.isclose(sq, float((out.double() ** 2).sum()), rel_tol=1e-5)


@pytest.mark.skipif(not kernels.numba_available(), reason="numba absent")
def test_numba_and_torch_kernels_are_bitwise_identical_given_the_same_p():
    g = torch.Generator().manual_seed(2)
    n = 100_003  # not a multiple of the block size
    w, logits = torch.randn(n, generator=g), torch.randn(n, generator=g) * 2
    p = torch.sigmoid(logits)
    key = kernels.noise_key(1, 2, 3, 4)
    a, b = torch.empty(n), torch.empty(n)
    assert torch.equal(kernels.gate_forward_torch(w, p, key, a), kernels.gate_forward_numba(w, p, key, b))
    grads = [torch.randn(n, generator=g) for _ in range(4)]
    keys = [kernels.noise_key(1, 2, j, 4) for j in range(4)]
    sa = kernels.gate_backward_torch(w, p, logits, grads, keys, 1.0, 1e-4, a)
    sb = kernels.gate_backward_numba(w, p, logits, grads, keys, 1.0, 1e-4, b)
    assert torch.equal(a, b)
    assert math.isclose(sa, sb, rel_tol=1e-5)  # the norm sums in float32 blocks; the gradient is exact
    # in place (out is p itself), as MaskLogits uses it
    pc = p.clone()
    kernels.gate_backward_numba(w, pc, logits, grads, keys, 1.0, 1e-4, pc)
    assert torch.equal(pc, a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_with_clip_matches_torch_optim_adam_and_clip_grad_norm(backend):
    g = torch.Generator().manual_seed(3)
    n = 4000
    ref = (torch.randn(n, generator=g) * 2).requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2)
    logits, m, v = ref.detach().clone(), torch.zeros(n), torch.zeros(n)
    fn = kernels.adam_torch if backend == "torch" else kernels.adam_numba
    for t in range(1, 6):
        grad = torch.randn(n, generator=g) * 3
        ref.grad = grad.clone()
        norm = float(torch.nn.utils.clip_grad_norm_([ref], 1.0))
        opt.step()
        buf = grad.clone()
        total = fn(logits, buf, m, v, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, t=t, scale=min(1.0, 1.0 / (norm + 1e-6)))
        assert torch.allclose(logits, ref.detach(), rtol=1e-5, atol=1e-6)
        assert torch.allclose(buf, torch.sigmoid(logits))  # the work buffer holds p again
        assert math.isclose(total, float(logits.sum()), rel_tol=1e-5, abs_tol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_logits_state_is_16_bytes_per_weight_and_samples_are_leaves_of_the_right_shape(backend):
    weights = {"a": torch.randn(30, 20), "b": torch.randn(7)}
    eng = MaskLogits(weights, init=2.0, seed=5, backend=backend)
    assert eng.backend == backend
    assert eng.memory_bytes(4) == {"state": 16 * 607, "gated": 4 * 4 * 607}
    s = eng.sample(0, 0)
    assert {n: tuple(t.shape) for n, t in s.items()} == {"a": (30, 20), "b": (7,)}
    assert all(t.requires_grad and t.is_leaf for t in s.values())
    for n, t in s.items():
        assert torch.equal(t[t != 0], weights[n][t != 0])  # kept weights are bitwise the originals
    first = s["a"].detach().clone()
    assert torch.equal(eng.sample(0, 0)["a"], first)  # same (seed, step, k): same sample
    assert not torch.equal(eng.sample(1, 0)["a"], first)  # (buffers are reused: compare copies)
    assert not torch.equal(eng.sample(0, 1)["a"], first)


def test_mask_logits_update_equals_the_reference_computation():
    g = torch.Generator().manual_seed(4)
    weights = {"a": torch.randn(40, 30, generator=g), "b": torch.randn(25, generator=g)}
    eng = MaskLogits(weights, init=1.0, lr=0.05, seed=1, backend="torch")
    ups = [{n: torch.randn(w.shape, generator=g) for n, w in weights.items()} for _ in range(2)]
    # reference: autograd through reference_mask with the same noise, then clip_grad_norm_ and torch Adam
    ref = {n: torch.full(w.shape, 1.0, requires_grad=True) for n, w in weights.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=0.05)
    loss = 0.0
    for k, up in enumerate(ups):
        for j, (n, w) in enumerate(weights.items()):
            u = kernels.uniform_torch(w.numel(), eng.key(0, k, j)).view(w.shape)
            loss = loss + (up[n] * w * reference_mask(ref[n], u)).sum()
    loss = loss + 0.01 * sum(t.sum() for t in ref.values())
    loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(list(ref.values()), 1.0))
    opt.step()
    got = eng.update(0, ups, reg=0.01, clip=1.0)
    assert math.isclose(got, norm, rel_tol=1e-5)
    for n, t in eng.logits().items():
        assert torch.allclose(t, ref[n].detach(), rtol=1e-5, atol=1e-6), n


def test_backend_resolution_and_errors():
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu, [torch.float32]) == "torch"
    assert resolve_backend("auto", cpu, [torch.bfloat16]) == "torch"  # numba kernels are float32-only
    assert resolve_backend("auto", cpu, [torch.float32]) == ("numba" if kernels.numba_available() else "torch")
    with pytest.raises(BadInputError):
        resolve_backend("fast", cpu, [torch.float32])
    if kernels.numba_available():
        with pytest.raises(BadInputError, match="float32"):
            resolve_backend("numba", cpu, [torch.float16])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_torch_backend_matches_cpu_bitwise_on_the_forward():
    g = torch.Generator().manual_seed(5)
    w, logits = torch.randn(10000, generator=g), torch.randn(10000, generator=g)
    key = kernels.noise_key(0, 1, 0, 0)
    cpu = kernels.gate_forward_torch(w, torch.sigmoid(logits), key, torch.empty(10000))
    wc, pc = w.cuda(), torch.sigmoid(logits.cuda())
    gpu = kernels.gate_forward_torch(wc, pc, key, torch.empty_like(wc))
    # the hash is integer arithmetic: the same noise on every device; p may differ by an ulp at the threshold
    assert float((gpu.cpu() != cpu).float().mean()) < 1e-3
    eng = MaskLogits({"w": wc.view(100, 100)}, backend="torch")
    assert eng.backend == "torch" and eng.sample(0, 0)["w"].is_cuda
    assert MaskLogits({"w": wc.view(100, 100)}, backend="auto").backend == "compile"  # auto on CUDA: the fused kernels
