"""Base networks train where ``--device`` says (issue 23 item 5): maskprobe.learning.fitting.fit(device=...) and the sample
tasks' command lines; a bad device is one line and the bad-input exit code."""

from __future__ import annotations

import pytest
import torch

from maskprobe.errors import EXIT_BAD_INPUT
from maskprobe.learning.fitting import Recipe, fit
from sample_tasks.arithmetic import AddMulTask
from sample_tasks.arithmetic import main as arith_main
from sample_tasks.double_addition import main as dadd_main


def test_fit_on_the_cpu_device_is_bitwise_the_default():
    task = AddMulTask(hidden="8", eval_size=16)
    recipe = Recipe(steps=5, batch_size=16)
    a, b = fit(task, recipe, seed=3), fit(task, recipe, seed=3, device="cpu")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_command_line_trains_on_the_device_asked_for(tmp_path, capsys):
    out = tmp_path / "b.pt"
    arith_main(["--out", str(out), "--hidden", "8", "--steps", "3", "--device", "cpu"])
    sd = torch.load(out, weights_only=True)
    assert sd["0.weight"].shape == (8, 42) and all(v.device.type == "cpu" for v in sd.values())
    assert "saved" in capsys.readouterr().out


@pytest.mark.parametrize("main", [arith_main, dadd_main])
@pytest.mark.parametrize("device", ["nonsense", *([] if torch.cuda.is_available() else ["cuda"])])
def test_a_bad_device_is_one_line_and_the_bad_input_code(tmp_path, capsys, main, device):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "b.pt"), "--hidden", "8", "--steps", "3", "--device", device])
    err = capsys.readouterr().err
    assert exc.value.code == EXIT_BAD_INPUT
    assert err.count("\n") == 1 and ": error: --device" in err and "Traceback" not in err
    assert not (tmp_path / "b.pt").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda_returns_a_trained_model_there(tmp_path):
    model = fit(AddMulTask(hidden="8", eval_size=16), Recipe(steps=5, batch_size=16), seed=0, device="cuda")
    assert all(p.is_cuda for p in model.parameters())
    arith_main(["--out", str(tmp_path / "b.pt"), "--hidden", "8", "--steps", "3", "--device", "cuda"])
    assert all(v.device.type == "cpu" for v in torch.load(tmp_path / "b.pt", weights_only=True).values())
