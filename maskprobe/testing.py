"""Helpers for plugin authors' own tests: a conformance check of the task contract, and tiny models.

Put this in your test suite::

    from maskprobe.testing import check_task, tiny_fnn

    def test_my_task_follows_the_contract():
        report = check_task(MyTask(), model=tiny_fnn(12, 4))
        assert report.ok, report.problems

``check_task`` runs the task through the same engine code as ``maskprobe train`` (two mask steps on a tiny
batch, then the evaluation with and without the mask), and says in one line per problem what violates the
contract of :class:`maskprobe.Task` (docs/plugins.md). ``maskprobe tasks --check NAME`` runs it from the shell.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import BadInputError, MaskprobeError
from .learning.batching import batch_size_of
from .tasks.contract import Task, TaskContext, TaskRef, contract_problems, describe_task

MAX_EVAL_BATCHES = 100_000  # an 'eval' stream longer than this is taken to be endless


@dataclass
class TaskCheck:
    """What :func:`check_task` found: ``passed`` and ``problems``, one line each."""

    task: str
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # checks that could not run (no model to run them on)
    bad_input: list[str] = field(default_factory=list)  # problems of the input given (data, labels, tokenizer), not the plugin's

    @property
    def ok(self) -> bool:
        return not self.problems


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else ()
    return [t for v in items for t in _tensors(v)]


def _same(a: Any, b: Any) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return len(ta) == len(tb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(ta, tb, strict=True))


def _check_stream(task: Task, report: TaskCheck, batch_size: int) -> None:
    """Train stream: seeded, of the asked size, on the CPU; eval stream: finite and the same twice."""
    first = [list(itertools.islice(task.batches("train", batch_size, torch.Generator().manual_seed(0)), 2)) for _ in range(2)]
    if len(first[0]) < 2:
        report.problems.append("batches('train', ...) must be endless, it ended after fewer than 2 batches")
        return
    batch = first[0][0]
    if not _tensors(batch):
        report.problems.append(f"a batch must be a tensor or a tuple/list/dict of tensors, got {type(batch).__name__}")
        return
    if batch_size_of(batch) != batch_size:
        report.problems.append(f"batches('train', batch_size={batch_size}) gave a batch of {batch_size_of(batch)} along dim 0")
    devices = {str(t.device) for t in _tensors(batch)}
    if devices != {"cpu"}:
        report.problems.append(
            f"batches are made on {sorted(devices)}; make them on the CPU (the engine moves them to its device)"
        )
    if _same(batch, first[1][0]):
        report.passed.append("train stream: same seed, same batches")
    else:
        report.problems.append("batches('train') differ for the same seed: draw all randomness from the generator argument")
    eval_runs = []
    for _ in range(2):
        stream = task.batches("eval", batch_size, torch.Generator().manual_seed(0))
        got = list(itertools.islice(stream, MAX_EVAL_BATCHES + 1))
        if len(got) > MAX_EVAL_BATCHES:
            report.problems.append(f"batches('eval', ...) must be finite; it gave more than {MAX_EVAL_BATCHES} batches")
            return
        eval_runs.append(got)
    if not eval_runs[0]:
        report.problems.append("batches('eval', ...) gave no batch")
    elif len(eval_runs[0]) == len(eval_runs[1]) and all(_same(a, b) for a, b in zip(*eval_runs, strict=True)):
        report.passed.append(f"eval stream: finite ({len(eval_runs[0])} batches of <= {batch_size}), same on every call")
    else:
        report.problems.append("batches('eval') differ between calls with the same seed: they must be the same every time")


def check_task(
    task: Task,
    model: nn.Module | None = None,
    *,
    steps: int = 2,
    batch_size: int = 8,
    device: str = "cpu",
    context: TaskContext | None = None,
) -> TaskCheck:
    """Run ``task`` through the contract's checks and a few real mask-training steps.

    Args:
        task: the task instance to check.
        model: the network to mask (default: ``task.build_model()``); pass a tiny one to keep the check fast.
        steps: mask-training steps to run (default 2).
        batch_size: train batch size (default 8; split into 4 mask samples as in training).
        device: where the engine runs (default ``"cpu"``).
        context: what :meth:`Task.setup` is called with before any check (default: ``TaskContext(model)`` when
            ``model`` is given; no setup without either).

    Returns:
        A :class:`TaskCheck`; ``ok`` is True when nothing violated the contract. Nothing is raised for a
        plugin's own errors: each becomes one line in ``problems``.
    """
    from .learning.training import TrainConfig, evaluate_task, train_mask

    report = TaskCheck(describe_task(task))
    report.problems += contract_problems(type(task))
    if not isinstance(getattr(task, "name", None), str) or not task.name:
        report.problems.append("name must be a non-empty string (it names the mask and its file)")
    if report.problems:
        return report
    report.passed.append("declares name, metric, higher_is_better, metric_range and implements batches/loss/evaluate")
    if context is not None or model is not None:
        try:
            task.setup(context if context is not None else TaskContext(model))
        except BadInputError as exc:  # missing or empty data, an unknown label, no tokenizer: the user's input
            _bad_input(report, f"setup() refused its input: {str(exc).removeprefix(f'{describe_task(task)}: ')}")
            return report
        except MaskprobeError as exc:
            report.problems.append(f"setup() failed: {str(exc).removeprefix(f'{describe_task(task)}: ')}")
            return report
        except Exception as exc:
            report.problems.append(f"setup() failed: {type(exc).__name__}: {exc}")
            return report
    try:
        _check_stream(task, report, batch_size)
    except BadInputError as exc:
        _bad_input(report, f"batches() refused its input: {str(exc).removeprefix(f'{describe_task(task)}: ')}")
    except Exception as exc:  # the plugin's own error: report it, keep going only if something can run
        report.problems.append(f"batches() failed: {type(exc).__name__}: {exc}")
    if report.problems:  # running the engine on a broken stream could hang (an endless eval) or mislead
        return report
    if model is None:
        try:
            model = task.build_model()
        except Exception as exc:
            report.problems.append(f"build_model() failed: {type(exc).__name__}: {exc}")
            return report
        if model is None:
            report.skipped.append(
                "evaluate() and the mask steps: build_model() returns None, so there is no network to run them on "
                "(pass model=, or maskprobe tasks --check NAME --checkpoint CKPT)"
            )
            return report
    if not isinstance(model, nn.Module):
        report.problems.append(f"build_model() must return an nn.Module or None, got {type(model).__name__}")
        return report
    try:
        full = evaluate_task(model, task, device=device, batch_size=max(batch_size, 64))
        report.passed.append(f"evaluate(): {task.metric}={full[task.metric]:.4g} on the unmasked model, inside its range")
        config = TrainConfig(
            steps=steps, batch_size=batch_size, seed=0, device=device, log_every=1, eval_batch_size=max(batch_size, 64)
        )
        result = train_mask(model, task, TaskRef(type(task).__name__, {}), config)
        masked = result.metric_masked[task.metric]
        report.passed.append(f"{steps} mask steps: scalar loss {result.final_loss:.4g}, masked {task.metric}={masked:.4g}")
    except BadInputError as exc:
        _bad_input(report, str(exc).removeprefix(f"{describe_task(task)}: "))
    except MaskprobeError as exc:
        report.problems.append(str(exc).removeprefix(f"{describe_task(task)}: "))
    finally:
        model.to("cpu")
    return report


def _bad_input(report: TaskCheck, line: str) -> None:
    """A problem of the input given to the task (``maskprobe tasks --check`` exits 2 for it, as train would)."""
    report.problems.append(line)
    report.bad_input.append(line)


def tiny_fnn(in_features: int, out_features: int, hidden: Sequence[int] = (16,), seed: int = 0) -> nn.Sequential:
    """A small ReLU FNN ``in -> hidden... -> out`` with seeded random weights, for fast task tests."""
    torch.manual_seed(seed)
    sizes = [in_features, *hidden]
    hidden_layers = [m for a, b in itertools.pairwise(sizes) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*hidden_layers, nn.Linear(sizes[-1], out_features)).eval()


def tiny_cnn(in_channels: int, n_classes: int, channels: int = 8, seed: int = 0) -> nn.Sequential:
    """Two 3x3 conv layers, global average pooling and a linear head, for image tasks of any size (B, C, H, W)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, n_classes),
    ).eval()
