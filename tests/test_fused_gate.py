"""The compile backend (maskprobe/learning/fused.py) against the torch reference of maskprobe/learning/kernels.py, on the
CPU through torch.compile's C++ build (the same source inductor turns into Triton kernels on CUDA); the CUDA checks skip here.

Compiling costs seconds per graph, so every test uses the same two tensors and K=2 (one graph each), and the
training tests a 16x16 network."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from maskprobe.learning import fused as fused_mod
from maskprobe.learning import kernels
from maskprobe.learning.maskstep import MaskLogits, resolve_backend

SHAPES = {"a.weight": (40, 30), "b.weight": (257,)}


def weights(device="cpu"):
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=g).to(device) for n, s in SHAPES.items()}


def logits_like(mask):
    mask.flat_logits.copy_(torch.randn(mask.numel, generator=torch.Generator().manual_seed(1)) * 2)
    torch.sigmoid(mask.flat_logits, out=mask._buf)


def upstream(gated, step):
    return [{n: torch.randn(t.shape, generator=torch.Generator().manual_seed(100 * step + k)).to(t.device) for n, t in s.items()}
            for k, s in enumerate(gated)]  # fmt: skip


def run_steps(backend, steps=2, k=2, device="cpu", tau=1.0):
    """``steps`` steps through the production update (:meth:`MaskLogits.update`: gradient, clip, Adam)."""
    mask = MaskLogits(weights(device), seed=7, backend=backend, tau=tau)
    logits_like(mask)
    trace = []
    for step in range(steps):
        gated = [mask.sample(step, i) for i in range(k)]
        norm = mask.update(step, upstream(gated, step), 1e-3, 1.0)
        trace.append(([{n: t.detach().clone() for n, t in s.items()} for s in gated], norm))
    return mask, trace


def first_gradient(backend, device="cpu", tau=1.0):
    mask = MaskLogits(weights(device), seed=7, backend=backend, tau=tau)
    logits_like(mask)
    norm = mask.gradient(0, upstream([mask.sample(0, i) for i in range(2)], 0), 1e-3)
    return mask._buf.clone(), norm


def test_backend_names_resolve_without_compiling():
    assert resolve_backend("compile", torch.device("cpu"), [torch.float32]) == "compile"
    assert resolve_backend("auto", torch.device("cuda"), [torch.float32]) == "compile"
    assert resolve_backend("auto", torch.device("cpu"), [torch.float32]) in ("numba", "torch")  # the CPU default unchanged


def test_importing_maskprobe_and_its_cli_compiles_nothing():
    code = ("import sys, maskprobe, maskprobe.cli, maskprobe.learning.engine, maskprobe.learning.training; "
            "print('maskprobe.learning.fused' in sys.modules, 'torch._inductor' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_hash_uniforms_match_the_reference_bitwise():
    n = 5000
    key = kernels.noise_key(3, 9, 1, 2)
    k1, k2 = (torch.tensor(x, dtype=torch.int64) for x in key)
    assert torch.equal(fused_mod.uniform(n, k1, k2, torch.device("cpu")), kernels.uniform_torch(n, key))


@pytest.mark.slow  # compiling: seconds with a warm inductor cache, minutes cold on a busy 2-core machine
def test_compiled_forward_reads_the_hash_uniforms_back():
    mask = MaskLogits({n: torch.ones(s) for n, s in SHAPES.items()}, init=0.0, seed=5, backend="compile")  # p = 1/2
    gated = mask.sample(3, 1)
    for j, n in enumerate(SHAPES):
        u = kernels.uniform_torch(gated[n].numel(), kernels.noise_key(5, 3, 1, j))
        assert torch.equal(gated[n].detach().reshape(-1), (u > 0.5).float())


@pytest.mark.slow
def test_compiled_gated_weights_and_gradients_equal_the_torch_backend_and_adam_agrees_to_rounding():
    grad_ref, norm_ref = first_gradient("torch")
    grad_got, norm_got = first_gradient("compile")
    assert torch.equal(grad_ref, grad_got) and norm_got == pytest.approx(norm_ref, rel=1e-12)  # same p: bitwise
    ref, ref_trace = run_steps("torch")
    got, got_trace = run_steps("compile")
    assert got.fallback() is None
    for (g_ref, n_ref), (g_got, n_got) in zip(ref_trace, got_trace, strict=True):
        for s_ref, s_got in zip(g_ref, g_got, strict=True):
            assert all(torch.equal(s_ref[n], s_got[n]) for n in SHAPES)  # bitwise: the same mask of the seed
        assert n_got == pytest.approx(n_ref, rel=1e-6)
    # Adam: ATen's vectorised CPU sqrt is not correctly rounded, inductor's is: logits agree to a few ulp
    assert torch.allclose(ref.flat_logits, got.flat_logits, rtol=0, atol=1e-6)
    assert torch.allclose(ref.exp_avg_sq, got.exp_avg_sq, rtol=1e-5, atol=0)
    assert got.adam_step == ref.adam_step == 2 and got.logit_sum == pytest.approx(ref.logit_sum, rel=1e-6)
    assert got.kept() == int((got.flat_logits > 0).sum())
    assert torch.equal(got._buf, torch.sigmoid(got.flat_logits))


@pytest.mark.slow
def test_compiled_gradient_with_a_temperature_agrees_to_rounding():
    grad_ref, _ = first_gradient("torch", tau=0.5)
    grad_got, _ = first_gradient("compile", tau=0.5)
    assert torch.allclose(grad_ref, grad_got, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_stacked_samples_are_rows_of_the_single_samples():
    mask = MaskLogits(weights(), seed=7, backend="compile")
    logits_like(mask)
    stacked = {n: t.detach().clone() for n, t in mask.sample_stacked(4, 2).items()}
    for i in range(2):
        single = mask.sample(4, i)
        assert all(torch.equal(stacked[n][i], single[n].detach()) for n in SHAPES)


@pytest.mark.slow
def test_lazy_update_skips_a_non_finite_step_and_every_later_one():
    mask = MaskLogits(weights(), seed=7, backend="compile")
    logits_like(mask)
    loss = torch.zeros(2, dtype=torch.float64)
    for step in range(3):
        gated = [mask.sample(step, i) for i in range(2)]
        grads = upstream(gated, step)
        if step == 1:
            grads[1]["b.weight"][5] = float("nan")
            before = (mask.flat_logits.clone(), mask.exp_avg.clone())
        mask.update_lazy(step, grads, 1e-3, 1.0, loss)
    fail = mask.failure()
    assert fail == {"step": 1, "kind": "gradient", "loss": 0.0, "task_loss": 0.0, "tensor": "b.weight"}
    assert torch.equal(mask.flat_logits, before[0]) and torch.equal(mask.exp_avg, before[1]) and mask.adam_step == 1
    assert torch.equal(mask._buf, torch.sigmoid(mask.flat_logits))


def test_a_compile_failure_falls_back_to_the_same_arithmetic_and_says_why(monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fused_mod, "_FUNCTIONS", {})
    monkeypatch.setattr(torch, "compile", broken)
    got, got_trace = run_steps("compile", steps=1)
    ref, ref_trace = run_steps("torch", steps=1)
    assert got.fallback() == "RuntimeError: no compiler here"
    assert all(torch.equal(ref_trace[0][0][i][n], got_trace[0][0][i][n]) for i in range(2) for n in SHAPES)
    assert torch.equal(first_gradient("torch")[0], first_gradient("compile")[0])
    assert torch.allclose(ref.flat_logits, got.flat_logits, rtol=0, atol=1e-6)


def test_engine_metadata_names_the_fallback(monkeypatch):
    from torch import nn

    from maskprobe.config import TrainConfig
    from maskprobe.learning.engine import FusedEngine

    monkeypatch.setattr(fused_mod, "_FUNCTIONS", {})
    monkeypatch.setattr(torch, "compile", lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("boom")))
    engine = FusedEngine(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), TrainConfig(backend="compile", steps=1))
    assert engine.info()["backend"] == "compile"  # nothing compiled yet
    engine.mask.sample(0, 0)
    assert engine.info()["backend"] == "torch (compile failed: RuntimeError: boom)"


@pytest.mark.slow
def test_training_with_the_compile_backend_matches_the_torch_backend():
    from maskprobe.config import TrainConfig
    from maskprobe.learning.training import train_mask
    from maskprobe.tasks import TaskRef
    from sample_tasks.arithmetic import AddTask

    task = AddTask("16,16", 64)
    torch.manual_seed(0)
    model = task.build_model()
    out = {}
    for backend, batched in (("torch", False), ("compile", False), ("compile", True)):
        config = TrainConfig(steps=6, batch_size=32, samples=2, seed=1, log_every=3, backend=backend, batched_samples=batched)
        out[backend, batched] = train_mask(model, task, TaskRef("arith-add", {}), config)
    ref = out["torch", False]
    for batched in (False, True):  # the loop and the vmap path (stacked samples) through the lazy engine
        got = out["compile", batched]
        assert got.engine["backend"] == "compile" and got.state.step == ref.state.step == 6
        assert got.engine.get("samples", "vmap") == "vmap"
        assert got.final_loss == pytest.approx(ref.final_loss, rel=1e-5)
        for n, t in ref.state.logits.items():
            assert torch.allclose(t, got.state.logits[n], atol=1e-5)
        assert got.state.optimizer["step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_cli_nan_checks_hold_when_the_numbers_stay_on_the_device(tmp_path, capsys, mode):
    from conftest_reliability import make_checkpoint, train_argv
    from test_cli_numerical_faults import PLUGIN

    from maskprobe.cli import run

    make_checkpoint(tmp_path / "c.pt")
    (tmp_path / "faulty.py").write_text(PLUGIN)
    out = tmp_path / "m.safetensors"
    argv = train_argv(tmp_path / "c.pt", out, "--task-arg", "at=5", "--task-arg", f"mode={mode}", "--save-every", "2",
                      "--backend", "compile", task=f"{tmp_path / 'faulty.py'}:Faulty", steps=50)  # fmt: skip
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 4, err
    assert "step 6" in err and ("loss is nan" in err if mode == "loss" else "'0.weight'" in err)
    state = torch.load(tmp_path / "m.state.pt", weights_only=True)
    assert state["step"] == 5 and state["optimizer"]["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["logits"].values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_masks_are_the_cpus_and_the_gradients_agree_to_rounding():
    cpu, cpu_trace = run_steps("torch", steps=1)
    got, got_trace = run_steps("compile", steps=1, device="cuda")
    eager, eager_trace = run_steps("torch", steps=1, device="cuda")
    assert got.fallback() is None
    for i in range(2):
        assert all(torch.equal(cpu_trace[0][0][i][n], got_trace[0][0][i][n].cpu()) for n in SHAPES)
        assert all(torch.equal(eager_trace[0][0][i][n], got_trace[0][0][i][n]) for n in SHAPES)
    assert torch.allclose(first_gradient("torch")[0], first_gradient("compile", device="cuda")[0].cpu(), rtol=1e-5, atol=1e-8)
    assert torch.allclose(cpu.flat_logits, got.flat_logits.cpu(), atol=1e-6)
    assert got.kept() == int((got.flat_logits > 0).sum())
