"""maskprobe.testing: check_task finds each contract violation (and passes a good task); the tiny models."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from maskprobe import Task
from maskprobe.testing import check_task, tiny_cnn, tiny_fnn


class Good(Task):
    name = "good"

    def build_model(self):
        return tiny_fnn(4, 2, hidden=(8,))

    def batches(self, split, batch_size, generator):
        for _ in itertools.count() if split == "train" else range(3):
            x = torch.randn(batch_size, 4, generator=generator)
            yield x, (x[:, 0] > 0).long()

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model, batches):
        pairs = [(int((model(x).argmax(1) == y).sum()), len(y)) for x, y in batches]
        return {"accuracy": sum(p[0] for p in pairs) / sum(p[1] for p in pairs)}


class Unseeded(Good):
    name = "unseeded"

    def batches(self, split, batch_size, generator):
        for _ in itertools.count() if split == "train" else range(3):
            x = torch.randn(batch_size, 4)  # global RNG, not the generator
            yield x, (x[:, 0] > 0).long()


class EndlessEval(Good):
    name = "endless-eval"

    def batches(self, split, batch_size, generator):
        while True:
            yield torch.zeros(batch_size, 4), torch.zeros(batch_size, dtype=torch.long)


class WrongSize(Good):
    name = "wrong-size"

    def batches(self, split, batch_size, generator):
        yield from Good.batches(self, split, batch_size + 1, generator)


class NumpyBatch(Good):
    name = "numpy-batch"

    def batches(self, split, batch_size, generator):
        while True:
            yield "not a tensor"


class MeanPerSample(Good):
    name = "per-sample"

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="none")


class Percent(Good):
    name = "percent"

    def evaluate(self, model, batches):
        return {"accuracy": 100 * Good.evaluate(self, model, batches)["accuracy"] + 101}


class WrongKey(Good):
    name = "wrong-key"

    def evaluate(self, model, batches):
        return {"acc": 1.0}


class NoArchitecture(Good):
    name = "no-architecture"

    def build_model(self):
        return None


def test_good_task_passes_every_check():
    report = check_task(Good())
    assert report.ok, report.problems
    assert len(report.passed) == 5
    assert report.task.startswith("task plugin 'good' (") and report.task.endswith("test_testing.py)")


@pytest.mark.parametrize(
    "task, problem",
    [
        (Unseeded(), "differ for the same seed"),
        (EndlessEval(), "must be finite"),
        (WrongSize(), "batches('train', batch_size=8) gave a batch of 9"),
        (NumpyBatch(), "a batch must be a tensor or a tuple/list/dict of tensors, got str"),
        (MeanPerSample(), "loss() must return a scalar float tensor, got Tensor("),
        (Percent(), "is outside its range (0.0, 1.0)"),
        (WrongKey(), "evaluate() must return a dict with key 'accuracy'"),
    ],
)
def test_each_violation_is_one_problem_line(task, problem, monkeypatch):
    monkeypatch.setattr("maskprobe.testing.MAX_EVAL_BATCHES", 50)  # keep the endless-eval case fast
    report = check_task(task)
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems
    assert all("\n" not in p for p in report.problems)


def test_missing_methods_and_bad_declarations_are_reported_without_running():
    class Half(Task):
        name = ""
        metric_range = (2, 1)

        def batches(self, split, batch_size, generator):
            raise AssertionError("must not run")

    report = check_task(Half())
    text = " | ".join(report.problems)
    assert "does not implement loss()" in text and "does not implement evaluate()" in text
    assert "metric_range must be None or (low, high)" in text and "name must be a non-empty string" in text


def test_model_argument_and_missing_architecture():
    report = check_task(NoArchitecture())
    # nothing violates the contract, but evaluate() and the mask steps could not run: said, not hidden in "passed"
    assert report.ok and "build_model() returns None" in report.skipped[0]
    report = check_task(NoArchitecture(), model=tiny_fnn(4, 2))
    assert report.ok and len(report.passed) == 5


def test_model_that_does_not_fit_the_data_is_a_problem():
    report = check_task(Good(), model=tiny_fnn(5, 2))
    assert not report.ok and "evaluate() failed" in report.problems[0]


def test_tiny_models_shapes_and_seeds():
    fnn = tiny_fnn(6, 3, hidden=(5, 7))
    assert [tuple(p.shape) for n, p in fnn.named_parameters() if n.endswith("weight")] == [(5, 6), (7, 5), (3, 7)]
    assert fnn(torch.zeros(2, 6)).shape == (2, 3) and not fnn.training
    assert torch.equal(tiny_fnn(6, 3, seed=1)[0].weight, tiny_fnn(6, 3, seed=1)[0].weight)
    assert not torch.equal(tiny_fnn(6, 3, seed=1)[0].weight, tiny_fnn(6, 3, seed=2)[0].weight)
    cnn = tiny_cnn(1, 10)
    assert cnn(torch.zeros(2, 1, 8, 8)).shape == (2, 10) and cnn(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
