"""Hostile input, command by command: malformed arguments, files and plugins.

Every case must end with the documented exit code (2 bad input, 3 broken plugin; docs/cli.md), a message
on stderr, no traceback, no code run from a checkpoint without ``--trust-checkpoint``, and nothing left in
the output folder. Cases run in-process through :func:`maskprobe.cli.run` (it returns the exit code);
a few run as real subprocesses to cover the entry point too.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest_reliability import HIDDEN, make_checkpoint, one_thread, train_argv  # noqa: F401 (one_thread: autouse fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskprobe.cli import run
from maskprobe.errors import CheckpointError

BAD, PLUGIN = 2, 3

PLUGINS = {
    "syntax.py": "class Broken(:\n",
    "raises.py": "raise RuntimeError('plugin exploded at import')\n",
    "plugins.py": '''
import torch
from maskprobe import Task
from sample_tasks.arithmetic import AddTask

class NotATask:
    name = "x"

class NoName(AddTask):
    name = ""

class InitFails(AddTask):
    name = "init-fails"
    def __init__(self, hidden: str = "16,16"):
        raise ValueError("cannot configure")

class FiniteTrain(AddTask):
    name = "finite-train"
    def batches(self, split, batch_size, generator):
        it = super().batches(split, batch_size, generator)
        if split == "train":
            yield next(it)
            return
        yield from it

class LossNotTensor(AddTask):
    name = "loss-not-tensor"
    def loss(self, model, batch):
        return 1.0

class WrongShape(AddTask):
    """Its data does not fit the model: 7 input features instead of 42."""
    name = "wrong-shape"
    def batches(self, split, batch_size, generator):
        for x, y in super().batches(split, batch_size, generator):
            yield x[:, :7], y

class EvalNotDict(AddTask):
    name = "eval-not-dict"
    def evaluate(self, model, batches):
        return 0.5

class EvalOutOfRange(AddTask):
    name = "eval-out-of-range"
    def evaluate(self, model, batches):
        return {"accuracy": 7.0}

class BuildFails(AddTask):
    name = "build-fails"
    def build_model(self):
        raise RuntimeError("no architecture")
''',
}


class Evil:
    """A pickle that runs code when loaded: it must never run without --trust-checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    make_checkpoint(root / "c.pt", steps=10)
    make_checkpoint(root / "other.pt", steps=10, shift=1.0)  # same shapes, another hash
    make_checkpoint(root / "small.pt", hidden="8,8", steps=1)  # same names, other shapes
    for name, text in PLUGINS.items():
        (root / name).write_text(text)
    (root / "empty.pt").write_bytes(b"")
    (root / "random.pt").write_bytes(os.urandom(300))
    (root / "text.safetensors").write_text("hello, I am not a tensor file\n")
    (root / "truncated.pt").write_bytes((root / "c.pt").read_bytes()[:500])
    (root / "folder").mkdir()
    (root / "dir.safetensors").mkdir()
    (root / "zip.pt").write_bytes(b"PK\x03\x04" + os.urandom(100))
    (root / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    torch.save({"w": Evil(root / "PWNED")}, root / "evil.pt")

    def train(out, *extra, ckpt="c.pt", hidden=HIDDEN):
        assert run(train_argv(root / ckpt, out, *extra, hidden=hidden)) == 0

    masks = root / "masks"
    train(masks / "a.safetensors")
    train(masks / "b.safetensors", "--task-arg", "hidden=16,16")
    train(masks / "excl.safetensors", "--exclude", "4.weight")
    train(masks / "other-ckpt.safetensors", ckpt="other.pt")
    train(masks / "small.safetensors", ckpt="small.pt", hidden="8,8")  # a mask of another architecture
    from maskprobe.masks.maskfile import load_masks, save_masks

    save_masks(masks / "notask.safetensors", load_masks(masks / "a.safetensors").masks, {})
    return root


TRAIN = train_argv("{R}/c.pt", "{OUT}/m.safetensors", steps=2)
OUT_AT = TRAIN.index("--out") + 1


def train_with(*replace: tuple[int, str], extra: tuple[str, ...] = ()) -> list[str]:
    argv = list(TRAIN)
    for i, v in replace:
        argv[i] = v
    return [*argv, *extra]


CASES = {
    # ---- usage ------------------------------------------------------------------------------------------
    "no-command-args": (["train"], BAD, "Missing"),
    "unknown-command": (["frobnicate"], BAD, "No such command"),
    "unknown-option": (["tasks", "--bogus"], BAD, "No such option"),
    "steps-zero": (train_with(extra=("--steps", "0")), BAD, "--steps"),
    "steps-not-int": (train_with(extra=("--steps", "many")), BAD, "--steps"),
    "batch-negative": (train_with(extra=("--batch-size", "-4")), BAD, "--batch-size"),
    "lr-nan": (train_with(extra=("--lr", "nan")), BAD, "--lr"),
    "device-unknown": (train_with(extra=("--device", "tpu")), BAD, "device"),
    "device-cuda-missing": (train_with(extra=("--device", "cuda")), BAD, "CUDA"),
    "memory-limit-garbage": (train_with(extra=("--memory-limit", "lots")), BAD, "--memory-limit"),
    "memory-too-small": (train_with(extra=("--memory-limit", "1KiB")), BAD, "would need about"),
    "save-every-negative": (train_with(extra=("--save-every", "-1")), BAD, "--save-every"),
    "task-arg-no-equals": (train_with(extra=("--task-arg", "oops")), BAD, "--task-arg 'oops'"),
    "task-arg-unknown": (train_with(extra=("--task-arg", "colour=red")), BAD, "colour"),
    "task-arg-bad-int": (train_with(extra=("--task-arg", "eval_size=ten")), BAD, "eval_size"),
    "include-nothing": (train_with(extra=("--include", "nothing.*")), BAD, "masks no parameter"),
    "model-arg-bad": (train_with(extra=("--model", "no_such_module_xyz:f")), BAD, "no_such_module_xyz"),
    "several-tasks-one-file": (train_with(extra=("--task", "arith-mul")), BAD, "folder"),
    "out-is-folder": (train_with((OUT_AT, "{R}/dir.safetensors")), BAD, "exists"),
    "out-is-folder-force": (train_with((OUT_AT, "{R}/dir.safetensors"), extra=("--force",)), BAD, "is a folder"),
    "out-under-a-file": (train_with((OUT_AT, "{R}/c.pt/sub/m.safetensors")), BAD, "not a folder"),
    # ---- checkpoints ------------------------------------------------------------------------------------
    "ckpt-missing": (train_with((1, "{R}/nope.pt")), BAD, "not found"),
    "ckpt-empty": (train_with((1, "{R}/empty.pt")), BAD, "empty"),
    "ckpt-random": (train_with((1, "{R}/random.pt")), BAD, "random.pt"),
    "ckpt-text": (train_with((1, "{R}/text.safetensors")), BAD, "text.safetensors"),
    "ckpt-truncated": (train_with((1, "{R}/truncated.pt")), BAD, "truncated.pt"),
    "ckpt-folder": (train_with((1, "{R}/folder")), BAD, "folder"),
    "ckpt-bad-zip": (train_with((1, "{R}/zip.pt")), BAD, "zip.pt"),
    "ckpt-huge-header": (train_with((1, "{R}/huge-header.safetensors")), BAD, "huge-header"),
    "ckpt-pickle-code": (train_with((1, "{R}/evil.pt")), BAD, "--trust-checkpoint"),
    "ckpt-wrong-architecture": (train_with((1, "{R}/small.pt")), BAD, "does not fit"),
    # ---- plugins ----------------------------------------------------------------------------------------
    "task-unknown": (train_with((3, "no-such-task")), BAD, "unknown task"),
    "task-module-missing": (train_with((3, "no_such_pkg_xyz:Task")), PLUGIN, "no_such_pkg_xyz"),
    "task-file-missing": (train_with((3, "{R}/nope.py:T")), PLUGIN, "not found"),
    "task-syntax-error": (train_with((3, "{R}/syntax.py:Broken")), PLUGIN, "syntax.py"),
    "task-import-raises": (train_with((3, "{R}/raises.py:T")), PLUGIN, "plugin exploded"),
    "task-attr-missing": (train_with((3, "{R}/plugins.py:Nope")), PLUGIN, "no attribute"),
    "task-not-a-task": (train_with((3, "{R}/plugins.py:NotATask")), PLUGIN, "not a subclass"),
    "task-no-name": (train_with((3, "{R}/plugins.py:NoName")), PLUGIN, "no name"),
    "task-init-fails": (train_with((3, "{R}/plugins.py:InitFails")), PLUGIN, "cannot configure"),
    "task-build-fails": (train_with((3, "{R}/plugins.py:BuildFails")), PLUGIN, "build_model"),
    "task-finite-train": (train_with((3, "{R}/plugins.py:FiniteTrain"), extra=("--steps", "5")), PLUGIN, "endless"),
    "task-loss-not-tensor": (train_with((3, "{R}/plugins.py:LossNotTensor")), PLUGIN, "scalar float tensor"),
    "task-data-does-not-fit": (train_with((3, "{R}/plugins.py:WrongShape")), PLUGIN, "fit this model"),
    "task-eval-not-dict": (train_with((3, "{R}/plugins.py:EvalNotDict")), PLUGIN, "evaluate() must return"),
    "task-eval-out-of-range": (train_with((3, "{R}/plugins.py:EvalOutOfRange")), PLUGIN, "outside its range"),
    # ---- compare ----------------------------------------------------------------------------------------
    "compare-one-mask": (["compare", "{R}/masks/a.safetensors"], BAD, "at least two"),
    "compare-missing": (["compare", "{R}/masks/a.safetensors", "{R}/nope.safetensors"], BAD, "not found"),
    "compare-garbage": (["compare", "{R}/masks/a.safetensors", "{R}/text.safetensors"], BAD, "text.safetensors"),
    "compare-checkpoint-as-mask": (["compare", "{R}/masks/a.safetensors", "{R}/c.pt"], BAD, "c.pt"),
    "compare-other-selection": (["compare", "{R}/masks/a.safetensors", "{R}/masks/excl.safetensors"], BAD,
                                "different parameters"),
    "compare-other-architecture": (["compare", "{R}/masks/a.safetensors", "{R}/masks/small.safetensors"], BAD, "shape"),
    "compare-other-checkpoint": (["compare", "{R}/masks/a.safetensors", "{R}/masks/other-ckpt.safetensors"], BAD,
                                 "--allow-mismatch"),
    "compare-ablation-wrong-ckpt": (["compare", "{R}/masks/a.safetensors", "{R}/masks/b.safetensors", "--checkpoint",
                                     "{R}/other.pt", "--device", "cpu"], BAD, "another checkpoint"),
    "compare-ablation-small-ckpt": (["compare", "{R}/masks/a.safetensors", "{R}/masks/b.safetensors", "--checkpoint",
                                     "{R}/small.pt", "--device", "cpu", "--allow-mismatch"], BAD, "does not fit"),
    "compare-task-count": (["compare", "{R}/masks/a.safetensors", "{R}/masks/b.safetensors", "--checkpoint", "{R}/c.pt",
                            "--task", "arith-add"], BAD, "one --task per mask"),
    "compare-no-task-recorded": (["compare", "{R}/masks/a.safetensors", "{R}/masks/notask.safetensors", "--checkpoint",
                                  "{R}/c.pt", "--device", "cpu"], BAD, "records no task"),
    "compare-threshold-needs-ckpt": (["compare", "{R}/masks/a.safetensors", "{R}/masks/b.safetensors", "--min-specialize",
                                      "0.5"], BAD, "needs --checkpoint"),
    # ---- evaluate ---------------------------------------------------------------------------------------
    "evaluate-invert-without-mask": (["evaluate", "{R}/c.pt", "--task", "arith-add", "--task-arg", f"hidden={HIDDEN}",
                                      "--invert"], BAD, "--invert needs --mask"),
    "evaluate-mask-other-ckpt": (["evaluate", "{R}/c.pt", "--task", "arith-add", "--task-arg", f"hidden={HIDDEN}",
                                  "--mask", "{R}/masks/other-ckpt.safetensors", "--device", "cpu"], BAD, "--allow-mismatch"),
    "evaluate-mask-other-arch": (["evaluate", "{R}/c.pt", "--task", "arith-add", "--task-arg", f"hidden={HIDDEN}",
                                  "--mask", "{R}/masks/small.safetensors", "--allow-mismatch"], BAD, "another model"),
    "evaluate-mask-garbage": (["evaluate", "{R}/c.pt", "--task", "arith-add", "--task-arg", f"hidden={HIDDEN}",
                               "--mask", "{R}/random.pt"], BAD, "random.pt"),
    "evaluate-ckpt-pickle": (["evaluate", "{R}/evil.pt", "--task", "arith-add"], BAD, "--trust-checkpoint"),
    # ---- inspect ----------------------------------------------------------------------------------------
    "inspect-missing": (["inspect", "{R}/nope.pt"], BAD, "not found"),
    "inspect-random": (["inspect", "{R}/random.pt"], BAD, "random.pt"),
    "inspect-folder": (["inspect", "{R}/folder"], BAD, "folder"),
    "inspect-pickle": (["inspect", "{R}/evil.pt"], BAD, "--trust-checkpoint"),
    "inspect-bad-task": (["inspect", "{R}/c.pt", "--task", "{R}/raises.py:T"], PLUGIN, "plugin exploded"),
    # ---- demo -------------------------------------------------------------------------------------------
    "demo-hidden-garbage": (["demo", "--out", "{OUT}/demo", "--hidden", "wide", "--device", "cpu", "--quiet"], BAD,
                            "--hidden"),
    "demo-hidden-empty": (["demo", "--out", "{OUT}/demo", "--hidden", ",", "--device", "cpu", "--quiet"], BAD, "--hidden"),
    "demo-out-is-file": (["demo", "--out", "{R}/c.pt", "--device", "cpu", "--quiet"], BAD, "c.pt"),
    "demo-steps-zero": (["demo", "--out", "{OUT}/demo", "--steps", "0", "--quiet"], BAD, "--steps"),
}  # fmt: skip


WITHOUT_CUDA = {"device-cuda-missing"}  # run as on a machine without CUDA, whatever this one has


@pytest.mark.parametrize("case", list(CASES))
def test_cli_bad_input_matrix(env, tmp_path, capsys, monkeypatch, case):
    argv, expected, needle = CASES[case]
    if case in WITHOUT_CUDA:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.replace("{R}", str(env)).replace("{OUT}", str(out)) for a in argv]
    before = sorted(p.name for p in env.iterdir())
    capsys.readouterr()
    code = run(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    assert code == expected, f"{case}: exit {code}, expected {expected}: {captured.err}"
    assert needle in text, f"{case}: {needle!r} not in {captured.err!r}"
    assert list(out.rglob("*")) == [], f"{case} left files: {list(out.rglob('*'))}"
    assert sorted(p.name for p in env.iterdir()) == before, f"{case} wrote beside its inputs"
    assert not (env / "PWNED").exists(), "code from a checkpoint ran without --trust-checkpoint"


def test_existing_mask_is_not_overwritten_without_force(env, tmp_path, capsys):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"precious")
    code = run([a.replace("{R}", str(env)).replace("{OUT}", str(tmp_path)) for a in TRAIN])
    assert code == BAD and "--force" in capsys.readouterr().err
    assert target.read_bytes() == b"precious"


def test_demo_does_not_overwrite_without_force(env, tmp_path, capsys):
    (tmp_path / "addmul.pt").write_bytes(b"precious")
    argv = ["demo", "--out", str(tmp_path), "--hidden", "4", "--base-steps", "1", "--steps", "1", "--device", "cpu", "--quiet"]
    code = run(argv)
    assert code == BAD and "--force" in capsys.readouterr().err
    assert (tmp_path / "addmul.pt").read_bytes() == b"precious"
    assert run([*argv, "--force", "--json"]) == 0 and (tmp_path / "addmul.pt").read_bytes() != b"precious"


def test_broken_entry_point_is_listed_not_raised(monkeypatch, capsys):
    import maskprobe.tasks.plugins as tasks_mod

    class BrokenEP:
        name, value, dist = "broken", "nowhere_xyz:Task", None

        def load(self):
            raise ImportError("No module named 'nowhere_xyz'")

    real = tasks_mod._entry_points
    monkeypatch.setattr(tasks_mod, "_entry_points", lambda: {**real(), "broken": BrokenEP()})
    capsys.readouterr()
    assert run(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "nowhere_xyz" in out and "Traceback" not in out
    code = run(["train", "x.pt", "--task", "broken", "--out", "o.safetensors"])
    assert code == PLUGIN and "nowhere_xyz" in capsys.readouterr().err


def test_allow_mismatch_gives_the_partial_answer_where_it_means_something(env, capsys):
    """Same shapes, another checkpoint's hash: the overlap is still defined, so --allow-mismatch lets it through."""
    masks = env / "masks"
    assert run(["compare", str(masks / "a.safetensors"), str(masks / "other-ckpt.safetensors"), "--allow-mismatch",
                "--json"]) == 0  # fmt: skip
    assert run(["evaluate", str(env / "c.pt"), "--task", "arith-add", "--task-arg", f"hidden={HIDDEN}", "--mask",
                str(masks / "other-ckpt.safetensors"), "--allow-mismatch", "--device", "cpu", "--json"]) == 0  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [["train", "{R}/random.pt", "--task", "arith-add", "--out", "{OUT}/m.safetensors"],
     ["train", "{R}/c.pt", "--task", "{R}/raises.py:T", "--out", "{OUT}/m.safetensors"],
     ["compare", "{R}/text.safetensors", "{R}/random.pt"]],
    ids=["checkpoint", "plugin", "compare"],
)  # fmt: skip
def test_real_process_prints_one_line_and_no_traceback(env, tmp_path, argv):
    argv = [a.replace("{R}", str(env)).replace("{OUT}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "maskprobe", *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CI": "true"})  # fmt: skip
    assert proc.returncode in (BAD, PLUGIN)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("maskprobe: error:")
    assert proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_checkpoint_reader_fuzz(env, tmp_path, data):
    """Random, truncated or corrupted checkpoint bytes: CheckpointError, never another exception or code run."""
    from maskprobe.loading.checkpoints import read_state_dict

    raw = bytearray((env / data.draw(st.sampled_from(["c.pt", "evil.pt", "masks/a.safetensors"]))).read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    else:
        raw = bytearray(data.draw(st.binary(max_size=400)))
    path = tmp_path / "fuzz.pt"
    path.write_bytes(bytes(raw))
    try:
        read_state_dict(path)
    except CheckpointError:
        pass
    assert not (env / "PWNED").exists()
