"""Helpers shared by the reliability tests (resume, numerical faults, bad input, determinism): a tiny
add/mul checkpoint made on the fly and the ``maskprobe train`` argument list that trains a mask on it."""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN = "16,16"


def make_checkpoint(path: Path, hidden: str = HIDDEN, steps: int = 20, shift: float = 0.0) -> Path:
    """A 42-hidden-20 FNN trained ``steps`` steps on add+mul, saved as a state dict (weights + ``shift``)."""
    from sample_tasks.arithmetic import AddMulTask, train_base

    model = train_base(AddMulTask(hidden=hidden, eval_size=64), steps=steps, seed=0)
    torch.save({k: v + shift for k, v in model.state_dict().items()}, path)
    return path


def train_argv(ckpt: Path | str, out: Path | str, *extra: str, task: str = "arith-add", hidden: str = HIDDEN,
               steps: int = 3, batch_size: int = 8) -> list[str]:  # fmt: skip
    """``train CKPT --task TASK --task-arg hidden=.. eval_size=64 --out OUT`` on the CPU, quiet, plus ``extra``."""
    return ["train", str(ckpt), "--task", task, "--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=64",
            "--out", str(out), "--steps", str(steps), "--batch-size", str(batch_size), "--device", "cpu", "--quiet",
            *extra]  # fmt: skip
