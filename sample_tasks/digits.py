"""Class removal (Csordás et al. 2021, §4, their CIFAR-10 experiment) on scikit-learn's bundled 8x8 digits.

Needs the optional extra ``images`` (scikit-learn; the 1,797 images ship inside it, nothing is downloaded).

The paper trains one mask per class ``c`` on the training data *without* class ``c``, plus a control mask
on all classes, and compares each removal mask with the control (which weights and which predictions
change when a class is no longer needed). For the removal masks the paper's code keeps the output layer's
mask fixed to the control mask's, so that a removal mask cannot simply switch off the removed class's output
row; it must change the features instead. In maskprobe that is the engine option ``--fix-from CONTROL``
(``--fix output``, the default: the output layer's tensors are copied from the control mask and not trained),
usable with any task. ``compare`` then reports, per removal mask, the removed class's relative drop beside
the largest drop of any other class (docs/metrics.md, "Class removal"). Recipe: docs/plugins.md.

Data: images scaled to [0, 1], shape (B, 1, 8, 8); a fixed split (every 5th image is held out: 360 eval,
1,437 train). The train stream draws with replacement from the train split minus the removed class.
Metrics: ``accuracy`` over the task's classes (all but ``removed``), ``accuracy_removed`` (on the removed
class alone) and ``accuracy_class_K`` for each class.

Make a base checkpoint::

    python -m sample_tasks.digits --out digits.pt --steps 1500
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskprobe.tasks import Task

N_CLASSES = 10


@lru_cache(maxsize=1)
def load_digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_eval, y_eval)``: (N, 1, 8, 8) float in [0, 1] and (N,) int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits task needs scikit-learn: pip install 'maskprobe[images]'") from None
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    held_out = torch.arange(len(y)) % 5 == 0
    return x[~held_out], y[~held_out], x[held_out], y[held_out]


class DigitsCNN(nn.Module):
    """conv 3x3 (1->c) -> ReLU -> conv 3x3 (c->2c) -> ReLU -> maxpool 2 -> linear (32c -> 64) -> ReLU -> head (64 -> 10)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * 16, 64)
        self.head = nn.Linear(64, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, 8, 8) -> (B, 10) logits."""
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2).flatten(1)
        return self.head(F.relu(self.fc(h)))


class DigitsTask(Task):
    """Digit classification without class ``removed`` (default -1: all classes, the control)."""

    name = "digits"
    metric = "accuracy"

    def __init__(self, removed: int = -1, channels: int = 16):
        """Args:
        removed: the class left out of the training data and of ``accuracy`` (default -1: none, the control).
        channels: width of the CNN (default 16).
        """
        if not -1 <= int(removed) < N_CLASSES:
            raise ValueError(f"removed must be -1 (none) or a class 0..9, got {removed}")
        self.removed = int(removed)
        self.channels = int(channels)
        self.classes_removed = () if self.removed < 0 else (self.removed,)  # read by compare's class-removal table
        self.name = "digits" if self.removed < 0 else f"digits-without-{self.removed}"
        self.x_train, self.y_train, self.x_eval, self.y_eval = load_digits_split()
        keep = self.y_train != self.removed
        self.x_train, self.y_train = self.x_train[keep], self.y_train[keep]

    def build_model(self) -> nn.Module:
        return DigitsCNN(self.channels)

    def base_recipe(self):
        """Adam, batch 128, 1,500 steps, lr 2e-3 with warm-up and cosine decay (maskprobe.learning.fitting)."""
        from maskprobe.learning.fitting import Recipe

        return Recipe(steps=1500, batch_size=128, lr=2e-3)

    def batches(self, split: str, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        if split == "train":
            while True:
                idx = torch.randint(0, len(self.y_train), (batch_size,), generator=generator)
                yield self.x_train[idx], self.y_train[idx]
        for start in range(0, len(self.y_eval), batch_size):
            yield self.x_eval[start : start + batch_size], self.y_eval[start : start + batch_size]

    def loss(self, model, batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model, batches) -> dict[str, float]:
        right = torch.zeros(N_CLASSES)
        count = torch.zeros(N_CLASSES)
        for x, y in batches:
            ok = (model(x).argmax(-1) == y).float().cpu()
            right += torch.zeros(N_CLASSES).index_add_(0, y.cpu(), ok)
            count += torch.bincount(y.cpu(), minlength=N_CLASSES).float()
        mine = torch.arange(N_CLASSES) != self.removed
        out = {"accuracy": float(right[mine].sum() / count[mine].sum())}
        if self.removed >= 0:
            out["accuracy_removed"] = float(right[self.removed] / count[self.removed])
        out.update({f"accuracy_class_{c}": float(right[c] / max(count[c], 1)) for c in range(N_CLASSES)})
        return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the digits CNN (all classes) and save its state_dict.")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    from sample_tasks.arithmetic import add_device_arg, device_from, train_and_save

    add_device_arg(p)
    args = p.parse_args(argv)
    device = device_from(p, args)
    metrics = train_and_save(DigitsTask(channels=args.channels), args.out, args.steps, args.seed, device=device)
    print(f"saved {args.out}; accuracy {metrics['accuracy']:.4f}")


if __name__ == "__main__":
    main()
