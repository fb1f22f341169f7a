"""Class removal (Csordás et al. 2021, §4, their CIFAR-10 experiment) on scikit-learn's bundled 8x8 digits.

Needs the optional extra ``images`` (scikit-learn; the 1,797 images ship inside it, nothing is downloaded).

The paper trains one mask per class ``c`` on the training data *without* class ``c``, plus a control mask
on all classes, and compares each removal mask with the control (which weights and which predictions
change when a class is no longer needed). For the removal masks the paper's code keeps the output layer's
mask fixed to the control mask's (``keep_last_layer``: it copies those logits and does not optimise them),
so that a removal mask cannot simply switch off the removed class's output row; it must change the
features instead. Here that is the task argument ``control_mask``: with it, ``loss`` runs the output layer
under the control mask's output-layer tensors, and the removal mask is trained with ``--exclude 'head.*'``;
``python -m sample_tasks.digits keep-output`` then copies the control's output-layer tensors into the
removal mask file, so that both files cover the same parameters and ``compare`` accepts them. See
docs/plugins.md ("Class removal on digits") for the full recipe.

Data: images scaled to [0, 1], shape (B, 1, 8, 8); a fixed split (every 5th image is held out: 360 eval,
1,437 train). The train stream draws with replacement from the train split minus the removed class.
Metrics: ``accuracy`` over the task's classes (all but ``removed``), ``accuracy_removed`` (on the removed
class alone) and ``accuracy_class_K`` for each class.

Make a base checkpoint::

    python -m sample_tasks.digits --out digits.pt --steps 1500
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskprobe.tasks import Task

N_CLASSES = 10
HEAD = "head."  # parameter-name prefix of the output layer


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

    def forward(self, x: Tensor, head_mask: dict[str, Tensor] | None = None) -> Tensor:
        """(B, 1, 8, 8) -> (B, 10) logits; ``head_mask`` (name -> bool) runs the output layer under a fixed mask."""
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2).flatten(1)
        h = F.relu(self.fc(h))
        if not head_mask:
            return self.head(h)
        w, b = self.head.weight, self.head.bias
        w = w * head_mask["head.weight"].to(w.dtype) if "head.weight" in head_mask else w
        b = b * head_mask["head.bias"].to(b.dtype) if "head.bias" in head_mask else b
        return F.linear(h, w, b)


def output_layer_masks(path: str) -> dict[str, Tensor]:
    """The output-layer tensors (``head.*``) of a mask file."""
    from maskprobe.maskfile import load_masks

    masks = {n: m for n, m in load_masks(path).masks.items() if n.startswith(HEAD)}
    if not masks:
        raise ValueError(f"{path} has no output-layer mask ({HEAD}*): train the control mask without --exclude 'head.*'")
    return masks


class DigitsTask(Task):
    """Digit classification without class ``removed`` (default -1: all classes, the control)."""

    name = "digits"
    metric = "accuracy"

    def __init__(self, removed: int = -1, control_mask: str = "", channels: int = 16):
        """Args:
        removed: the class left out of the training data and of ``accuracy`` (default -1: none, the control).
        control_mask: the control's mask file; ``loss`` then runs the output layer under its mask (the paper's
            keep_last_layer; train with ``--exclude 'head.*'``). Default "": the output layer is masked as usual.
        channels: width of the CNN (default 16).
        """
        if not -1 <= int(removed) < N_CLASSES:
            raise ValueError(f"removed must be -1 (none) or a class 0..9, got {removed}")
        self.removed = int(removed)
        self.channels = int(channels)
        self.control_mask = control_mask
        self.head_mask = output_layer_masks(control_mask) if control_mask else None
        self.name = "digits" if self.removed < 0 else f"digits-without-{self.removed}"
        self.x_train, self.y_train, self.x_eval, self.y_eval = load_digits_split()
        keep = self.y_train != self.removed
        self.x_train, self.y_train = self.x_train[keep], self.y_train[keep]

    def build_model(self) -> nn.Module:
        return DigitsCNN(self.channels)

    def base_recipe(self):
        """Adam, batch 128, 1,500 steps, lr 2e-3 with warm-up and cosine decay (maskprobe.fitting)."""
        from maskprobe.fitting import Recipe

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
        head = {n: m.to(x.device) for n, m in self.head_mask.items()} if self.head_mask else None
        return F.cross_entropy(model(x, head_mask=head) if head else model(x), y)

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


def keep_output(control: str, removal: str) -> None:
    """Copy the control mask's output-layer tensors into the removal mask file (atomically, in place)."""
    from maskprobe.maskfile import load_masks, save_masks

    head = output_layer_masks(control)
    ms = load_masks(removal)
    meta = dict(ms.metadata)
    meta["output_layer_from"] = json.dumps({"mask": str(control), "tensors": sorted(head)})
    save_masks(removal, {**ms.masks, **head}, meta)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the digits CNN (all classes) and save its state_dict; or keep-output.")
    sub = p.add_subparsers(dest="cmd")
    k = sub.add_parser("keep-output", help="Copy the control mask's output layer into removal mask files.")
    k.add_argument("--control", required=True)
    k.add_argument("removal", nargs="+")
    p.add_argument("--out")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cmd == "keep-output":
        for path in args.removal:
            keep_output(args.control, path)
            print(f"{path}: output layer now the control's ({args.control})")
        return
    if not args.out:
        p.error("--out is required")
    from sample_tasks.arithmetic import train_and_save

    metrics = train_and_save(DigitsTask(channels=args.channels), args.out, args.steps, args.seed)
    print(f"saved {args.out}; accuracy {metrics['accuracy']:.4f}")


if __name__ == "__main__":
    main()
