"""``train --keep F``: beta found during training (maskprobe/learning/controller.py), the settings chosen for the model's size
(maskprobe.config.auto_settings), and the warnings that name a collapsed or empty mask with the run's settings."""

from __future__ import annotations

import math

import pytest
import torch

from maskprobe.cli import run
from maskprobe.config import TrainConfig, auto_settings
from maskprobe.errors import BadInputError
from maskprobe.learning.controller import KeepController, kept_fraction
from maskprobe.masks.maskfile import load_masks


def test_beta_rises_while_the_target_is_kept_falls_below_it_and_stays_in_its_bounds():
    c = KeepController(0.9, 1e-4, steps=1000, lr=0.01, init=2.0)
    assert c.every == 10 and c.bounds == (1e-8, 1.0)
    c.full = 0.8
    c.observe(10, 0.8, 0.9)  # nothing lost: up by exp(rate)
    assert c.beta == pytest.approx(1e-4 * math.exp(c.rate)) and c.rate == pytest.approx(math.log(10) * 10 * 0.01 / 2)
    before = c.beta
    c.observe(20, 0.72, 0.8)  # exactly at the target: unchanged
    assert c.beta == pytest.approx(before)
    c.observe(30, 0.0, 0.1)  # far below: gap (0 - 0.9) / 0.1 = -9, down 9x as fast as the largest rise
    assert c.beta == pytest.approx(before * math.exp(-9 * c.rate))
    c.observe(35, -5.0, 0.1)  # the gap is clamped at -10
    assert c.beta == pytest.approx(before * math.exp(-19 * c.rate))
    for step in range(40, 2000, 10):
        c.observe(step, 0.0, 0.01)
    assert c.beta == 1e-8  # the lower bound
    c.observe(2000, 0.8, 0.5, move=False)  # during the warm-up beta stays
    assert c.beta == 1e-8


def test_the_mask_kept_is_the_sparsest_real_one_that_met_the_target():
    c = KeepController(0.9, 1e-4, steps=100)
    c.full = 1.0
    c.observe(1, 1.0, 0.8, lambda: "dense")
    c.observe(2, 0.95, 0.3, lambda: "sparse")
    c.observe(3, 0.5, 0.1, lambda: "collapsed")  # below the target: not kept
    c.observe(4, 0.99, 0.2, None)  # a lookahead mask, not a real one: not kept
    c.observe(5, 1.0, 0.05, lambda: "lucky batch", confirm=lambda: 0.8)  # the whole evaluation set says no
    assert c.best == "sparse" and c.best_info[0] == 2
    s = c.summary_of(1.0, 0.93)
    assert s["keep"] == 0.9 and s["met"] is True and s["ratio"] == pytest.approx(0.93) and s["kept_step"] == 2
    assert s["beta_start"] == 1e-4 and s["beta_min"] <= s["beta_max"] and len(s["trajectory"]) == 5
    assert c.summary_of(1.0, 0.5)["met"] is False


def test_kept_fraction_for_higher_and_lower_is_better_metrics():
    assert kept_fraction(0.8, 0.4) == pytest.approx(0.5)
    assert kept_fraction(2.0, 4.0, higher_is_better=False) == pytest.approx(0.5)  # perplexity doubled
    assert kept_fraction(0.8, float("nan")) == 0.0 and kept_fraction(None, 0.3) == 1.0


def test_keep_is_checked_and_recorded_only_when_given():
    assert "keep" not in TrainConfig().hparams() and "chosen" not in TrainConfig().hparams()  # fixed beta: as before
    assert TrainConfig(keep=0.95).hparams()["keep"] == 0.95
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(BadInputError, match="--keep"):
            TrainConfig(keep=bad).check()
    with pytest.raises(BadInputError, match="--beta > 0"):
        TrainConfig(keep=0.9, beta=0.0).check()


def test_settings_chosen_by_model_size_and_device_keep_the_small_networks_defaults():
    c = TrainConfig()
    every = ("steps", "batch_size", "lr")
    assert auto_settings(200_000, "cpu", c, every) == {"steps": 5000, "batch_size": 128, "lr": 0.01}  # the FNNs: unchanged
    assert auto_settings(10_800_000, "cpu", c, every) == {"steps": 500, "batch_size": 32, "lr": 0.05}  # MiniLM's recipe
    gpu = auto_settings(10_800_000, "cuda:0", c, every)
    assert gpu["steps"] > 500 and gpu["batch_size"] > 32
    assert auto_settings(10_800_000, "cpu", c, ("batch_size",)) == {"batch_size": 32}  # given flags stay
    # neither --beta nor --keep: the paper's beta for the small networks, a target past them (config.DEFAULT_KEEP)
    assert auto_settings(200_000, "cpu", c, ("beta",)) == {}
    assert auto_settings(10_800_000, "cpu", c, ("beta",)) == {"keep": 0.97, "beta": 1e-6}
    assert auto_settings(300_000_000, "cuda", c, ("beta",)) == {"keep": 0.97, "beta": 1e-6}


def test_a_large_model_given_no_beta_gets_a_target_and_says_so(tmp_path, capsys):
    from sample_tasks.arithmetic import AddMulTask

    hidden = "1500,1500"  # 42*1500 + 1500*1500 + 1500*20 = 2.34M masked weights: past the paper's network sizes
    task = AddMulTask(hidden=hidden)
    path = tmp_path / "big.pt"
    torch.save(task.build_model().state_dict(), path)
    argv = ["train", str(path), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=32",
            "--out", str(tmp_path / "m.safetensors"), "--device", "cpu", "--steps", "2", "--batch-size", "4"]  # fmt: skip
    assert run(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("settings for 2,343,000 masked weights") and "--keep 0.97, --beta 1e-06" in err[0]
    hp = load_masks(tmp_path / "m.safetensors").metadata["hparams"]
    assert hp["keep"] == 0.97 and hp["chosen"] == ["keep", "beta"] and hp["controller"]["beta_start"] == 1e-6
    # a given --beta is a fixed-beta run as before
    assert run([*argv[:-8], "--out", str(tmp_path / "b.safetensors"), "--device", "cpu", "--steps", "2", "--batch-size", "4",
                "--beta", "1e-4", "--quiet"]) == 0  # fmt: skip
    assert "keep" not in load_masks(tmp_path / "b.safetensors").metadata["hparams"]


@pytest.fixture(scope="module")
def fnn(tmp_path_factory):
    """An add/mul FNN 42-256-20 that learned addition (~87 % accuracy) in a few seconds."""
    from maskprobe.learning.fitting import Recipe
    from sample_tasks.arithmetic import AddMulTask, train_base

    recipe = Recipe(steps=800, batch_size=128, lr=0.01, warmup=0.05, schedule="cosine")
    model = train_base(AddMulTask(hidden="256", eval_size=512), seed=0, recipe=recipe)
    path = tmp_path_factory.mktemp("keep") / "fnn.pt"
    torch.save(model.state_dict(), path)
    return path


def _train(ckpt, out, *extra):
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", "hidden=256", "--task-arg", "eval_size=512",
            "--out", str(out), "--steps", "600", "--batch-size", "64", "--device", "cpu", "--quiet", *extra]  # fmt: skip
    assert run(argv) == 0
    return load_masks(out).metadata


def test_keep_finds_a_sparse_mask_that_keeps_the_target_and_records_it(fnn, tmp_path, capsys):
    dense = _train(fnn, tmp_path / "beta0.safetensors", "--beta", "0")
    meta = _train(fnn, tmp_path / "keep.safetensors", "--keep", "0.9", "--beta", "1e-4")  # a short run: start high
    full, kept = meta["metric_full"]["accuracy"], meta["metric_masked"]["accuracy"]
    assert full > 0.5 and kept >= 0.85 * full  # the target, with margin (the mask is chosen on one evaluation batch)
    assert meta["density"]["total"] < 0.6 < dense["density"]["total"]  # far sparser than beta 0 (~100 % kept)
    h = meta["hparams"]
    assert h["keep"] == 0.9 and h["controller"]["keep"] == 0.9 and h["controller"]["met"] is True
    assert h["controller"]["beta_start"] == 1e-4 and h["controller"]["beta_max"] > 1e-4  # beta moved
    assert h["controller"]["ratio"] == pytest.approx(kept / full)
    assert "keep" not in dense["hparams"] and "controller" not in dense["hparams"]


def test_an_empty_or_collapsed_mask_is_named_with_the_runs_settings(fnn, tmp_path, capsys):
    capsys.readouterr()
    argv = ["train", str(fnn), "--task", "arith-add", "--task-arg", "hidden=256", "--task-arg", "eval_size=512",
            "--out", str(tmp_path / "m.safetensors"), "--steps", "150", "--batch-size", "32", "--lr", "0.1", "--beta", "1",
            "--device", "cpu"]  # fmt: skip
    assert run(argv) == 0
    err = capsys.readouterr().err
    assert "collapsed" in err and "nearly empty" in err
    assert "beta 1, lr 0.1, 150 steps of batch 32" in err and "--keep" in err


def test_steps_and_batch_not_given_are_chosen_and_said_first(tmp_path, capsys, tiny_addmul):
    ckpt, _, hidden = tiny_addmul
    capsys.readouterr()
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=64",
            "--out", str(tmp_path / "m.safetensors"), "--device", "cpu", "--steps", "3"]  # fmt: skip
    assert run(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("settings for ") and "--batch-size 128" in err[0] and "--steps" not in err[0]
    meta = load_masks(tmp_path / "m.safetensors").metadata
    assert meta["hparams"]["chosen"] == ["batch_size"] and meta["hparams"]["batch_size"] == 128 and meta["steps"] == 3
    assert meta["hparams"]["lr"] == 0.01  # a given --steps keeps the default lr


def test_keep_without_beta_starts_low_and_a_given_beta_is_the_start(tmp_path, tiny_addmul):
    ckpt, _, hidden = tiny_addmul
    base = ["train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=64",
            "--steps", "4", "--batch-size", "8", "--device", "cpu", "--quiet", "--keep", "0.9"]  # fmt: skip
    assert run([*base, "--out", str(tmp_path / "a.safetensors")]) == 0
    assert run([*base, "--out", str(tmp_path / "b.safetensors"), "--beta", "1e-3"]) == 0
    a, b = (load_masks(tmp_path / f"{n}.safetensors").metadata["hparams"] for n in "ab")
    assert a["beta"] == 1e-6 and a["controller"]["beta_start"] == 1e-6 and a["keep"] == 0.9
    assert b["beta"] == 1e-3 and b["controller"]["beta_start"] == 1e-3


def _result(density: float, masked: float, controller: dict | None, keep: float | None = 0.9):
    from types import SimpleNamespace

    from maskprobe.learning.training import MaskResult
    from maskprobe.tasks import TaskRef
    from sample_tasks.arithmetic import AddTask

    n = 1000
    mask = torch.zeros(n, dtype=torch.bool)
    mask[: round(density * n)] = True
    cfg = TrainConfig(keep=keep, beta=1e-6 if keep else 1e-4)
    return MaskResult(AddTask(hidden="8"), TaskRef("arith-add", {}), cfg, {"w": mask}, SimpleNamespace(step=500), 0.0,
                      {"accuracy": 1.0}, {"accuracy": masked}, controller=controller)  # fmt: skip


def test_keep_warnings_say_what_fits_a_target_not_a_beta():
    met = {"keep": 0.9, "beta_min": 1e-7, "beta_max": 1e-4, "met": True, "ratio": 0.95}
    empty = _result(0.005, 0.95, met).warnings()
    assert len(empty) == 1 and "nearly empty (0.50 % kept" in empty[0] and "higher --keep" in empty[0]
    dense = _result(0.99, 0.95, met).warnings()
    assert len(dense) == 1 and "stayed dense" in dense[0] and "lower --keep" in dense[0] and "--beta" not in dense[0]
    missed = _result(0.3, 0.8, {**met, "met": False, "ratio": 0.8}).warnings()
    assert len(missed) == 1 and "--keep 0.9 not met" in missed[0] and "80.0 %" in missed[0]
    fixed = _result(0.005, 0.3, None, keep=None).warnings()  # a fixed beta: collapsed and empty, named with beta
    assert len(fixed) == 2 and all("beta 0.0001, lr 0.01, 500 steps of batch 128" in w for w in fixed)


def test_an_interrupted_keep_run_resumes_to_the_same_mask_and_record(tiny_addmul, tmp_path):
    import copy
    import io

    from maskprobe.learning.training import TrainState, train_mask
    from maskprobe.tasks import TaskRef
    from sample_tasks.arithmetic import AddTask

    _, model, hidden = tiny_addmul
    task, ref = AddTask(hidden=hidden, eval_size=128), TaskRef("arith-add", {})
    cfg = TrainConfig(steps=60, batch_size=16, keep=0.9, beta=1e-3, lr=0.05)
    whole = train_mask(copy.deepcopy(model), task, ref, cfg)
    calls = iter(range(10**6))
    cut = train_mask(copy.deepcopy(model), task, ref, cfg, should_stop=lambda: next(calls) >= 30)
    assert not cut.completed and cut.state.step == 30 and cut.state.controller is not None
    buf = io.BytesIO()
    torch.save(cut.state.to_dict(), buf)  # through a state file's format (weights_only)
    buf.seek(0)
    state = TrainState.from_dict(torch.load(buf, weights_only=True))
    resumed = train_mask(copy.deepcopy(model), task, ref, cfg, resume=state)
    assert all(torch.equal(whole.masks[n], resumed.masks[n]) for n in whole.masks)
    assert resumed.controller == whole.controller and whole.controller["trajectory"]
