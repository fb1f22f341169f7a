"""The LSTM variants of the add/mul and double-addition sample tasks (``model=lstm``): the paper code's input
protocol (the input at every step, 3 or 6 steps, the head read at the last), and masks through the engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskprobe.learning.training import TrainConfig, train_mask
from maskprobe.masks.maskfile import load_masks
from maskprobe.tasks import TaskRef
from maskprobe.testing import check_task
from sample_tasks.arithmetic import LSTM_RECIPE, RECIPE, AddMulTask, AddTask, MulTask, encode
from sample_tasks.double_addition import LSTM_DADD_RECIPE, BothPairsTask, Pair1Task, Pair2Task
from sample_tasks.double_addition import encode as dadd_encode
from sample_tasks.double_addition import targets as dadd_targets
from sample_tasks.recurrent import RecurrentNet

TINY = {"model": "lstm", "lstm_size": 8, "lstm_layers": 2, "eval_size": 64}
ARITH = (AddTask, MulTask, AddMulTask)
DADD = (Pair1Task, Pair2Task, BothPairsTask)


class Recorder:
    """Forward hooks on the ``lstm`` and the ``head``: what went in and came out (the LSTM output keeps its grad)."""

    def __init__(self, model):
        self.lstm_in, self.lstm_out, self.head_in = [], [], []
        model.lstm.register_forward_hook(self._lstm)
        model.head.register_forward_hook(lambda m, args, out: self.head_in.append(args[0]))

    def _lstm(self, module, args, out):
        self.lstm_in.append(args[0])
        if out[0].requires_grad:
            out[0].retain_grad()
        self.lstm_out.append(out[0])


def test_shapes_names_and_init():
    torch.manual_seed(0)
    net = AddTask(**TINY).build_model()
    assert isinstance(net, RecurrentNet) and net.steps == 3
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    assert shapes == {
        "lstm.weight_ih_l0": (32, 42), "lstm.weight_hh_l0": (32, 8), "lstm.bias_ih_l0": (32,), "lstm.bias_hh_l0": (32,),
        "lstm.weight_ih_l1": (32, 8), "lstm.weight_hh_l1": (32, 8), "lstm.bias_ih_l1": (32,), "lstm.bias_hh_l1": (32,),
        "head.weight": (20, 8), "head.bias": (20,),
    }  # fmt: skip
    assert net(torch.zeros(5, 42)).shape == (5, 20)
    bias = net.lstm.bias_hh_l1.detach().view(4, 8)  # gates i, f, g, o: forget bias 1, the rest 0
    assert bias[1].eq(1).all() and bias[[0, 2, 3]].eq(0).all() and net.lstm.bias_ih_l0.eq(0).all()
    dadd = Pair1Task(**TINY).build_model()
    assert dadd.steps == 6 and dadd.lstm.weight_ih_l0.shape == (32, 80) and dadd(torch.zeros(3, 80)).shape == (3, 40)
    big = AddMulTask(model="lstm").build_model()  # the paper's size by default
    assert big.lstm.hidden_size == 256 and big.lstm.num_layers == 2
    assert AddMulTask().build_model()[0].weight.shape == (2000, 42)  # fnn stays the default
    with pytest.raises(ValueError):
        AddTask(model="gru")
    assert AddTask(**TINY).base_recipe() == LSTM_RECIPE and AddTask().base_recipe() == RECIPE
    assert BothPairsTask(**TINY).base_recipe() == LSTM_DADD_RECIPE and LSTM_DADD_RECIPE.steps == 3000
    assert (LSTM_RECIPE.lr, LSTM_RECIPE.clip, LSTM_RECIPE.steps) == (1e-2, 1.0, 6000)


@pytest.mark.parametrize("cls", ARITH)
def test_addmul_feeds_the_input_three_times_and_reads_the_last_step(cls):
    torch.manual_seed(0)
    task = cls(**TINY)
    net = task.build_model()
    rec = Recorder(net)
    x, y = next(task.batches("train", 16, torch.Generator().manual_seed(0)))
    loss = task.loss(net, (x, y))
    (seq,), (out,), (head_in,) = rec.lstm_in, rec.lstm_out, rec.head_in
    assert seq.shape == (16, 3, 42) and all(torch.equal(seq[:, t], x) for t in range(3))
    assert out.shape == (16, 3, 8) and head_in.shape == (16, 8) and torch.equal(head_in, out[:, -1])
    expected = F.cross_entropy(net.head(out[:, -1]).view(-1, 10), y.view(-1))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()))
    loss.backward()
    assert out.grad[:, :-1].abs().max() == 0 and out.grad[:, -1].abs().max() > 0  # only the last step is read


def test_addmul_lstm_evaluates_like_the_fnn_protocol():
    """evaluate() scores the same (B, 20) outputs as for the FNN: a model that writes the answer digits is right."""

    class Oracle(torch.nn.Module):
        def forward(self, x):
            d = x[:, :40].view(-1, 4, 10).argmax(-1)
            a, b, op = d[:, 0] + 10 * d[:, 1], d[:, 2] + 10 * d[:, 3], x[:, 40:].argmax(-1)
            r = torch.where(op == 0, a + b, a * b) % 100
            return torch.cat([F.one_hot(r % 10, 10), F.one_hot(r // 10, 10)], 1).float()

    for cls in ARITH:
        task = cls(**TINY)
        m = task.evaluate(Oracle(), task.batches("eval", 32, torch.Generator().manual_seed(0)))
        assert m["accuracy"] == 1.0
    assert encode(torch.tensor([12]), torch.tensor([3]), torch.tensor([1])).shape == (1, 42)


@pytest.mark.parametrize("cls", DADD)
def test_double_addition_feeds_all_80_inputs_six_times_and_reads_both_pairs_at_the_last_step(cls):
    torch.manual_seed(0)
    task = cls(**TINY)
    net = task.build_model()
    rec = Recorder(net)
    numbers = next(task.batches("train", 16, torch.Generator().manual_seed(0)))
    loss = task.loss(net, numbers)
    (seq,), (out,), (head_in,) = rec.lstm_in, rec.lstm_out, rec.head_in
    given = dadd_encode(numbers, task.pairs)  # the loss of a one-pair task zeroes the other pair (the paper's restrict)
    assert seq.shape == (16, 6, 80) and all(torch.equal(seq[:, t], given) for t in range(6))
    assert int(seq[:, 0].sum()) == 16 * 4 * len(task.pairs)  # 4 one-hot digits per given pair
    assert torch.equal(head_in, out[:, -1])
    logits = net.head(out[:, -1]).view(-1, 2, 2, 10)[:, list(task.pairs)]
    expected = F.cross_entropy(logits.reshape(-1, 10), dadd_targets(numbers)[:, list(task.pairs)].reshape(-1))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()))
    loss.backward()
    assert out.grad[:, :-1].abs().max() == 0 and out.grad[:, -1].abs().max() > 0
    head_grad = net.head.weight.grad.view(2, 2, 10, -1)  # only the task's pairs' output rows get a gradient
    for p in range(2):
        assert (head_grad[p].abs().sum() > 0) == (p in task.pairs)
    rec.lstm_in.clear()
    with torch.no_grad():
        m = task.evaluate(net, task.batches("eval", 64, torch.Generator().manual_seed(0)))
    assert all(torch.equal(s[:, t], s[:, 0]) for s in rec.lstm_in for t in range(6))
    assert all(int(s[:, 0].sum()) == s.shape[0] * 8 for s in rec.lstm_in)  # evaluation: both pairs given
    assert set(m) == {"accuracy", "accuracy_pair1", "accuracy_pair2"}


def test_double_addition_lstm_oracle_scores_one():
    class Oracle(torch.nn.Module):
        def forward(self, x):
            n = x.view(-1, 2, 2, 2, 10).argmax(-1)
            s = (n[..., 0] + 10 * n[..., 1]).sum(-1) % 100  # (B, 2 pairs)
            return torch.stack([F.one_hot(s % 10, 10), F.one_hot(s // 10, 10)], 2).float().flatten(1)

    for cls in DADD:
        task = cls(**TINY)
        m = task.evaluate(Oracle(), task.batches("eval", 32, torch.Generator().manual_seed(0)))
        assert m == {"accuracy": 1.0, "accuracy_pair1": 1.0, "accuracy_pair2": 1.0}


@pytest.mark.parametrize("cls", [AddTask, Pair2Task])
def test_a_mask_step_moves_the_logits_of_every_lstm_weight(cls):
    task = cls(**TINY)
    torch.manual_seed(0)
    net = task.build_model()
    # beta 0: only the task's gradient moves a logit (the regulariser would move every one by itself)
    config = TrainConfig(steps=2, batch_size=32, eval_batch_size=64, log_every=1, seed=0, beta=0.0)
    result = train_mask(net, task, TaskRef(task.name, TINY), config)
    logits = result.state.logits
    weights = {n for n, _ in net.named_parameters() if ".weight" in n}  # lstm.weight_ih/hh_l0/l1, head.weight
    assert len(weights) == 5 and weights <= set(logits) and "head.bias" not in logits
    for name in weights:
        moved = logits[name] != 2.0
        if name == "lstm.weight_ih_l0":  # the columns of input units that are never 1 get no gradient
            assert moved.any(1).all()
            if cls is AddTask:  # digits 0..39 (most appear in 2 x 32 examples), op one-hot: add 40, never mul 41
                assert moved[:, :40].any(0).float().mean() > 0.75 and moved[:, 40].all() and not moved[:, 41].any()
            else:  # pair 1's inputs 0..39 are zeroed in pair 2's loss
                assert not moved[:, :40].any() and moved[:, 40:].any(0).float().mean() > 0.75
        elif name == "head.weight" and cls is Pair2Task:  # pair 2's 20 output rows are read, pair 1's are not
            assert moved[20:].all() and not moved[:20].any()
        else:
            assert moved.all(), name  # the task's gradient reached every entry through the recurrence
    assert 0.0 <= result.metric_masked["accuracy"] <= 1.0 and result.final_loss > 0


@pytest.mark.parametrize("cls", [*ARITH, *DADD])
def test_lstm_tasks_pass_the_contract_check(cls):
    report = check_task(cls(**TINY))
    assert report.ok, report.problems


def test_lstm_through_the_command_lines(tmp_path, capsys):
    from maskprobe.cli import run
    from sample_tasks.arithmetic import main as arith_main
    from sample_tasks.double_addition import main as dadd_main

    ckpt = tmp_path / "lstm.pt"
    arith_main(["--out", str(ckpt), "--model", "lstm", "--lstm-size", "8", "--lstm-layers", "1", "--steps", "3"])
    sd = torch.load(ckpt, weights_only=True)
    assert sd["lstm.weight_ih_l0"].shape == (32, 42) and sd["head.weight"].shape == (20, 8) and "lstm.weight_ih_l1" not in sd
    assert "step 3 loss" in capsys.readouterr().out
    out = tmp_path / "add.safetensors"
    args = ["model=lstm", "lstm_size=8", "lstm_layers=1", "eval_size=32"]
    argv = ["train", str(ckpt), "--task", "arith-add", "--steps", "2", "--batch-size", "8", "--out", str(out), "-q"]
    assert run([*argv, *(x for a in args for x in ("--task-arg", a))]) == 0
    masks = load_masks(out).masks
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"} <= set(masks) and "head.bias" not in masks
    dadd = tmp_path / "dadd.pt"
    dadd_main(["--out", str(dadd), "--model", "lstm", "--lstm-size", "8", "--steps", "2"])
    assert torch.load(dadd, weights_only=True)["lstm.weight_ih_l0"].shape == (32, 80)


def test_the_base_command_lines_take_the_papers_optimiser():
    import argparse

    from maskprobe.learning.fitting import Recipe
    from sample_tasks.arithmetic import add_recipe_args, recipe_from
    from sample_tasks.double_addition import LSTM_DADD_RECIPE, BothPairsTask

    p = argparse.ArgumentParser()
    add_recipe_args(p)
    task = BothPairsTask(model="lstm", lstm_size=8)
    assert recipe_from(p.parse_args([]), task) == LSTM_DADD_RECIPE  # nothing given: the task's own recipe
    r = recipe_from(p.parse_args(["--lr", "1e-3", "--schedule", "constant"]), task)
    assert r == Recipe(steps=LSTM_DADD_RECIPE.steps, batch_size=128, lr=1e-3, warmup=LSTM_DADD_RECIPE.warmup,
                       schedule="constant", clip=LSTM_DADD_RECIPE.clip)  # fmt: skip
    assert [r.lr_at(s) for s in (0, 1000, 2999)] == [1e-3] * 3
