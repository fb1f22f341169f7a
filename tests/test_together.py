"""``train --together``: several masks of one frozen model trained at once, their backward passes batched
(maskprobe/learning/together.py). A mask trained together is the mask trained alone, up to float rounding."""

from __future__ import annotations

import json

import pytest
import torch

from maskprobe.cli import run
from maskprobe.masks.maskfile import load_masks

STEPS = 30


def _train(ckpt, hidden, out, *extra):
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=64",
            "--steps", str(STEPS), "--batch-size", "16", "--samples", "2", "--lr", "0.2", "--beta", "1e-3",
            "--device", "cpu", "--backend", "torch", "--out", str(out), "--quiet", *extra]  # fmt: skip
    assert run(argv) == 0


def _density(masks):
    return sum(int(t.sum()) for t in masks.values()) / sum(t.numel() for t in masks.values())


def _agreement(a, b):
    same = sum(int((a[n] == b[n]).sum()) for n in a)
    return same / sum(t.numel() for t in a.values())


@pytest.fixture(scope="module")
def alone_and_together(tiny_addmul, tmp_path_factory):
    ckpt, _, hidden = tiny_addmul
    root = tmp_path_factory.mktemp("together")
    _train(ckpt, hidden, root / "alone", "--seeds", "0,1,2")
    _train(ckpt, hidden, root / "together", "--seeds", "0,1,2", "--together")
    return root


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_mask_trained_together_is_the_mask_trained_alone(alone_and_together, seed):
    alone = load_masks(alone_and_together / "alone" / f"arith-add.seed{seed}.safetensors")
    together = load_masks(alone_and_together / "together" / f"arith-add.seed{seed}.safetensors")
    assert alone.masks.keys() == together.masks.keys()
    kept = sum(int(t.sum()) for t in together.masks.values()) / sum(t.numel() for t in together.masks.values())
    assert 0.05 < kept < 0.95  # a mask that learned something (all kept or all pruned would agree trivially)
    # float rounding of one vmap over 6 samples against the loop can flip a logit that sits at 0; measured 1.0
    assert _agreement(alone.masks, together.masks) >= 0.999
    assert together.metadata["engine"]["masks"] == "together"
    assert "masks" not in alone.metadata["engine"]  # recorded only when asked for
    assert together.metadata["seed"] == alone.metadata["seed"] == seed
    # the masks of different seeds differ (a run that trained one mask three times would pass the test above)
    other = load_masks(alone_and_together / "together" / f"arith-add.seed{(seed + 1) % 3}.safetensors")
    assert _agreement(together.masks, other.masks) < 0.99


def test_together_batches_the_backward_passes(tiny_addmul, tmp_path, monkeypatch):
    """One backward_together call per step for the three masks, none alone."""
    from maskprobe.learning import together

    calls = []
    real = together.backward_together
    monkeypatch.setattr(together, "backward_together", lambda reqs: calls.append(len(reqs)) or real(reqs))
    ckpt, _, hidden = tiny_addmul
    _train(ckpt, hidden, tmp_path / "t", "--seeds", "0,1,2", "--together")
    assert calls == [3] * STEPS


def test_together_keeps_a_failing_mask_from_losing_the_others(tiny_addmul, tmp_path, capsys):
    """A NaN in one mask's run (its beta is inf) fails that mask only: the others are written, exit 4."""
    ckpt, _, hidden = tiny_addmul
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=64",
            "--steps", "5", "--batch-size", "16", "--beta", "1e-3,1e300", "--device", "cpu", "--backend", "torch",
            "--out", str(tmp_path / "o"), "--quiet", "--together"]  # fmt: skip
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 4, err
    assert (tmp_path / "o" / "arith-add.beta0.001.safetensors").is_file()
    assert not (tmp_path / "o" / "arith-add.beta1e+300.safetensors").exists()
    assert "beta1e+300" in err or "1e+300" in err or "non-finite" in err, err


def test_together_without_a_sweep_is_one_mask_as_before(tiny_addmul, tmp_path):
    ckpt, _, hidden = tiny_addmul
    _train(ckpt, hidden, tmp_path / "one.safetensors", "--together")
    meta = load_masks(tmp_path / "one.safetensors").metadata
    assert "masks" not in meta["engine"] and json.dumps(meta)
    assert torch.is_tensor(next(iter(load_masks(tmp_path / "one.safetensors").masks.values())))


def test_masks_with_fixed_tensors_run_alone_and_say_so(alone_and_together, tiny_addmul, tmp_path):
    ckpt, _, hidden = tiny_addmul
    fixed = alone_and_together / "alone" / "arith-add.seed0.safetensors"
    _train(ckpt, hidden, tmp_path / "f", "--seeds", "0,1", "--together", "--fix-from", str(fixed))
    engine = load_masks(tmp_path / "f" / "arith-add.seed1.safetensors").metadata["engine"]
    assert engine["masks"].startswith("alone") and "fix-from" in engine["masks"]


def test_a_stop_keeps_every_masks_state_and_resume_finishes_them(tiny_addmul, tmp_path):
    from maskprobe.config import TrainConfig
    from maskprobe.errors import Interrupted
    from maskprobe.learning.runs import TrainRequest, train_masks
    from maskprobe.tasks import load_task

    ckpt, _, hidden = tiny_addmul
    task = load_task("arith-add", {"hidden": hidden, "eval_size": 64})
    polls = []

    def stop() -> bool:  # polled once per step per mask: stop in the fifth step
        polls.append(1)
        return len(polls) > 8

    config = TrainConfig(steps=20, batch_size=16, device="cpu", lr=0.2, beta=1e-3)  # a mask that prunes by step 20
    request = TrainRequest(checkpoint=ckpt, tasks=[task], out=tmp_path / "o", config=config, seeds=(0, 1),
                           together=True, memory_limit=None)  # fmt: skip
    with pytest.raises(Interrupted, match="and 1 more"):
        train_masks(request, should_stop=stop)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["arith-add.seed0.state.pt", "arith-add.seed1.state.pt"]
    resumed = TrainRequest(checkpoint=ckpt, tasks=[task], out=tmp_path / "o", config=config, seeds=(0, 1),
                           together=True, memory_limit=None, resume=True)  # fmt: skip
    assert len(train_masks(resumed).written) == 2
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["arith-add.seed0.safetensors", "arith-add.seed1.safetensors"]
    # resumed together (both stopped at the same step), and each is the mask of a run that was never stopped
    whole = TrainRequest(checkpoint=ckpt, tasks=[task], out=tmp_path / "w", config=config, seeds=(0, 1),
                         together=True, memory_limit=None)  # fmt: skip
    train_masks(whole)
    for seed in (0, 1):
        got = load_masks(tmp_path / "o" / f"arith-add.seed{seed}.safetensors")
        assert got.metadata["engine"]["masks"] == "together"
        assert 0.05 < _density(got.masks) < 0.95  # two all-kept masks would agree whatever was resumed
        assert _agreement(got.masks, load_masks(tmp_path / "w" / f"arith-add.seed{seed}.safetensors").masks) == 1.0


def test_together_resume_skips_a_finished_mask_and_resumes_the_other(tiny_addmul, tmp_path, monkeypatch):
    """One mask finished, one stopped: --together --resume skips the first and finishes the second alone in the
    together path (no one-by-one fallback), equal to the uninterrupted run's mask."""
    from maskprobe.config import TrainConfig
    from maskprobe.learning import together
    from maskprobe.learning.runs import TrainRequest, train_masks
    from maskprobe.tasks import load_task

    ckpt, _, hidden = tiny_addmul
    task = load_task("arith-add", {"hidden": hidden, "eval_size": 64})
    config = TrainConfig(steps=12, batch_size=16, device="cpu", lr=0.2, beta=1e-3)
    full = TrainRequest(checkpoint=ckpt, tasks=[task], out=tmp_path / "o", config=config, seeds=(0, 1), together=True,
                        memory_limit=None, save_every=5)  # fmt: skip
    train_masks(full)
    (tmp_path / "o" / "arith-add.seed1.safetensors").rename(uninterrupted := tmp_path / "seed1.safetensors")
    # make seed 1 "interrupted at step 5": its mask gone, a state file of step 5 from a run stopped there
    stopped = TrainRequest(checkpoint=ckpt, tasks=[task], out=tmp_path / "s", config=config, seeds=(0, 1),
                           together=True, memory_limit=None, save_every=5)  # fmt: skip
    polls = []
    with pytest.raises(Exception):  # noqa: B017 - Interrupted; only the saved state matters here
        train_masks(stopped, should_stop=lambda: polls.append(1) or len(polls) > 12)
    (tmp_path / "s" / "arith-add.seed1.state.pt").rename(tmp_path / "o" / "arith-add.seed1.state.pt")
    sizes = []
    real = together.train_together
    monkeypatch.setattr(together, "train_together", lambda *a, **k: sizes.append(len(a[1])) or real(*a, **k))
    resumed = TrainRequest(checkpoint=ckpt, tasks=[task], out=tmp_path / "o", config=config, seeds=(0, 1),
                           together=True, memory_limit=None, resume=True)  # fmt: skip
    assert [p.name for _, p in train_masks(resumed).written] == ["arith-add.seed1.safetensors"]
    assert sizes == [1]
    resumed_mask = load_masks(tmp_path / "o" / "arith-add.seed1.safetensors")
    assert "masks" not in resumed_mask.metadata["engine"]  # the one mask left ran as alone, and says so
    assert 0.05 < _density(resumed_mask.masks) < 0.95
    assert _agreement(resumed_mask.masks, load_masks(uninterrupted).masks) == 1.0
