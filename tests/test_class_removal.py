"""Class removal as the paper did it: --fix-from holds the control mask's output layer fixed while a mask learns
without a class, and compare reads the removed class's drop beside the largest other drop."""

from __future__ import annotations

import json

import pytest
import torch

from maskprobe.cli import run
from maskprobe.masks.maskfile import load_masks

pytest.importorskip("sklearn")

COMMON = ["--device", "cpu", "--batch-size", "32", "--steps", "30", "--init", "0.3", "--lr", "0.1", "--beta", "0.01", "--quiet",
          "--task-arg", "channels=4"]  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from sample_tasks.digits import DigitsTask, main

    tmp = tmp_path_factory.mktemp("digits")
    main(["--out", str(tmp / "d.pt"), "--steps", "150", "--channels", "4"])
    assert run(["train", str(tmp / "d.pt"), "--task", "digits", "--out", str(tmp / "control.safetensors"), *COMMON]) == 0
    assert DigitsTask().classes_removed == ()
    return tmp


def test_fixed_tensors_are_copied_from_the_control_and_never_trained(digits, capsys):
    removal = digits / "without-3.safetensors"
    argv = ["train", str(digits / "d.pt"), "--task", "digits", "--task-arg", "removed=3", "--fix-from",
            str(digits / "control.safetensors"), "--out", str(removal), *COMMON]  # fmt: skip
    assert run(argv) == 0
    control, mine = load_masks(digits / "control.safetensors"), load_masks(removal)
    assert set(mine.masks) == set(control.masks)
    assert torch.equal(mine.masks["head.weight"], control.masks["head.weight"])  # the output layer: the control's
    assert not torch.equal(mine.masks["fc.weight"], control.masks["fc.weight"])  # the features: its own
    hp = mine.metadata["hparams"]
    assert hp["fixed_from"] == str(digits / "control.safetensors") and hp["fixed"] == ["output"]
    capsys.readouterr()
    assert run(["compare", str(digits / "control.safetensors"), str(removal), "--checkpoint", str(digits / "d.pt"),
                "--device", "cpu", "--json", "--task-arg", "channels=4"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    (row,) = report["ablation"]["class_removal"]
    assert row["mask"] == "digits-without-3" and row["removed"] == ["3"]
    assert set(row["drops"]) == {str(c) for c in range(10)}
    assert row["largest_other_drop"] == max(v for k, v in row["drops"].items() if k != "3")
    assert report["ablation"]["kept_metrics"][1][0]["accuracy_class_3"] <= 1.0


def test_fix_errors_are_one_line(digits, capsys):
    base = ["train", str(digits / "d.pt"), "--task", "digits", *COMMON]
    cases = [
        (["--fix", "head.*", "--out", str(digits / "x.safetensors")], "--fix needs --fix-from"),
        (["--fix-from", str(digits / "control.safetensors"), "--fix", "nothing.*", "--out", str(digits / "y.safetensors")],
         "matches no masked tensor"),
        (["--fix-from", str(digits / "control.safetensors"), "--fix", "*", "--out", str(digits / "z.safetensors")],
         "nothing is left to train"),
    ]  # fmt: skip
    for extra, message in cases:
        capsys.readouterr()
        assert run([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not any((digits / n).exists() for n in ("x.safetensors", "y.safetensors", "z.safetensors"))
