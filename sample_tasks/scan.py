"""SCAN with an LSTM or a Transformer (Csordás et al. 2021, §5 "generalization"), as maskprobe task plugins.

Tasks: ``scan-simple``, ``scan-jump``, ``scan-turn-left``, ``scan-length``, one per SCAN split
(:mod:`sample_tasks.scan_data`: the data is generated from the published grammar). The base network is trained
on the ``simple`` split; the paper then trains one mask per split on that split's **train** set and scores
each mask, and the unmasked network, on the split's **test** set (e.g. a mask trained on the jump split's train
set, which has no "jump" but the bare command, scored on the commands with "jump"). So here ``batches("train")``
draws from the split's train set and ``batches("eval")`` gives its test set (``eval_on=test``, the default);
``eval_on=train`` scores on the split's train set and ``eval_on=simple_test`` on the simple split's test set
(the paper's code validates every mask on it as well).

Loss (teacher forcing): cross-entropy summed over a sequence's actions and its ``<eos>``, averaged over the
batch (the paper's code). Metrics (greedy decoding): ``accuracy`` = exact-sequence accuracy (every action
and the final ``<eos>`` right), ``token_accuracy`` (per target position), ``loss``.

Task arguments (the same for the base training and every mask): ``model`` (``lstm`` | ``transformer``),
``size`` (``cpu`` | ``paper``: presets, below), ``hidden``, ``layers``, ``embedding`` (LSTM), ``heads``, ``ff``
(Transformer) override the preset when non-zero; ``dropout`` (base training only; -1: the preset's);
``eval_size`` (at most this many evaluation commands, a seeded subset; 0: all), ``eval_on``, ``split_seed``
(the simple split's random 80/20 draw).

=============  ============================================  ==============================================
size           lstm                                          transformer
=============  ============================================  ==============================================
``paper``      2 layers x 200, embeddings 16, dropout 0.5    d_model 100, 3 + 3 layers, 4 heads, ff 200, 0.1
``cpu``        2 layers x 64, embeddings 16, dropout 0.0     d_model 64, 2 + 2 layers, 4 heads, ff 128, 0.0
=============  ============================================  ==============================================

Make a base checkpoint (simple split) and masks::

    python -m sample_tasks.scan --model lstm --out scan-lstm.pt
    maskprobe train scan-lstm.pt --task scan-simple --task scan-jump --task-arg model=lstm \
        --beta 3e-5 --steps 3000 --out scan-masks/

(``nn.LSTM``'s ``bias_ih_l*``/``bias_hh_l*`` are biases and stay unmasked by default, as the paper did;
docs/method.md, "What is masked".)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskprobe.learning.fitting import Recipe, fit
from maskprobe.tasks import Task
from sample_tasks import scan_data
from sample_tasks.scan_models import build

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "lstm": {"hidden": 200, "layers": 2, "embedding": 16, "heads": 0, "ff": 0, "dropout": 0.5},
        "transformer": {"hidden": 100, "layers": 3, "embedding": 0, "heads": 4, "ff": 200, "dropout": 0.1},
    },
    "cpu": {
        "lstm": {"hidden": 64, "layers": 2, "embedding": 16, "heads": 0, "ff": 0, "dropout": 0.0},
        "transformer": {"hidden": 64, "layers": 2, "embedding": 0, "heads": 4, "ff": 128, "dropout": 0.0},
    },
}
EVAL_ON = ("test", "train", "simple_test")
# The base networks' recipe (maskprobe.learning.fitting): the paper's code's SCAN recipe (Adam, constant lr, gradient-norm clip
# 5, dropout on) shortened for a CPU. The paper's code: lr 1e-3, batch 256, 25,000 steps; these defaults were
# measured with the ``cpu`` sizes (docs/plugins.md, SCAN: 97.5 % / 95.5 % on the simple test set in minutes).
RECIPE = Recipe(steps=2000, batch_size=128, lr=3e-3, schedule="constant", clip=5.0)


def sequence_loss(logits: Tensor, tgt: Tensor) -> Tensor:
    """Cross-entropy summed over each sequence's positions (padding -1 ignored), averaged over the batch."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=scan_data.TGT_PAD, reduction="sum")
    return ce / tgt.shape[0]


class ScanTask(Task):
    """One SCAN split; subclasses set ``name`` and ``split``."""

    split: str = "simple"
    metric = "accuracy"

    def __init__(
        self,
        model: str = "lstm",
        size: str = "cpu",
        hidden: int = 0,
        layers: int = 0,
        embedding: int = 0,
        heads: int = 0,
        ff: int = 0,
        dropout: float = -1.0,
        eval_size: int = 1000,
        eval_on: str = "test",
        split_seed: int = 0,
    ):
        """Args:
        model: ``lstm`` (encoder-decoder LSTM) or ``transformer``.
        size: ``cpu`` (default, small enough for a 2-core CPU) or ``paper`` (the paper's sizes).
        hidden: LSTM units / Transformer d_model (0: the preset's).
        layers: LSTM layers / Transformer layers per side (0: the preset's).
        embedding: LSTM embedding size (0: the preset's).
        heads: Transformer attention heads (0: the preset's).
        ff: Transformer feed-forward width (0: the preset's).
        dropout: dropout during base training (-1: the preset's); masks run the network in eval mode.
        eval_size: evaluate on at most this many commands, a seeded random subset (0: the whole set).
        eval_on: ``test`` (the split's test set), ``train`` (its train set) or ``simple_test``.
        split_seed: seed of the simple split's random 80/20 draw.
        """
        if model not in ("lstm", "transformer"):
            raise ValueError(f"model must be lstm or transformer, got {model!r}")
        if size not in PRESETS:
            raise ValueError(f"size must be one of {', '.join(PRESETS)}, got {size!r}")
        if eval_on not in EVAL_ON:
            raise ValueError(f"eval_on must be one of {', '.join(EVAL_ON)}, got {eval_on!r}")
        preset = PRESETS[size][model]
        given = {"hidden": hidden, "layers": layers, "embedding": embedding, "heads": heads, "ff": ff}
        for k, v in given.items():
            if int(v) < 0:  # 0 means the preset's; a negative size would run the preset's and be recorded as given
                raise ValueError(f"{k} must be a size >= 1 (or 0: the preset's), got {v}")
        self.arch = {k: int(v) if int(v) > 0 else preset[k] for k, v in given.items()}
        self.arch["dropout"] = float(dropout) if float(dropout) >= 0 else preset["dropout"]
        self.model, self.size, self.eval_size, self.eval_on = model, size, int(eval_size), eval_on
        self.train_idx, test_idx = scan_data.split_indices(self.split, int(split_seed))
        self.eval_idx = {
            "test": test_idx,
            "train": self.train_idx,
            "simple_test": scan_data.split_indices("simple", int(split_seed))[1],
        }[eval_on]

    def build_model(self) -> nn.Module:
        return build(self.model, **self.arch)

    def base_recipe(self) -> Recipe:
        """Adam, constant lr 3e-3, batch 128, 2,000 steps, gradient-norm clip 5 (:data:`RECIPE`)."""
        return RECIPE

    def batches(self, split: str, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """``(src, tgt)`` pairs (see :mod:`sample_tasks.scan_data`); train: uniform draws with replacement from the
        split's train set; eval: the ``eval_on`` set (or a seeded subset of ``eval_size``) in batches."""
        if split == "train":
            while True:
                pick = torch.randint(0, len(self.train_idx), (batch_size,), generator=generator)
                yield scan_data.batch(self.train_idx[pick])
        idx = self.eval_idx
        if 0 < self.eval_size < len(idx):
            idx = idx[torch.randperm(len(idx), generator=generator)[: self.eval_size]].sort().values
        for start in range(0, len(idx), batch_size):
            yield scan_data.batch(idx[start : start + batch_size])

    def loss(self, model, batch) -> Tensor:
        src, tgt = batch
        return sequence_loss(model(src, tgt), tgt)

    def evaluate(self, model, batches) -> dict[str, float]:
        exact = tokens = positions = n = 0
        loss = 0.0
        for src, tgt in batches:
            pred = model(src, max_len=tgt.shape[1])
            valid = tgt != scan_data.TGT_PAD
            right = (pred == tgt) & valid
            exact += int((right == valid).all(1).sum())
            tokens += int(right.sum())
            positions += int(valid.sum())
            loss += float(sequence_loss(model(src, tgt), tgt)) * tgt.shape[0]
            n += tgt.shape[0]
        return {"accuracy": exact / n, "token_accuracy": tokens / positions, "loss": loss / n}


class ScanSimpleTask(ScanTask):
    """The simple split: a random 80/20 split of all commands (the base network's data)."""

    name = "scan-simple"
    split = "simple"


class ScanJumpTask(ScanTask):
    """Add primitive "jump": train without "jump" but the bare command; test: the other commands with "jump"."""

    name = "scan-jump"
    split = "jump"


class ScanTurnLeftTask(ScanTask):
    """Add primitive "turn left": the jump split's rule for the phrase "turn left"."""

    name = "scan-turn-left"
    split = "turn_left"


class ScanLengthTask(ScanTask):
    """Length: train on commands with at most 22 actions, test on 24..48."""

    name = "scan-length"
    split = "length"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train a SCAN base network on the simple split and save its state_dict.")
    p.add_argument("--model", choices=("lstm", "transformer"), default="lstm")
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=tuple(PRESETS), default="cpu", help="cpu (default) or paper sizes")
    for arg in ("hidden", "layers", "embedding", "heads", "ff"):
        p.add_argument(f"--{arg}", type=int, default=0, help="override the preset (pass the same --task-arg to maskprobe)")
    p.add_argument("--dropout", type=float, default=-1.0)
    p.add_argument("--steps", type=int, default=RECIPE.steps)
    p.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    p.add_argument("--lr", type=float, default=RECIPE.lr, help="Adam learning rate, constant (the paper's code: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-size", type=int, default=0, help="simple-split test commands to score at the end (0: all 4,182)")
    from sample_tasks.arithmetic import add_device_arg, device_from

    add_device_arg(p)
    args = p.parse_args(argv)
    device = device_from(p, args)
    from maskprobe.atomic import atomic_write
    from maskprobe.learning.training import evaluate_task

    arch = {k: getattr(args, k) for k in ("size", "hidden", "layers", "embedding", "heads", "ff", "dropout")}
    task = ScanSimpleTask(model=args.model, eval_size=args.eval_size, **arch)
    t0 = time.perf_counter()

    def progress(step: int, loss: float) -> None:
        print(f"step {step} loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    recipe = replace(task.base_recipe(), steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    model = fit(task, recipe, seed=args.seed, callback=progress, log_every=250, device=device)
    atomic_write(args.out, lambda tmp: torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp))
    m = evaluate_task(model, task, device=device)
    print(
        f"saved {args.out} ({time.perf_counter() - t0:.0f} s); simple-split test: accuracy {m['accuracy']:.4f}, "
        f"token accuracy {m['token_accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
