"""``train --adam-state bf16``: Adam's moments of the logits stored in bfloat16 (half the optimiser's memory),
the update computed in fp32; the mask close to fp32's (issue 23 item 7)."""

from __future__ import annotations

import pytest
import torch

from maskprobe.cli import run
from maskprobe.config import TrainConfig
from maskprobe.errors import BadInputError
from maskprobe.learning.kernels import adam_step
from maskprobe.learning.maskstep import MaskLogits
from maskprobe.masks.maskfile import load_masks


def test_the_moments_are_stored_in_bf16_and_the_update_is_fp32s_rounded():
    torch.manual_seed(0)
    n = 10_000
    g = torch.randn(n) * 1e-3
    l32, l16 = torch.zeros(n), torch.zeros(n)
    m32, v32 = torch.zeros(n), torch.zeros(n)
    m16, v16 = torch.zeros(n, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16)
    for t in range(1, 4):
        adam_step(l32, g, m32, v32, lr=0.01, b1=0.9, b2=0.999, eps=1e-8, t=t, scale=1.0)
        adam_step(l16, g, m16, v16, lr=0.01, b1=0.9, b2=0.999, eps=1e-8, t=t, scale=1.0)
    assert m16.dtype == v16.dtype == torch.bfloat16
    torch.testing.assert_close(m16.float(), m32, rtol=2**-7, atol=0)  # bf16 keeps 8 bits of mantissa
    torch.testing.assert_close(l16, l32, rtol=1e-2, atol=1e-6)
    assert not torch.equal(l16, l32)  # the rounding is real: the two paths differ


def test_mask_logits_hold_half_the_bytes_and_numba_is_refused():
    w = {"a": torch.randn(64, 32)}
    half = MaskLogits(w, backend="torch", state_dtype=torch.bfloat16)
    full = MaskLogits(w, backend="torch")
    assert half.exp_avg.element_size() * 2 == full.exp_avg.element_size() == 4
    assert MaskLogits(w, backend="auto", state_dtype=torch.bfloat16).backend in ("torch", "compile")
    try:
        import numba  # noqa: F401
    except ImportError:
        return
    with pytest.raises(BadInputError, match="adam-state"):
        MaskLogits(w, backend="numba", state_dtype=torch.bfloat16)


def test_the_option_is_checked_and_recorded_only_when_not_fp32():
    with pytest.raises(BadInputError, match="--adam-state must be one of fp32, bf16"):
        TrainConfig(adam_state="fp16").check()
    assert "adam_state" not in TrainConfig().hparams()
    assert TrainConfig(adam_state="bf16").hparams()["adam_state"] == "bf16"


def _train(ckpt, hidden, out, *extra):
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=64",
            "--steps", "60", "--batch-size", "32", "--lr", "0.1", "--beta", "1e-3", "--device", "cpu",
            "--out", str(out), "--quiet", *extra]  # fmt: skip
    assert run(argv) == 0


def test_a_bf16_state_mask_agrees_with_fp32s(tiny_addmul, tmp_path):
    ckpt, _, hidden = tiny_addmul
    _train(ckpt, hidden, tmp_path / "a.safetensors")
    _train(ckpt, hidden, tmp_path / "b.safetensors", "--adam-state", "bf16")
    _train(ckpt, hidden, tmp_path / "c.safetensors", "--seed", "1")
    a, b, c = (load_masks(tmp_path / f"{x}.safetensors") for x in "abc")
    assert b.metadata["hparams"]["adam_state"] == "bf16" and "adam_state" not in a.metadata["hparams"]

    def agree(x, y):
        return sum(int((x.masks[n] == y.masks[n]).sum()) for n in x.masks) / sum(t.numel() for t in x.masks.values())

    kept = sum(int(t.sum()) for t in a.masks.values()) / sum(t.numel() for t in a.masks.values())
    assert 0.05 < kept < 0.95
    # measured over seeds 0-3 on this network: bf16 state vs fp32 0.996-0.9995; fp32 vs another seed 0.915-0.927
    assert agree(a, b) >= 0.98 and agree(a, b) > agree(a, c)


def test_bf16_state_does_not_resume_an_fp32_state(tiny_addmul, tmp_path, capsys):
    ckpt, _, hidden = tiny_addmul
    _train(ckpt, hidden, tmp_path / "m.safetensors", "--adam-state", "bf16")
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=64",
            "--steps", "60", "--batch-size", "32", "--lr", "0.1", "--beta", "1e-3", "--device", "cpu",
            "--out", str(tmp_path / "m.safetensors"), "--quiet", "--resume"]  # fmt: skip
    assert run(argv) == 2  # the finished mask records another adam_state: not taken for this run's
    assert "adam_state" in capsys.readouterr().err
