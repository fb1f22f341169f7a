"""The paper's addition/multiplication task (Csordás et al. 2021, §3.1), as maskprobe task plugins.

Data, exactly as the paper: ``a, b`` uniform in 0..99, the operation uniform in {add, mul} (or fixed, for
the add-only / mul-only tasks), target ``(a op b) mod 100`` as two digits, least significant first.
Input (42): one-hot digits of ``a`` (units, tens), of ``b`` (units, tens), one-hot operation (add, mul).
Output (20): two groups of 10 logits, cross-entropy per digit. Accuracy: both digits right.

Tasks: ``arith-add``, ``arith-mul`` and ``arith-both`` (the control: both operations). Task argument ``model``:

* ``fnn`` (default): a ReLU FNN, hidden sizes from the ``hidden`` argument (the paper: 2000,2000,2000,2000);
* ``lstm``: the paper's recurrent variant (:mod:`sample_tasks.recurrent`): the 42-dim input fed at each of 3
  time steps into an ``nn.LSTM`` (``lstm``, ``lstm_layers`` x ``lstm_size``; the paper: 2 x 256), a linear
  ``head`` to the 20 outputs on the last step (the paper code's ``RecurrentAddMulInterface(model, 3)``).

Make a base checkpoint::

    python -m sample_tasks.arithmetic --out addmul.pt --hidden 256,256,256,256 --steps 10000
    python -m sample_tasks.arithmetic --out addmul-lstm.pt --model lstm --lstm-size 128

and pass the same architecture to maskprobe (``--task-arg model=lstm --task-arg lstm_size=128``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskprobe.learning.fitting import Recipe, fit
from maskprobe.tasks import Task
from sample_tasks.recurrent import RecurrentNet, check_model

ADD, MUL = 0, 1
IN_FEATURES = 42
OUT_FEATURES = 20
RECIPE = Recipe(steps=10_000, batch_size=128, lr=2e-3, warmup=0.05, schedule="cosine")  # base networks (fitting.py)
# model=lstm (docs/paper.md, "Base networks"): lr 2e-3..5e-3 left the 2 x 128 LSTM at 25-57 % after 4-6k steps,
# 2e-2 diverged on double addition; 1e-2 learns both operations. Clip 1: the paper code's default.
LSTM_RECIPE = Recipe(steps=6000, batch_size=128, lr=1e-2, warmup=0.05, schedule="cosine", clip=1.0)
LSTM_STEPS = 3  # time steps the input is fed (the paper code's RecurrentAddMulInterface(model, 3))


def build_fnn(in_features: int, hidden: Iterable[int], out_features: int) -> nn.Sequential:
    """``Linear -> ReLU`` per hidden size, then a linear output layer."""
    layers: list[nn.Module] = []
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, out_features))
    return nn.Sequential(*layers)


def encode(a: torch.Tensor, b: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """(B,) ints -> (B, 42) float one-hot input."""
    parts = [F.one_hot(a % 10, 10), F.one_hot(a // 10, 10), F.one_hot(b % 10, 10), F.one_hot(b // 10, 10), F.one_hot(op, 2)]
    return torch.cat(parts, dim=1).float()


def targets(a: torch.Tensor, b: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """(B,) ints -> (B, 2) digits of (a op b) mod 100, least significant first."""
    r = torch.where(op == ADD, a + b, a * b) % 100
    return torch.stack([r % 10, r // 10], dim=1)


def parse_hidden(hidden: str | Iterable[int]) -> list[int]:
    if isinstance(hidden, str):
        return [int(h) for h in hidden.split(",") if h.strip()]
    return [int(h) for h in hidden]


class ArithmeticTask(Task):
    """Base of the three arithmetic tasks; ``ops`` picks which operations the data holds."""

    ops: tuple[int, ...] = (ADD, MUL)
    metric = "accuracy"

    def __init__(
        self,
        hidden: str = "2000,2000,2000,2000",
        eval_size: int = 10000,
        model: str = "fnn",
        lstm_size: int = 256,
        lstm_layers: int = 2,
    ):
        """Args:
        hidden: hidden sizes of the ReLU FNN, comma separated (``model=fnn``; default the paper's 2000x4).
        eval_size: number of evaluation samples.
        model: ``fnn`` or ``lstm``.
        lstm_size: LSTM units per layer (``model=lstm``; default the paper's 256).
        lstm_layers: LSTM layers (``model=lstm``; default the paper's 2).
        """
        self.hidden = parse_hidden(hidden)
        self.eval_size = int(eval_size)
        self.model = check_model(model)
        self.lstm_size, self.lstm_layers = int(lstm_size), int(lstm_layers)

    def build_model(self) -> nn.Module:
        if self.model == "lstm":
            return RecurrentNet(IN_FEATURES, OUT_FEATURES, self.lstm_size, self.lstm_layers, LSTM_STEPS)
        return build_fnn(IN_FEATURES, self.hidden, OUT_FEATURES)

    def base_recipe(self) -> Recipe:
        """FNN: Adam, batch 128, 10,000 steps, lr 2e-3 with a 5 % warm-up and a cosine decay (docs/benchmarks.md,
        "Base-network robustness": every seed 0-19 learns both operations; the paper's constant 1e-3 did not).
        LSTM: :data:`LSTM_RECIPE` (docs/paper.md, "Base networks")."""
        return LSTM_RECIPE if self.model == "lstm" else RECIPE

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.randint(0, 100, (n,), generator=generator)
        b = torch.randint(0, 100, (n,), generator=generator)
        choice = torch.randint(0, len(self.ops), (n,), generator=generator)
        op = torch.tensor(self.ops)[choice]
        return encode(a, b, op), targets(a, b, op)

    def batches(self, split: str, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        if split == "train":
            while True:
                yield self.sample(batch_size, generator)
        else:
            left = self.eval_size
            while left > 0:
                n = min(batch_size, left)
                left -= n
                yield self.sample(n, generator)

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        logits = model(x).view(-1, 2, 10)
        return F.cross_entropy(logits.reshape(-1, 10), y.reshape(-1))

    def evaluate(self, model, batches) -> dict[str, float]:
        correct = digits = total = 0
        loss = 0.0
        for x, y in batches:
            logits = model(x).view(-1, 2, 10)
            pred = logits.argmax(-1)
            correct += int((pred == y).all(dim=1).sum())
            digits += int((pred == y).sum())
            loss += float(F.cross_entropy(logits.reshape(-1, 10), y.reshape(-1), reduction="sum"))
            total += x.shape[0]
        return {"accuracy": correct / total, "digit_accuracy": digits / (2 * total), "loss": loss / (2 * total)}


class AddTask(ArithmeticTask):
    """Addition only: ``(a + b) mod 100``."""

    name = "arith-add"
    ops = (ADD,)


class MulTask(ArithmeticTask):
    """Multiplication only: ``(a * b) mod 100``."""

    name = "arith-mul"
    ops = (MUL,)


class AddMulTask(ArithmeticTask):
    """Both operations (the control task, and the base network's training data)."""

    name = "arith-both"
    ops = (ADD, MUL)


def train_base(
    task: Task, steps: int | None = None, seed: int = 0, callback=None, recipe: Recipe | None = None, device=None
) -> nn.Module:
    """Train ``task``'s network from scratch with its base recipe (:func:`maskprobe.learning.fitting.fit`); ``steps``
    overrides the recipe's. ``callback(step, loss)`` is called every 500 steps. ``device``: where to train
    (None: the CPU, where the model is built)."""
    return fit(task, (recipe or task.base_recipe()).with_steps(steps), seed=seed, callback=callback, device=device)


def train_and_save(
    task: Task, out: str, steps: int | None, seed: int, recipe: Recipe | None = None, device=None
) -> dict[str, float]:
    """The base recipe for a sample task's command line: train (progress lines on stdout) on ``device``, save the
    state dict (CPU tensors) atomically to ``out``, and return the task's metrics on the trained network.
    ``recipe``: another recipe than the task's (:func:`recipe_from`)."""
    from maskprobe.atomic import atomic_write
    from maskprobe.learning.training import evaluate_task

    def progress(s: int, loss: float) -> None:
        print(f"step {s} loss {loss:.4f}", flush=True)

    model = train_base(task, steps=steps, seed=seed, callback=progress, recipe=recipe, device=device)
    atomic_write(out, lambda tmp: torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp))
    return evaluate_task(model, task, device=device or "cpu")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device`` of the base-training command lines (as ``maskprobe train``'s)."""
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:N")


def device_from(p: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """``--device`` resolved, or one line ``PROG: error: ...`` on stderr and maskprobe's bad-input exit code."""
    from maskprobe.devices import resolve_device
    from maskprobe.errors import BadInputError

    try:
        return resolve_device(args.device)
    except BadInputError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The architecture options of the base-training command lines (the same names as the task arguments)."""
    p.add_argument("--model", choices=("fnn", "lstm"), default="fnn")
    p.add_argument("--hidden", default="2000,2000,2000,2000", help="FNN hidden sizes")
    p.add_argument("--lstm-size", type=int, default=256, help="LSTM units per layer (the paper: 256)")
    p.add_argument("--lstm-layers", type=int, default=2, help="LSTM layers (the paper: 2)")


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Options that change the task's base recipe (the paper's optimiser: ``--lr 1e-3 --schedule constant``)."""
    p.add_argument("--lr", type=float, default=None, help="peak Adam learning rate (default: the base recipe's)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default=None, help="default: the base recipe's")


def recipe_from(args: argparse.Namespace, task: Task) -> Recipe:
    """The task's base recipe with ``--lr`` / ``--schedule`` applied (steps are applied by :func:`train_base`)."""
    changes = {k: v for k, v in (("lr", args.lr), ("schedule", args.schedule)) if v is not None}
    return replace(task.base_recipe(), **changes)


def model_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "hidden": args.hidden, "lstm_size": args.lstm_size, "lstm_layers": args.lstm_layers}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the add/mul base network and save its state_dict.")
    p.add_argument("--out", required=True)
    add_model_args(p)
    p.add_argument("--steps", type=int, default=None, help="override the base recipe's steps (FNN 10,000, LSTM 6,000)")
    add_recipe_args(p)
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    args = p.parse_args(argv)
    device = device_from(p, args)
    task = AddMulTask(**model_args(args))
    metrics = train_and_save(task, args.out, args.steps, args.seed, recipe_from(args, task), device=device)
    print(f"saved {args.out}; accuracy {metrics['accuracy']:.4f}")


if __name__ == "__main__":
    main()
