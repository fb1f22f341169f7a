"""Interrupt a real ``maskprobe train`` subprocess (SIGINT, SIGTERM, SIGKILL) and resume it.

The contract (issue 4, docs/reliability.md): a signal stops the run at a step boundary, saves the state
beside the output and exits 130/143; ``--resume`` continues it, and on the CPU with a fixed seed the final
mask is bitwise identical to an uninterrupted run's. ``--save-every N`` bounds what a SIGKILL loses.

The tests wait for the first periodic snapshot (proof that training is under way) before signalling, so
they do not depend on the machine's speed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest_reliability import make_checkpoint, one_thread, train_argv  # noqa: F401 (one_thread: autouse fixture)
from safetensors.torch import load_file

from maskprobe.masks.maskfile import load_masks

STEPS = 400
SAVE_EVERY = 5
ENV = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("resume") / "c.pt", steps=50)


def train_cmd(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "maskprobe", *train_argv(ckpt, out, "--seed", "3", *extra, steps=STEPS)]


def run_cmd(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory) -> Path:
    """The uninterrupted run, in this process (a subprocess start costs seconds on a busy machine)."""
    from maskprobe.cli import run

    out = tmp_path_factory.mktemp("ref") / "m.safetensors"
    assert run(train_cmd(ckpt, out)[3:]) == 0
    return out


def state_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def start_and_wait_for_snapshot(cmd: list[str], state: Path, min_step: int = SAVE_EVERY) -> subprocess.Popen:
    """Start ``cmd`` and return once its periodic snapshot shows at least ``min_step`` steps."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    seen = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"train ended (rc {proc.returncode}) before its snapshot: {proc.stderr.read()}")
        stamp = state.stat().st_mtime_ns if state.exists() else None
        if stamp is not None and stamp != seen:  # load only a new snapshot: polling must not starve the run
            seen = stamp
            if state_step(state) >= min_step:  # atomic writes: an existing file is whole
                return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no snapshot within 60 s")


def assert_same_mask(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    ma, mb = load_masks(a).metadata, load_masks(b).metadata
    for key in ("steps", "final_loss", "history", "density", "metric_masked", "hparams", "seed", "task"):
        assert ma[key] == mb[key], key
    steps = [row[0] for row in ma["history"]]  # the whole run's progress rows, the resumed part included
    assert steps == sorted(steps) and steps[-1] == ma["steps"] and len(steps) >= 2


def interrupt(ckpt: Path, tmp_path: Path, sig: int) -> tuple[Path, Path, str]:
    """Start a run, signal it once its first snapshot exists; returns (out, state, stderr)."""
    out = tmp_path / "m.safetensors"
    state = tmp_path / "m.state.pt"
    proc = start_and_wait_for_snapshot(train_cmd(ckpt, out, "--save-every", str(SAVE_EVERY)), state)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    return out, state, err


def in_process(cmd: list[str], capsys) -> tuple[int, str]:
    from maskprobe.cli import run

    capsys.readouterr()
    code = run(cmd[3:])  # drop "python -m maskprobe"
    return code, capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_state_and_resume_is_bitwise_identical(ckpt, reference, tmp_path, capsys, sig):
    out, state, err = interrupt(ckpt, tmp_path, sig)
    assert "Traceback" not in err
    assert "--resume" in err and str(state) in err  # tells the user how to continue
    assert not out.exists()
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert 0 < saved["step"] < STEPS
    assert set(saved["logits"]) == {"0.weight", "2.weight", "4.weight"}
    assert saved["optimizer"]["state"], "Adam moments must be saved"
    # what a resume must match: the checkpoint's identity (a SHA-256 of its weights, docs/mask-format.md) and the settings
    assert re.search(r"\b[0-9a-f]{64}\b", saved["checkpoint_sha256"]) and "beta" in saved["hparams"]
    if sig == signal.SIGTERM:  # resume in a fresh process once, in this one otherwise: both must be identical
        done = run_cmd(train_cmd(ckpt, out, "--resume"))
        assert done.returncode == 0, done.stderr
    else:
        code, err = in_process(train_cmd(ckpt, out, "--resume"), capsys)
        assert code == 0, err
    assert not state.exists(), "the state file is removed once the mask is saved"
    assert_same_mask(out, reference)


def test_interrupted_state_is_protected_and_checked_on_resume(ckpt, tmp_path, capsys):
    out, state, _ = interrupt(ckpt, tmp_path, signal.SIGINT)
    before = state.read_bytes()
    # without --resume or --force the interrupted run is not overwritten
    code, err = in_process(train_cmd(ckpt, out), capsys)
    assert code == 2 and "--resume" in err and "--force" in err
    # a resume with other settings, selection or checkpoint is refused, not silently mixed
    code, err = in_process([*train_cmd(ckpt, out, "--resume"), "--beta", "0.5"], capsys)
    assert code == 2 and "other settings" in err
    code, err = in_process([*train_cmd(ckpt, out, "--resume"), "--exclude", "4.weight"], capsys)
    assert code == 2 and "--include/--exclude" in err
    other = tmp_path / "other.pt"
    sd = torch.load(ckpt, weights_only=True)
    torch.save({k: v + 1 for k, v in sd.items()}, other)
    code, err = in_process(train_cmd(other, out, "--resume"), capsys)
    assert code == 2 and "checkpoint" in err
    assert "Traceback" not in err
    assert state.read_bytes() == before and not out.exists()


def test_sigkill_loses_at_most_save_every_steps_and_resumes_identically(ckpt, reference, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    state = tmp_path / "m.state.pt"
    proc = start_and_wait_for_snapshot(train_cmd(ckpt, out, "--save-every", str(SAVE_EVERY)), state, min_step=2 * SAVE_EVERY)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    step = state_step(state)  # loadable: the snapshot was written atomically even though the process died
    assert step >= 2 * SAVE_EVERY and step % SAVE_EVERY == 0 and step < STEPS
    code, err = in_process(train_cmd(ckpt, out, "--resume", "--save-every", str(SAVE_EVERY)), capsys)
    assert code == 0, err
    assert_same_mask(out, reference)
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp"))
    assert left == ["m.safetensors"]
