"""The memory estimate before training: the formulas, the activation probe, and refusals whose suggested
flags really fit."""

from __future__ import annotations

import pytest
import torch
from conftest_reliability import make_checkpoint, one_thread, train_argv  # noqa: F401 (one_thread: autouse fixture)
from torch import nn

from maskprobe.cli import run
from maskprobe.errors import BadInputError
from maskprobe.memory import activation_bytes_per_example, check_fits, estimate, human, parse_size, suggestions


@pytest.mark.parametrize(
    ("text", "value"),
    [("8GiB", 8 * 1024**3), ("500MB", 500 * 10**6), ("1.5g", 1_500_000_000), ("123", 123), (" 2 kib ", 2048), ("off", None)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-5GB", "8 parsecs", ""])
def test_parse_size_rejects(text):
    with pytest.raises(BadInputError, match="--memory-limit"):
        parse_size(text)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_activation_probe_counts_leaf_outputs_per_example():
    model = mlp()
    x = torch.randn(3, 4)
    per = activation_bytes_per_example(model, lambda: model(x), 3)
    assert per == (8 + 8 + 2) * 4  # Linear out, ReLU out, Linear out; float32; the Sequential is not double-counted
    assert all(not m._forward_hooks for m in model.modules()), "hooks are removed"


def test_estimate_follows_the_documented_formulas():
    model = mlp()
    names = ["0.weight", "2.weight"]  # 32 + 16 = 48 masked weights, float32
    est = estimate(model, names, device="cpu", batch_size=16, samples=4, act_per_example=72)
    assert est.masked == 48
    assert est.logits == 8 * 48 and est.optimizer == 8 * 48
    assert est.samples == 4 * 48 * (4 + 4)
    assert est.backward == 24 * 32
    assert est.finish == 48 * (4 + 4)
    assert est.activations == 2 * 72 * 16
    assert est.weights == 0  # already resident on the CPU
    assert est.total == est.logits + est.optimizer + est.samples + est.backward + est.finish + est.activations
    on_gpu = estimate(model, names, device="cuda", batch_size=16, samples=4, act_per_example=72)
    params = sum(p.numel() for p in model.parameters()) * 4
    assert on_gpu.weights == params and on_gpu.total == est.total + params


@pytest.mark.parametrize("fraction", [0.95, 0.8, 0.6, 0.4])
def test_refusal_suggests_flags_that_fit(fraction):
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    names = ["0.weight", "2.weight"]
    act = activation_bytes_per_example(model, lambda: model(torch.randn(1, 64)), 1)
    est = estimate(model, names, device="cpu", batch_size=512, samples=4, act_per_example=act)
    budget = int(est.total * fraction)
    check_fits(est, est.total)  # exactly enough: no error
    with pytest.raises(BadInputError, match="would need about") as info:
        check_fits(est, budget)
    assert human(budget) in str(info.value)
    fixes = suggestions(est, budget)
    assert fixes, str(info.value)
    for fix in fixes:
        assert fix in str(info.value)
        flags = dict(zip(fix.split()[::2], map(int, fix.split()[1::2]), strict=True))
        again = estimate(model, names, device="cpu", batch_size=flags.get("--batch-size", 512),
                         samples=flags.get("--samples", 4), act_per_example=act)  # fmt: skip
        assert again.total <= budget, (fix, again.total, budget)


def test_refusal_when_even_the_logits_do_not_fit_names_the_other_ways():
    model = mlp()
    est = estimate(model, ["0.weight", "2.weight"], device="cpu", batch_size=8, samples=4, act_per_example=72)
    with pytest.raises(BadInputError, match="--include/--exclude"):
        check_fits(est, est.fixed // 2)


def test_cli_refuses_before_training_and_off_skips(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "c.pt", steps=1)
    out = tmp_path / "out" / "m.safetensors"
    assert run(train_argv(ckpt, out, "--memory-limit", "60KiB")) == 2
    err = capsys.readouterr().err
    assert "would need about" in err and "--samples" in err and not out.parent.exists()
    assert run(train_argv(ckpt, out, "--memory-limit", "off")) == 0 and out.exists()
