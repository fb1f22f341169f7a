"""Several masks from one ``maskprobe train`` run (``--seeds``, ``--beta a,b``), and the training loop on the
fast engine: frozen weights, backends agreeing, determinism."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from maskprobe.cli import run
from maskprobe.learning import kernels
from maskprobe.learning.training import TrainConfig, train_mask
from maskprobe.masks.maskfile import load_masks
from maskprobe.tasks import TaskRef
from sample_tasks.arithmetic import AddTask

HIDDEN = "16,16"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from sample_tasks.arithmetic import AddMulTask, train_base

    model = train_base(AddMulTask(hidden=HIDDEN, eval_size=64), steps=40, seed=0)
    path = tmp_path_factory.mktemp("multi") / "c.pt"
    torch.save(model.state_dict(), path)
    return path, model


def argv(path, out, *extra):
    return ["train", str(path), "--task", "arith-add", "--task-arg", f"hidden={HIDDEN}", "--task-arg", "eval_size=64",
            "--out", str(out), "--steps", "30", "--batch-size", "16", "--device", "cpu", "--quiet", *extra]  # fmt: skip


def test_seeds_and_betas_give_one_file_per_combination_with_its_own_metadata(ckpt, tmp_path, capsys):
    path, _ = ckpt
    out = tmp_path / "masks"
    assert run(argv(path, out, "--seeds", "0,1", "--beta", "1e-3,1e-1", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert files == sorted(f"arith-add.seed{s}.beta{b}.safetensors" for s in (0, 1) for b in ("0.001", "0.1"))
    assert len(report["masks"]) == 4
    for entry in report["masks"]:
        meta = load_masks(entry["path"]).metadata
        assert meta["seed"] == entry["seed"] == meta["hparams"]["seed"]
        assert meta["hparams"]["beta"] == entry["beta"]
        assert f"seed{entry['seed']}" in entry["path"] and f"beta{entry['beta']:g}" in entry["path"]
    # each equals the mask a separate single run with that seed and beta produces
    single = tmp_path / "single.safetensors"
    assert run(argv(path, single, "--seed", "1", "--beta", "0.1")) == 0
    a = load_masks(out / "arith-add.seed1.beta0.1.safetensors").masks
    b = load_masks(single).masks
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_single_list_dimension_names_only_that_dimension(ckpt, tmp_path):
    path, _ = ckpt
    out = tmp_path / "m"
    assert run(argv(path, out, "--seeds", "3,4")) == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["arith-add.seed3.safetensors", "arith-add.seed4.safetensors"]
    metas = [load_masks(out / f"arith-add.seed{s}.safetensors").metadata for s in (3, 4)]
    assert [m["seed"] for m in metas] == [3, 4] and all(m["hparams"]["beta"] == 1e-4 for m in metas)


@pytest.mark.parametrize("bad", [["--seeds", "0,x"], ["--seeds", "1,1"], ["--beta", "1e-3,nan"], ["--beta", ""]])
def test_bad_lists_are_one_line_errors(ckpt, tmp_path, capsys, bad):
    path, _ = ckpt
    assert run(argv(path, tmp_path / "x", *bad)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_several_masks_need_a_folder(ckpt, tmp_path, capsys):
    path, _ = ckpt
    assert run(argv(path, tmp_path / "one.safetensors", "--seeds", "0,1")) == 2
    assert "folder" in capsys.readouterr().err


@pytest.mark.skipif(not kernels.numba_available(), reason="numba absent")
def test_numba_and_torch_backends_train_the_same_mask(ckpt):
    _, model = ckpt
    task = AddTask(hidden=HIDDEN, eval_size=64)
    res = {}
    for backend in ("numba", "torch"):
        cfg = TrainConfig(steps=25, batch_size=16, beta=1e-2, seed=3, backend=backend)
        res[backend] = train_mask(copy.deepcopy(model), task, TaskRef("arith-add", {}), cfg)
        assert res[backend].engine["backend"] == backend
    for name, t in res["numba"].state.logits.items():
        # the same noise and formulas; only Adam's float rounding and p = sigmoid(l) may differ by an ulp
        assert torch.allclose(t, res["torch"].state.logits[name], atol=1e-4), name


def test_training_is_deterministic_and_leaves_frozen_weights_bitwise_unchanged(ckpt):
    _, model = ckpt
    model = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = AddTask(hidden=HIDDEN, eval_size=64)
    cfg = TrainConfig(steps=20, batch_size=16, samples=4, seed=5)
    a = train_mask(model, task, TaskRef("arith-add", {}), cfg)
    b = train_mask(model, task, TaskRef("arith-add", {}), cfg)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(a.state.logits[k], b.state.logits[k]) for k in a.state.logits)
    assert a.metadata()["engine"]["noise"] == "fmix32-hash/1"
