"""NaN/inf during training stops the run with the step and the tensor named and keeps the last good state;
a NaN task metric is reported (n/a, JSON null) and never averaged into a score."""

from __future__ import annotations

import math

import pytest
import torch
from conftest_reliability import make_checkpoint, one_thread, train_argv  # noqa: F401 (one_thread: autouse fixture)

from maskprobe.cli import run
from maskprobe.measure import analysis

PLUGIN = '''
import torch
from sample_tasks.arithmetic import AddTask


class Faulty(AddTask):
    """arith-add whose loss (mode=loss) or gradient (mode=grad) turns NaN from train step ``at`` (0-based) on."""

    name = "faulty"

    def __init__(self, hidden: str = "16,16", eval_size: int = 64, at: int = 3, mode: str = "loss"):
        super().__init__(hidden, eval_size)
        self.at, self.mode = at, mode

    def batches(self, split, batch_size, generator):
        if split != "train":
            yield from super().batches(split, batch_size, generator)
            return
        for i, (x, y) in enumerate(super().batches(split, batch_size, generator)):
            yield x, y, torch.full((x.shape[0],), i)  # the step travels with the batch, so replays agree

    def loss(self, model, batch):
        x, y, step = batch
        base = super().loss(model, (x, y))
        if int(step[0]) < self.at:
            return base
        if self.mode == "loss":
            return base * float("nan")
        return base + torch.sqrt(model(x).sum() * 0.0)  # value finite (0), gradient 0 * inf = NaN


class NanMetric(AddTask):
    name = "nan-metric"

    def evaluate(self, model, batches):
        out = super().evaluate(model, batches)
        out["accuracy"] = float("nan")
        return out
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("nan")
    make_checkpoint(root / "c.pt")
    (root / "faulty.py").write_text(PLUGIN)
    return root


def train(setup, out, *extra, task="Faulty", steps=50):
    return train_argv(setup / "c.pt", out, *extra, task=f"{setup / 'faulty.py'}:{task}", steps=steps)


@pytest.mark.parametrize(("mode", "what"), [("loss", "loss is nan at step 6"), ("grad", "gradient of the logits of")])
def test_nan_stops_naming_step_and_tensor_and_keeps_last_good_state(setup, tmp_path, capsys, mode, what):
    out = tmp_path / "m.safetensors"
    code = run(train(setup, out, "--task-arg", "at=5", "--task-arg", f"mode={mode}", "--save-every", "2"))
    err = capsys.readouterr().err
    assert code == 4, err
    assert what in err and "step 6" in err and "Traceback" not in err
    assert "'0.weight'" in err or mode == "loss"
    assert not out.exists()
    state = torch.load(tmp_path / "m.state.pt", weights_only=True)
    assert state["step"] == 5  # the state at the start of the failing step, not the snapshot of step 4
    assert all(torch.isfinite(t).all() for t in state["logits"].values())


def test_nan_at_the_first_step_saves_a_finite_initial_state(setup, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert run(train(setup, out, "--task-arg", "at=0")) == 4
    assert "step 1" in capsys.readouterr().err
    state = torch.load(tmp_path / "m.state.pt", weights_only=True)
    assert state["step"] == 0 and all(bool((t == 2.0).all()) for t in state["logits"].values())


@pytest.mark.parametrize("flag", [["--lr", "inf"], ["--lr", "0"], ["--beta", "nan"], ["--tau", "-1"], ["--init", "inf"]])
def test_settings_that_must_produce_nan_are_refused(setup, tmp_path, capsys, flag):
    out = tmp_path / "m.safetensors"
    assert run(train(setup, out, *flag)) == 2
    assert f"--{flag[0][2:]}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_nan_task_metric_is_reported_not_averaged(setup, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code = run(train(setup, out, "--json", task="NanMetric", steps=3))
    assert code == 0
    import json

    mask = json.loads(capsys.readouterr().out)["masks"][0]
    assert mask["metric_full"]["accuracy"] is None and mask["metric_masked"]["accuracy"] is None  # JSON null


def test_scores_leave_nan_drops_out_instead_of_counting_them():
    nan = float("nan")
    d_excl = [[0.9, 0.1, 0.0], [0.2, 0.8, nan], [0.0, 0.1, 0.7]]
    s = analysis.specialization(d_excl)
    assert s[0] == pytest.approx(0.8) and math.isnan(s[1]) and s[2] == pytest.approx(0.6)
    assert analysis.p_specialize(d_excl) == pytest.approx(0.7)  # mean of the two known, not of three
    d_inv = [[1.0, 0.5], [nan, 1.0]]
    d_ctrl = [[0.2, 0.1], [0.1, 0.2]]
    r = analysis.reuse(d_inv, d_ctrl)
    assert r[0][1] == pytest.approx(0.4) and math.isnan(r[1][0])  # not max(0, nan) == 0
    assert analysis.p_reuse(d_inv, d_ctrl) == pytest.approx(0.4)
