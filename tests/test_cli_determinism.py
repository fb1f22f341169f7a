"""Same seed, device and version give the same mask; the mask's metadata is enough to reproduce it, and
``maskprobe inspect`` shows that metadata."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
from conftest_reliability import HIDDEN, make_checkpoint, one_thread, train_argv  # noqa: F401 (one_thread: autouse fixture)
from safetensors.torch import load_file

from maskprobe.cli import run
from maskprobe.learning.training import TrainConfig, TrainState, train_mask
from maskprobe.masks.maskfile import load_masks


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("det") / "c.pt", steps=30)


def train_args(ckpt, out, seed=7):
    extra = ("--seed", str(seed), "--beta", "0.001", "--init", "0.05")
    return train_argv(ckpt, out, *extra, task="arith-mul", steps=40)


@pytest.fixture(scope="module")
def first(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "m.safetensors"
    assert run(train_args(ckpt, out)) == 0
    return out


def tensors_equal(a, b) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_same_seed_same_mask_other_seed_other_mask(ckpt, first, tmp_path):
    again = tmp_path / "again.safetensors"
    assert run(train_args(ckpt, again)) == 0
    assert tensors_equal(first, again)
    ma, mb = load_masks(first).metadata, load_masks(again).metadata
    assert {k: v for k, v in ma.items() if k != "created"} == {k: v for k, v in mb.items() if k != "created"}
    other = tmp_path / "other.safetensors"
    assert run(train_args(ckpt, other, 8)) == 0
    assert not tensors_equal(first, other)


def test_metadata_records_everything_needed_to_reproduce(ckpt, first):
    meta = load_masks(first).metadata
    hp = meta["hparams"]
    # every setting but the selection (its own key) and the progress cadence (it never changes the mask); --keep's
    # target, the automatically chosen settings and a --precision other than fp32 only where a run has them (a
    # fixed-beta fp32 run records what it did)
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"selection", "log_every", "eval_every"}
    assert config_fields - {"keep", "chosen", "precision", "adam_state"} <= set(hp), config_fields - set(hp)
    assert "keep" not in hp and "controller" not in hp and "precision" not in hp and "adam_state" not in hp
    assert hp["seed"] == 7 and meta["seed"] == 7 and hp["steps"] == 40 and hp["beta"] == 0.001 and hp["device"] == "cpu"
    assert hp["init"] == 0.05 and 0 < meta["density"]["total"] < 1
    assert meta["selection"] == {"include": [], "exclude": [], "mask_biases": False, "mask_norms": False}
    identity = meta["checkpoint"]["identity"]  # the weights and architecture, not the file (docs/mask-format.md)
    assert identity["architecture"] == "Sequential" and len(identity["weights"]) == 64 and "sha256" not in meta["checkpoint"]
    assert meta["task"]["ref"] == "arith-mul" and meta["task"]["args"] == {"hidden": HIDDEN, "eval_size": 64}
    versions = meta["versions"]
    for key in ("maskprobe", "torch", "python", "numpy", "safetensors", "platform", "torch_threads"):
        assert versions.get(key) not in (None, ""), key
    assert versions["torch"] == torch.__version__


def argv_from_metadata(meta: dict, out) -> list[str]:
    """Rebuild the train command from a mask's metadata alone (what a user reproducing it would do)."""
    hp = meta["hparams"]
    argv = ["train", meta["checkpoint"]["path"], "--task", meta["task"]["ref"], "--out", str(out), "--quiet"]
    for k, v in meta["task"]["args"].items():
        argv += ["--task-arg", f"{k}={v}"]
    for k in ("steps", "batch_size", "lr", "beta", "samples", "init", "tau", "clip", "seed", "device"):
        argv += [f"--{k.replace('_', '-')}", str(hp[k])]
    for g in meta["selection"]["include"]:
        argv += ["--include", g]
    for g in meta["selection"]["exclude"]:
        argv += ["--exclude", g]
    return argv + (["--mask-biases"] if meta["selection"]["mask_biases"] else [])


def test_metadata_alone_reproduces_the_mask_bitwise(first, tmp_path):
    again = tmp_path / "reproduced.safetensors"
    assert run(argv_from_metadata(load_masks(first).metadata, again)) == 0
    assert tensors_equal(first, again)


def test_inspect_shows_the_reproduction_record(first, capsys):
    capsys.readouterr()
    assert run(["inspect", str(first), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "mask"
    meta = data["metadata"]
    assert meta["seed"] == 7 and meta["hparams"]["lr"] == 0.01 and len(meta["checkpoint"]["identity"]["weights"]) == 64
    assert meta["task"]["args"]["hidden"] == HIDDEN and meta["versions"]["python"]
    assert run(["inspect", str(first)]) == 0
    table = capsys.readouterr().out
    for needle in ("seed", "hparams", "checkpoint", "identity", "versions", "arith-mul"):
        assert needle in table, needle


def test_library_resume_from_any_step_equals_one_run():
    """Interrupt via ``should_stop`` at every step boundary of a short run: always the same final logits."""
    from maskprobe.tasks import TaskRef
    from sample_tasks.arithmetic import AddTask

    task = AddTask(hidden="8", eval_size=32)
    torch.manual_seed(0)
    model = task.build_model()
    config = TrainConfig(steps=6, batch_size=8, seed=5, log_every=2)
    ref = TaskRef("arith-add", {})
    whole = train_mask(model, task, ref, config)
    for stop_at in range(1, 6):
        calls = iter(range(100))
        part = train_mask(model, task, ref, config, should_stop=lambda s=stop_at, c=calls: next(c) >= s)
        assert not part.completed and part.state.step == stop_at
        buf = io.BytesIO()
        torch.save(part.state.to_dict(), buf)  # the state file's round trip
        buf.seek(0)
        state = TrainState.from_dict(torch.load(buf, weights_only=True))
        done = train_mask(model, task, ref, config, resume=state)
        assert done.completed and done.state.step == 6
        for name in whole.state.logits:
            assert torch.equal(whole.state.logits[name], done.state.logits[name]), (stop_at, name)
        assert done.state.history == whole.state.history and done.final_loss == whole.final_loss
