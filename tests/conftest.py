"""Shared fixtures: tiny checkpoints made on the fly (nothing is downloaded, nothing large is committed)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CI", "true")  # plain progress lines, never a live display, in every test
torch.set_num_threads(min(2, torch.get_num_threads()))
# a fixed thread count in this process and the CLI subprocesses it starts: maskprobe's default follows the load
# (maskprobe.devices.default_threads), and two runs compared bitwise must use the same count
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

TINY_HIDDEN = "24,24"


@pytest.fixture(scope="session")
def tiny_addmul(tmp_path_factory):
    """A 42-24x2-20 add/mul FNN trained briefly, saved as a torch.save state dict.

    Returns ``(path, model, hidden)``.
    """
    from sample_tasks.arithmetic import AddMulTask, train_base

    task = AddMulTask(hidden=TINY_HIDDEN, eval_size=512)
    model = train_base(task, steps=300, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "addmul.pt"
    torch.save(model.state_dict(), path)
    return path, model, TINY_HIDDEN
