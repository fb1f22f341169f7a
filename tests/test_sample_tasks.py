"""The sample tasks: double addition's data and per-pair passes, and the digits class-removal task."""

from __future__ import annotations

import pytest
import torch

from maskprobe.testing import check_task
from sample_tasks.double_addition import BothPairsTask, Pair1Task, Pair2Task, encode, targets


def test_double_addition_encoding_zeroes_the_other_pair():
    numbers = torch.tensor([[[12, 93], [45, 7]]])
    x1, x2 = encode(numbers, 0), encode(numbers, 1)
    assert x1.shape == (1, 80) and x1.sum() == 4 and x2.sum() == 4
    assert x1[0, :40].nonzero().flatten().tolist() == [2, 11, 23, 39]  # 12 -> 2,1 ; 93 -> 3,9 (units first)
    assert x1[0, 40:].sum() == 0 and x2[0, :40].sum() == 0
    assert targets(numbers).tolist() == [[[5, 0], [2, 5]]]  # (12+93)%100 = 5, 45+7 = 52


class Oracle:
    """A perfect adder in the task's encoding: reads the active pair's digits, writes its sum's digits."""

    def __call__(self, x):
        d = x.view(-1, 2, 2, 2, 10).argmax(-1)  # (B, pair, number, digit)
        active = x.view(-1, 2, 40).sum(-1).argmax(-1)
        n = d[..., 0] + 10 * d[..., 1]
        s = n.sum(-1) % 100
        out = torch.full((x.shape[0], 2, 2, 10), -10.0)
        for p in range(2):
            out[:, p, 0] = torch.nn.functional.one_hot(s[:, p] % 10, 10) * 20.0 - 10
            out[:, p, 1] = torch.nn.functional.one_hot(s[:, p] // 10, 10) * 20.0 - 10
        wrong = torch.arange(2).view(1, 2) != active.view(-1, 1)  # only the active pair's slot is meaningful
        out[wrong] = 0.0
        return out.flatten(1)


def test_double_addition_oracle_scores_one_and_pairs_are_separate():
    for task in (
        Pair1Task(hidden="8", eval_size=300),
        Pair2Task(hidden="8", eval_size=300),
        BothPairsTask(hidden="8", eval_size=300),
    ):
        gen = torch.Generator().manual_seed(0)
        m = task.evaluate(Oracle(), task.batches("eval", 128, gen))
        assert m == {"accuracy": 1.0, "accuracy_pair1": 1.0, "accuracy_pair2": 1.0}
        batch = next(task.batches("train", 64, gen))
        assert batch.shape == (64, 2, 2) and 0 <= int(batch.min()) and int(batch.max()) <= 99
        assert float(task.loss(Oracle(), batch)) < 1e-3


def test_pair1_loss_ignores_pair2_outputs():
    task = Pair1Task(hidden="8")
    model = task.build_model()
    batch = next(task.batches("train", 32, torch.Generator().manual_seed(0)))
    task.loss(model, batch).backward()
    last = model[-1].weight.grad.view(2, 2, 10, -1)
    assert last[0].abs().sum() > 0 and last[1].abs().sum() == 0


@pytest.mark.parametrize("cls", [Pair1Task, Pair2Task, BothPairsTask])
def test_double_addition_tasks_pass_the_contract_check(cls):
    assert check_task(cls(hidden="16", eval_size=64)).ok


def test_double_addition_base_recipe(tmp_path, capsys):
    from sample_tasks.double_addition import main

    main(["--out", str(tmp_path / "d.pt"), "--hidden", "16", "--steps", "20"])
    sd = torch.load(tmp_path / "d.pt", weights_only=True)
    assert sd["0.weight"].shape == (16, 80) and sd["2.weight"].shape == (40, 16)
    assert "accuracy" in capsys.readouterr().out


def test_digits_removal_task_data_metrics_and_classes_removed():
    pytest.importorskip("sklearn")
    from sample_tasks.digits import DigitsTask, load_digits_split

    x_tr, y_tr, x_ev, y_ev = load_digits_split()
    assert x_tr.shape == (1437, 1, 8, 8) and x_ev.shape == (360, 1, 8, 8) and float(x_tr.max()) <= 1.0
    task = DigitsTask(removed=3)
    assert task.name == "digits-without-3" and task.classes_removed == (3,) and DigitsTask().classes_removed == ()
    batch = next(task.batches("train", 512, torch.Generator().manual_seed(0)))
    assert (batch[1] != 3).all()
    assert check_task(task).ok
    model = task.build_model()
    m = task.evaluate(model, task.batches("eval", 128, None))
    assert "accuracy_removed" in m and len([k for k in m if k.startswith("accuracy_class_")]) == 10
    with pytest.raises(ValueError, match="removed must be"):
        DigitsTask(removed=10)
