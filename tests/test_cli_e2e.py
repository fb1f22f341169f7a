"""End to end through the CLI: train -> compare (JSON) -> evaluate -> inspect; the demo's pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from maskprobe.cli import run


@pytest.fixture(scope="module")
def trained(tiny_addmul, tmp_path_factory):
    ckpt, _, hidden = tiny_addmul
    out = tmp_path_factory.mktemp("masks")
    code = run(
        [
            "train",
            str(ckpt),
            "--task",
            "arith-add",
            "--task",
            "arith-mul",
            "--task-arg",
            f"hidden={hidden}",
            "--task-arg",
            "eval_size=256",
            "--out",
            str(out),
            "--steps",
            "60",
            "--batch-size",
            "32",
            "--beta",
            "1e-2",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    return ckpt, out, hidden


def test_train_writes_one_bool_mask_per_task_with_metadata(trained):
    ckpt, out, hidden = trained
    for task in ("arith-add", "arith-mul"):
        path = out / f"{task}.safetensors"
        tensors = load_file(str(path))
        assert set(tensors) == {"0.weight", "2.weight", "4.weight"}
        assert tensors["0.weight"].shape == (24, 42) and tensors["4.weight"].shape == (20, 24)
        assert all(t.dtype.is_floating_point is False and str(t.dtype) == "torch.bool" for t in tensors.values())
        from maskprobe.masks.maskfile import load_masks

        meta = load_masks(path).metadata
        assert meta["task"]["name"] == task and meta["task"]["args"] == {"hidden": hidden, "eval_size": 256}
        assert meta["hparams"]["beta"] == 1e-2 and meta["hparams"]["batch_size"] == 32
        assert meta["hparams"]["samples"] == 4 and meta["hparams"]["lr"] == 1e-2 and meta["hparams"]["init"] == 2.0
        assert meta["steps"] == 60 and meta["seed"] == 1
        assert len(meta["checkpoint"]["identity"]["weights"]) == 64
        assert 0 < meta["density"]["total"] <= 1
        assert 0 <= meta["metric_full"]["accuracy"] <= 1 and "accuracy" in meta["metric_masked"]
        assert meta["versions"]["torch"]


def test_compare_json_has_the_documented_keys_and_consistent_numbers(trained, capsys):
    ckpt, out, _ = trained
    a, b = out / "arith-add.safetensors", out / "arith-mul.safetensors"
    capsys.readouterr()
    assert run(["compare", str(a), str(b), "--checkpoint", str(ckpt), "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["task"] for m in data["masks"]] == ["arith-add", "arith-mul"]
    ta, tb = load_file(str(a)), load_file(str(b))
    inter = sum(int((ta[k] & tb[k]).sum()) for k in ta)
    na, nb = sum(int(t.sum()) for t in ta.values()), sum(int(t.sum()) for t in tb.values())
    assert data["total"]["intersection"][0][1] == inter
    assert data["total"]["iou"][0][1] == pytest.approx(inter / (na + nb - inter))
    assert data["total"]["iomin"][0][1] == pytest.approx(inter / min(na, nb))
    assert data["total"]["shared"][0][1] == pytest.approx(inter / na)
    layer = {entry["name"]: entry for entry in data["layers"]}["2.weight"]
    assert layer["shape"] == [24, 24] and layer["numel"] == 576
    assert layer["counts"] == [int(ta["2.weight"].sum()), int(tb["2.weight"].sum())]
    ab = data["ablation"]
    assert ab["tasks"] == ["arith-add", "arith-mul"]
    for key in ("kept", "inverted", "exclusive", "control"):
        assert len(ab[key]) == 2 and all(len(row) == 2 for row in ab[key])
    assert -1 <= data["scores"]["p_specialize"] <= 1 and 0 <= data["scores"]["p_reuse"] <= 1


def test_compare_refuses_masks_of_different_models(trained, tmp_path, capsys):
    _, out, _ = trained
    import torch

    from maskprobe.masks.maskfile import save_masks

    other = tmp_path / "other.safetensors"
    save_masks(other, {"0.weight": torch.ones(3, 3, dtype=torch.bool)}, {})
    assert run(["compare", str(out / "arith-add.safetensors"), str(other)]) == 2
    err = capsys.readouterr().err
    assert "mask different parameters" in err and "Traceback" not in err


def test_evaluate_with_mask_and_inverted(trained, capsys):
    ckpt, out, hidden = trained
    mask = out / "arith-add.safetensors"
    base = [
        "evaluate",
        str(ckpt),
        "--task",
        "arith-add",
        "--task-arg",
        f"hidden={hidden}",
        "--task-arg",
        "eval_size=256",
        "--device",
        "cpu",
        "--json",
        "--mask",
        str(mask),
    ]
    capsys.readouterr()
    assert run(base) == 0
    kept = json.loads(capsys.readouterr().out)["results"][0]
    assert run([*base, "--invert"]) == 0
    removed = json.loads(capsys.readouterr().out)["results"][0]
    assert kept["unmasked"] == removed["unmasked"]
    from maskprobe.masks.maskfile import load_masks

    meta = load_masks(mask).metadata
    assert kept["masked"]["accuracy"] == pytest.approx(meta["metric_masked"]["accuracy"])
    assert removed["masked"]["accuracy"] != kept["masked"]["accuracy"]


def test_existing_output_needs_force(trained, capsys):
    ckpt, out, hidden = trained
    code = run(
        [
            "train",
            str(ckpt),
            "--task",
            "arith-add",
            "--task-arg",
            f"hidden={hidden}",
            "--out",
            str(out),
            "--steps",
            "2",
            "--quiet",
        ]
    )
    assert code == 2
    assert "--force" in capsys.readouterr().err


def test_tasks_lists_the_sample_tasks(capsys):
    assert run(["tasks", "--json"]) == 0
    names = {t["name"] for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert {"arith-add", "arith-mul", "arith-both"} <= names


def test_module_entry_point_and_version():
    proc = subprocess.run([sys.executable, "-m", "maskprobe", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("maskprobe ")


def test_demo_small_runs_whole_pipeline(tmp_path, capsys):
    code = run(
        [
            "demo",
            "--out",
            str(tmp_path),
            "--hidden",
            "16,16",
            "--base-steps",
            "200",
            "--steps",
            "40",
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["task"] for m in data["masks"]} == {"arith-add", "arith-mul"}
    assert (tmp_path / "addmul.pt").is_file() and (tmp_path / "arith-add.safetensors").is_file()
    assert "p_specialize" in data["scores"]
