"""Helpers shared by the reliability tests (resume, numerical faults, bad input, determinism): a tiny
add/mul checkpoint made on the fly and the ``maskprobe train`` argument list that trains a mask on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from maskprobe.cli import run

HIDDEN = "16,16"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for the module (import this fixture into a test module to use it).

    The tiny models here gain nothing from threads, and on a shared 2-core machine two OpenMP threads that
    spin-wait for each other made the same test take 2.6 s or 27 s from run to run.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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


def refused(capsys, argv, *needles, code=2) -> str:
    """Run ``argv``; assert the exit code and one ``maskprobe: error:`` line holding every needle; return it."""
    capsys.readouterr()
    got = run([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert got == code, f"exit {got}, expected {code}: {captured.err}"
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and lines[0].startswith("maskprobe: error:"), captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
