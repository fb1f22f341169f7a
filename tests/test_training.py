"""maskprobe.learning.training: the one loop — the loss it reports is exactly task loss + beta/B * sum(logits), progress
events carry the task loss and metric, warnings say when a mask collapsed or stayed dense."""

from __future__ import annotations

import collections
import copy

import pytest
import torch

from maskprobe.config import REGULARISER, TrainConfig
from maskprobe.learning.training import regulariser_grad, train_mask
from maskprobe.tasks import TaskRef
from sample_tasks.arithmetic import AddTask


@pytest.fixture()
def net_and_task(tiny_addmul):
    _, model, hidden = tiny_addmul
    return copy.deepcopy(model), AddTask(hidden=hidden, eval_size=128)


def test_final_loss_is_task_loss_plus_the_regulariser_of_the_logits_it_saw(net_and_task):
    model, task = net_and_task
    ref = TaskRef("arith-add", {})
    cfg = TrainConfig(steps=1, batch_size=32, beta=0.05, init=1.5, log_every=1)
    one = train_mask(model, task, ref, cfg)
    n = sum(m.numel() for m in one.masks.values())
    # step 1 saw the initial logits: all 1.5
    assert one.final_loss == pytest.approx(one.final_task_loss + 0.05 / 32 * 1.5 * n, rel=1e-12, abs=1e-12)
    five = train_mask(model, task, ref, TrainConfig(steps=5, batch_size=32, beta=0.05, init=1.5, log_every=1))
    six = train_mask(model, task, ref, TrainConfig(steps=6, batch_size=32, beta=0.05, init=1.5, log_every=1), resume=five.state)
    seen = sum(float(t.double().sum()) for t in five.state.logits.values())  # what step 6 saw
    assert six.final_loss == pytest.approx(six.final_task_loss + regulariser_grad(0.05, 32) * seen, rel=1e-6)
    assert REGULARISER == "beta / batch_size * sum(logits)" and one.metadata()["hparams"]["regulariser"] == REGULARISER


def test_progress_events_carry_task_loss_density_and_the_metric(net_and_task):
    model, task = net_and_task
    events = []
    res = train_mask(model, task, TaskRef("arith-add", {}), TrainConfig(steps=20, batch_size=16, log_every=5, eval_every=10),
                     callback=events.append)  # fmt: skip
    assert [e.step for e in events] == [5, 10, 15, 20]
    assert events[0].metric is None and events[1].metric is not None and 0 <= events[-1].metric <= 1
    assert all(e.task_loss > 0 and e.loss > e.task_loss and 0 < e.density <= 1 for e in events)
    assert events[-1].metric == pytest.approx(res.metric_masked["accuracy"], abs=0.2)  # one batch vs the whole set


def test_the_callers_module_is_never_moved_or_left_changed(net_and_task):
    model, task = net_and_task
    before = {n: p.clone() for n, p in model.named_parameters()}
    model.train()
    train_mask(model, task, TaskRef("arith-add", {}), TrainConfig(steps=3, batch_size=16))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[n], p) and p.device.type == "cpu" for n, p in model.named_parameters())


def test_warnings_name_a_dense_mask_and_a_collapsed_one(net_and_task):
    model, task = net_and_task
    dense = train_mask(model, task, TaskRef("arith-add", {}), TrainConfig(steps=2, batch_size=16))
    assert any("stayed dense" in w for w in dense.warnings())
    collapsed = train_mask(model, task, TaskRef("arith-add", {}), TrainConfig(steps=60, batch_size=16, beta=50.0, lr=0.2))
    assert collapsed.density()["total"] < 0.2
    assert any("collapsed" in w for w in collapsed.warnings())


def test_batched_samples_learn_the_loops_mask_and_fall_back_when_vmap_cannot(net_and_task):
    """--batched-samples: the K samples as one vmap draw bitwise the loop's gates, so the logits agree to float
    rounding and the binary masks all but exactly; a loss vmap cannot batch falls back to the loop, said in the
    metadata, with the loop's result."""
    from maskprobe.learning.engine import stack_chunks

    model, task = net_and_task
    ref = TaskRef("arith-add", {})
    loop = train_mask(model, task, ref, TrainConfig(steps=30, batch_size=32, samples=4))
    vmap = train_mask(model, task, ref, TrainConfig(steps=30, batch_size=32, samples=4, batched_samples=True))
    assert vmap.metadata()["engine"]["samples"] == "vmap" and "samples" not in loop.metadata()["engine"]
    for name, t in loop.state.logits.items():
        torch.testing.assert_close(vmap.state.logits[name], t, rtol=1e-4, atol=1e-5)
    agree = sum(int((loop.masks[n] == vmap.masks[n]).sum()) for n in loop.masks) / sum(m.numel() for m in loop.masks.values())
    assert agree > 0.999
    assert vmap.final_task_loss == pytest.approx(loop.final_task_loss, rel=1e-4)

    class ItemLoss(AddTask):  # .item() inside the loss: vmap refuses data-dependent Python values
        def loss(self, model, batch):
            out = super().loss(model, batch)
            return out * (1.0 if float(out.detach()) > -1 else 2.0)

    odd = ItemLoss(hidden=task.hidden, eval_size=128)
    fell = train_mask(model, odd, ref, TrainConfig(steps=5, batch_size=32, samples=4, batched_samples=True))
    plain = train_mask(model, odd, ref, TrainConfig(steps=5, batch_size=32, samples=4))
    assert fell.metadata()["engine"]["samples"].startswith("loop (vmap failed:")
    assert all(torch.equal(fell.state.logits[n], plain.state.logits[n]) for n in plain.state.logits)

    x, y = torch.zeros(3, 2), torch.ones(3)
    stacked, dims = stack_chunks([(x, y, 7), (x + 1, y, 7)])
    assert stacked[0].shape == (2, 3, 2) and dims == (0, 0, None)
    assert stack_chunks([(x, y), (torch.zeros(2, 2), y)]) is None  # unequal chunks: the loop
    pair = collections.namedtuple("Pair", "x y")
    stacked, dims = stack_chunks([pair(x, y), pair(x, y)])
    assert isinstance(stacked, pair) and stacked.x.shape == (2, 3, 2) and dims == pair(0, 0)
