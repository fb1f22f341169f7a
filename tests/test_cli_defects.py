"""Issue 14: one test (or a small group) per reported defect, each failing before its fix.

Every refusal must end with the documented exit code, one line on stderr (``maskprobe: error: ...``), no
traceback, and no file lost or left behind. Runs in-process through :func:`maskprobe.cli.run` on a 42-16x2-20
add/mul FNN; two cases need a real process (fd 1 of a plugin, ``-X importtime``).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest_reliability import HIDDEN, make_checkpoint, one_thread, refused, train_argv  # noqa: F401 (one_thread: autouse fixture)
from safetensors.torch import load_file, save_file

from maskprobe.cli import run
from maskprobe.masks.maskfile import load_masks

BAD = 2
TASK = ["--task", "arith-add", "--task-arg", f"hidden={HIDDEN}", "--task-arg", "eval_size=64"]
NOISY = '''
import os
from sample_tasks.arithmetic import AddTask

class Noisy(AddTask):
    """Prints from every hook, through sys.stdout and straight to fd 1."""
    name = "noisy"
    def __init__(self, hidden: str = "16,16", eval_size: int = 64):
        print("noisy: __init__")
        os.write(1, b"noisy: raw write to fd 1\\n")
        super().__init__(hidden=hidden, eval_size=eval_size)
    def loss(self, model, batch):
        print("noisy: loss")
        return super().loss(model, batch)
    def evaluate(self, model, batches):
        print("noisy: evaluate")
        return super().evaluate(model, batches)
'''
TYPED = """
from sample_tasks.arithmetic import AddTask

class Typed(AddTask):
    name = "typed"
    def __init__(self, hidden: str = "16,16", eval_size: int = 64, cfg: dict | None = None, sizes: list[int] = (),
                 weights: dict[str, float] | None = None):
        super().__init__(hidden=hidden, eval_size=eval_size)
        self.cfg, self.sizes, self.weights = cfg, sizes, weights
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("issue14")
    make_checkpoint(root / "c.pt", steps=20)
    (root / "noisy.py").write_text(NOISY)
    (root / "typed.py").write_text(TYPED)
    for name, seed in (("a", "0"), ("b", "1")):
        assert run(train_argv(root / "c.pt", root / f"{name}.safetensors", "--seed", seed)) == 0
    return root


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. train --force must never overwrite its own checkpoint --------------------------------------------


def _sharded(folder: Path, state_dict: dict) -> Path:
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state_dict.items()}, folder / "model-00001.safetensors")
    index = {"weight_map": dict.fromkeys(state_dict, "model-00001.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("form", ["file", "folder-out", "symlink", "hardlink", "state-file", "in-ckpt-folder", "shard"])
def test_train_never_overwrites_its_own_checkpoint(env, tmp_path, capsys, form):
    save_file({k: v.contiguous() for k, v in torch.load(env / "c.pt").items()}, tmp_path / "c.safetensors")
    raw = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").unlink()
    if form in ("in-ckpt-folder", "shard"):
        ckpt = _sharded(tmp_path / "sharded", torch.load(env / "c.pt"))
        out = ckpt / "masks" if form == "in-ckpt-folder" else ckpt / "model-00001.safetensors"
        ckpt = ckpt if form == "in-ckpt-folder" else ckpt / "model.safetensors.index.json"
    else:
        ckpt = tmp_path / ("arith-add.safetensors" if form == "folder-out" else "v.safetensors")
        ckpt.write_bytes(raw)
        out = {"file": ckpt, "folder-out": tmp_path, "state-file": tmp_path / "v.safetensors"}.get(form)
        if form == "state-file":  # the state file beside m.safetensors is m.state.pt: here the checkpoint
            ckpt = ckpt.rename(tmp_path / "v.state.pt")
        if form in ("symlink", "hardlink"):
            out = tmp_path / "link.safetensors"
            if form == "symlink":
                out.symlink_to(ckpt)
            else:
                os.link(ckpt, out)
    before = files(tmp_path)
    needle = "inside the checkpoint folder" if form == "in-ckpt-folder" else "refusing to overwrite it"
    refused(capsys, train_argv(ckpt, out, "--force"), needle)
    assert files(tmp_path) == before, "the checkpoint or its folder changed"


# ---- 2. a plugin's prints never reach the JSON on stdout -------------------------------------------------


def test_plugin_prints_do_not_break_json_in_a_real_process(env, tmp_path):
    argv = train_argv(env / "c.pt", tmp_path / "m.safetensors", "--json", task=f"{env / 'noisy.py'}:Noisy")
    proc = subprocess.run([sys.executable, "-m", "maskprobe", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["schema"] == "maskprobe.train/1"
    assert "noisy: __init__" in proc.stderr and "noisy: raw write to fd 1" in proc.stderr


@pytest.mark.parametrize("command", ["evaluate", "compare", "tasks --check"])
def test_plugin_prints_do_not_break_json_in_process(env, capsys, command):
    noisy = f"{env / 'noisy.py'}:Noisy"
    argv = {
        "evaluate": ["evaluate", env / "c.pt", "--task", noisy, "--device", "cpu"],
        "compare": ["compare", env / "a.safetensors", env / "b.safetensors", "--checkpoint", env / "c.pt", "--task", noisy,
                    "--task", noisy, "--device", "cpu", "--quiet"],
        "tasks --check": ["tasks", "--check", noisy],
    }[command]  # fmt: skip
    capsys.readouterr()
    assert run([str(a) for a in argv] + ["--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # one JSON document, nothing else
    assert "noisy:" in captured.err and "noisy:" not in captured.out
    if command == "evaluate":  # tables still go to stdout
        assert run([str(a) for a in argv]) == 0
        captured = capsys.readouterr()
        assert "accuracy" in captured.out and "noisy:" not in captured.out


# ---- 3. one train per output at a time --------------------------------------------------------------------


def test_second_train_into_the_same_out_is_refused_and_stale_locks_do_not_block(env, tmp_path, capsys):
    from maskprobe.locking import OutputLock, lock_path

    out = tmp_path / "m.safetensors"
    with OutputLock([out]):  # another maskprobe train holds it
        line = refused(capsys, train_argv(env / "c.pt", out), "being written by another maskprobe train")
        assert f"pid {os.getpid()}" in line
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors.lock"]  # its lock, nothing of ours
    assert list(tmp_path.iterdir()) == [], "the lock file is removed when its run ends"
    lock_path(out).write_text("999999\n")  # left by a killed run: the kernel released its flock
    assert run(train_argv(env / "c.pt", out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_two_real_processes_one_refuses(env, tmp_path):
    """A process holds the lock (as a running train does) while a real ``maskprobe train`` starts."""
    out = tmp_path / "m.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from maskprobe.locking import OutputLock; "
                               f"lock = OutputLock([{str(out)!r}]).acquire(); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-m", "maskprobe", *train_argv(env / "c.pt", out)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "CI": "true"})  # fmt: skip
    finally:
        holder.communicate("", timeout=30)
    assert proc.returncode == BAD and proc.stderr.count("\n") == 1 and "another maskprobe train" in proc.stderr
    assert not out.exists()


# ---- 4. write errors are bad input; a failed snapshot is a warning ----------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _safetensor_full(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })')


def _torch_full(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


@pytest.mark.parametrize("writer", [_enospc, _safetensor_full])
def test_full_disk_is_one_line_bad_input_and_leaves_nothing(env, tmp_path, capsys, monkeypatch, writer):
    import safetensors.torch

    import maskprobe.atomic

    monkeypatch.setattr(safetensors.torch, "save_file", writer)
    monkeypatch.setattr(torch, "save", _torch_full)  # the state file cannot be written either
    monkeypatch.setattr(maskprobe.atomic, "_no_space", lambda folder: True)
    line = refused(capsys, train_argv(env / "c.pt", tmp_path / "new" / "deeper"), "No space left")
    assert f"cannot write {tmp_path / 'new' / 'deeper' / 'arith-add.safetensors'}" in line
    assert list(tmp_path.iterdir()) == [], "temporary files, lock or the folders this run created were left"


def test_full_disk_at_the_end_keeps_the_learned_state(env, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", _enospc)
    out = tmp_path / "m.safetensors"
    refused(capsys, train_argv(env / "c.pt", out), "--resume writes the mask")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.state.pt"]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert run(train_argv(env / "c.pt", out, "--resume")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_failed_snapshot_warns_and_training_goes_on(env, tmp_path, capsys, monkeypatch):
    real, calls = torch.save, []

    def flaky(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) >= 2:  # the first snapshot is written, every later one fails
            _torch_full()
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky)
    out = tmp_path / "m.safetensors"
    capsys.readouterr()
    assert run(train_argv(env / "c.pt", out, "--save-every", "1", steps=4)) == 0
    err = capsys.readouterr().err
    assert len(calls) == 4 and err.count("warning: snapshot at step 2 failed") == 1 and "keeps the last good" in err
    assert "Traceback" not in err and err.count("warning: snapshot") == 1, "one warning per stretch of failures"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert load_masks(out).metadata["steps"] == 4


# ---- 5. every known metadata field is type-checked --------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, problem",
    [("checkpoint", '"c.pt"', "must be a JSON object, got str"), ("task", "[1]", "must be a JSON object"),
     ("task", '{"name": 3, "ref": "arith-add"}', "'name' must be a string"), ("task", '{"ref": 7}', "'ref' must be"),
     ("density", '"dense"', "must be a JSON object"), ("density", "{oops", "is not valid JSON"),
     ("hparams", "5", "must be a JSON object"), ("steps", '"many"', "JSON integer"), ("seed", "1.5", "JSON integer"),
     ("final_loss", "true", "JSON number"), ("metric_full", "[]", "JSON object")],
)  # fmt: skip
@pytest.mark.parametrize("command", ["compare", "inspect", "evaluate"])
def test_damaged_metadata_field_is_a_one_line_error(env, tmp_path, capsys, field, value, problem, command):
    good = env / "a.safetensors"
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(good), bad, metadata={**meta, field: value})
    argv = {
        "compare": ["compare", good, bad, "--checkpoint", env / "c.pt", "--device", "cpu"],
        "inspect": ["inspect", bad],
        "evaluate": ["evaluate", env / "c.pt", *TASK, "--mask", bad, "--device", "cpu"],
    }[command]
    line = refused(capsys, argv, f"{bad}: metadata field {field!r}")
    assert problem in line


# ---- 6. --task-arg for dict and list arguments ------------------------------------------------------------


def test_task_arg_json_is_parsed_and_type_checked(env, capsys):
    from maskprobe.tasks import task_class
    from maskprobe.tasks.args import parse_task_args

    ref = f"{env / 'typed.py'}:Typed"
    refused(capsys, ["tasks", "--check", ref, "--task-arg", "cfg={bad"], "cfg='{bad' is not valid JSON")
    args = parse_task_args(ref, task_class(ref), ['cfg={"a": [1]}', "sizes=[1, 2]", 'weights={"x": 1, "y": 0.5}'])
    assert args == {"cfg": {"a": [1]}, "sizes": [1, 2], "weights": {"x": 1, "y": 0.5}}
    assert parse_task_args(ref, task_class(ref), ["sizes=3,4"]) == {"sizes": [3, 4]}  # the comma form still works
    bad = [("cfg=[1]", "not a JSON object"), ("sizes=[1, 2.5]", "2.5 is not of type int"),
           ('weights={"x": "heavy"}', "'heavy' is not of type float"), ("sizes=[1,", "not valid JSON")]  # fmt: skip
    for pair, needle in bad:
        refused(capsys, ["tasks", "--check", ref, "--task-arg", pair], needle)


# ---- 7. the batch must hold K examples --------------------------------------------------------------------


def test_batch_smaller_than_samples_is_refused(env, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    refused(capsys, train_argv(env / "c.pt", out, "--samples", "4", batch_size=3), "at least K=4 examples")
    assert list(tmp_path.iterdir()) == []
    assert run(train_argv(env / "c.pt", out, "--samples", "4", batch_size=6)) == 0  # chunks of 2 and 1: fine
    assert load_masks(out).metadata["hparams"]["samples"] == 4


# ---- 8. a torch zip named *.safetensors is read by content ------------------------------------------------


def test_torch_zip_named_safetensors_loads_by_content(env, tmp_path, capsys):
    from maskprobe.loading.checkpoints import read_state_dict

    ckpt = tmp_path / "weights.safetensors"
    ckpt.write_bytes((env / "c.pt").read_bytes())
    capsys.readouterr()
    assert run(["inspect", str(ckpt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "torch-zip"
    assert run(train_argv(ckpt, tmp_path / "out")) == 0
    assert set(read_state_dict(ckpt, mmap=True)[1]) == set(torch.load(env / "c.pt"))


def test_safetensors_header_starting_like_a_pickle_is_safetensors(tmp_path):
    """A header of 128 + 256k bytes makes the file's first byte 0x80, the pickle protocol opcode."""
    import struct

    from maskprobe.loading.checkpoints import detect_format

    path = tmp_path / "w.safetensors"
    for pad in range(256):
        save_file({"w": torch.zeros(2)}, path, metadata={"pad": "x" * pad})
        if struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 128:
            break
    assert path.read_bytes()[0] == 0x80 and detect_format(path) == "safetensors"


# ---- 9. FIFOs and symlink loops -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "loop"])
@pytest.mark.parametrize("command", ["train", "evaluate", "evaluate-mask", "inspect", "compare"])
def test_fifo_and_symlink_loop_are_one_line_errors(env, tmp_path, capsys, kind, command):
    odd = tmp_path / "odd.safetensors"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        (tmp_path / "other").symlink_to(odd)
        odd.symlink_to(tmp_path / "other")
    argv = {
        "train": train_argv(odd, tmp_path / "out"),
        "evaluate": ["evaluate", odd, *TASK],
        "evaluate-mask": ["evaluate", env / "c.pt", *TASK, "--mask", odd, "--device", "cpu"],
        "inspect": ["inspect", odd],
        "compare": ["compare", env / "a.safetensors", odd],
    }[command]
    # a reader blocked on the FIFO would hang the test (safetensors even holds the GIL while it waits): after 10 s a
    # watchdog process opens and closes the FIFO's write end, so such a reader gets EOF and the test fails instead
    watchdog = subprocess.Popen(["sh", "-c", f'sleep 10; while :; do : > "{odd}"; sleep 0.2; done']) if kind == "fifo" else None
    try:
        line = refused(capsys, argv, str(odd))
    finally:
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
    assert ("not a regular file or folder" if kind == "fifo" else "is a symlink loop") in line
    assert not (tmp_path / "out").exists()


# ---- 10. written files honour the umask ------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    from maskprobe.atomic import atomic_write, atomic_write_text
    from maskprobe.masks.maskfile import save_masks

    old = os.umask(umask)
    try:
        save_masks(tmp_path / "m.safetensors", {"w": torch.ones(3, dtype=torch.bool)})
        atomic_write_text(tmp_path / "t.txt", "x")
        atomic_write(tmp_path / "s.pt", lambda tmp: torch.save({"x": 1}, tmp))
    finally:
        os.umask(old)
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p.name


# ---- 11. --out with another file suffix -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".json", ".npz"])
def test_out_with_a_file_suffix_is_refused(env, tmp_path, capsys, suffix):
    refused(capsys, train_argv(env / "c.pt", tmp_path / f"m{suffix}"), "NAME.safetensors")
    assert list(tmp_path.iterdir()) == []


# ---- 12. one guarded shard-index reader ----------------------------------------------------------------


def test_shard_index_reader_keeps_shards_inside_the_folder(env, tmp_path):
    import inspect

    import maskprobe.learning.sharded
    from maskprobe.errors import CheckpointError
    from maskprobe.loading.checkpoints import read_state_dict, safetensors_files

    state = torch.load(env / "c.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "outside.safetensors")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    index = {"weight_map": dict.fromkeys(state, "../outside.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for path in (folder, folder / "model.safetensors.index.json"):
        with pytest.raises(CheckpointError, match="is not a file name in"):
            read_state_dict(path, mmap=True)
    good = _sharded(tmp_path / "good", state)
    assert safetensors_files(good) == [(good / "model-00001.safetensors").resolve()]
    assert "weight_map" not in inspect.getsource(maskprobe.learning.sharded), "sharded.py parses the index itself again"


# ---- 13. evaluate puts the model on the device without --mask too -----------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
def test_evaluate_moves_the_model_to_the_device(env, capsys, monkeypatch, with_mask):
    import maskprobe.devices
    import maskprobe.measure.evaluation

    seen = []

    def fake_evaluate(module, task, overrides=None, *, device="cpu", batch_size=1024, batches=None):
        seen.append((next(module.parameters()).device, torch.device(device)))
        return {"accuracy": 1.0}

    monkeypatch.setattr(maskprobe.devices, "resolve_device", lambda name: torch.device("meta"))  # stands in for cuda
    monkeypatch.setattr(maskprobe.measure.evaluation, "evaluate_task", fake_evaluate)
    mask = ["--mask", str(env / "a.safetensors")] if with_mask else []
    assert run(["evaluate", str(env / "c.pt"), *TASK, *mask, "--device", "cuda", "--json"]) == 0, capsys.readouterr().err
    assert seen and all(model.type == dev.type == "meta" for model, dev in seen)


def test_evaluate_on_the_cpu_still_works(env, capsys):
    capsys.readouterr()
    assert run(["evaluate", str(env / "c.pt"), *TASK, "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["task"] == "arith-add"


# ---- rough edges: completion, compare labels ---------------------------------------------------------------


def test_completion_is_offered_and_the_cli_module_imports_no_torch(capsys):
    assert run(["--help"]) == 0
    assert "--install-completion" in capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import maskprobe.cli"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "torch" not in proc.stderr


def test_compare_refuses_the_same_file_twice(env, tmp_path, capsys):
    link = tmp_path / "same.safetensors"
    link.symlink_to(env / "a.safetensors")
    for other in (env / "a.safetensors", link):
        refused(capsys, ["compare", env / "a.safetensors", other], "is given twice")


def test_compare_labels_masks_of_one_task_apart(env, capsys):
    argv = ["compare", str(env / "a.safetensors"), str(env / "b.safetensors"), "--checkpoint", str(env / "c.pt"), "--device",
            "cpu", "--quiet"]  # fmt: skip
    capsys.readouterr()
    assert run([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(m["task"], m["label"]) for m in report["masks"]] == [("arith-add", "arith-add#1"), ("arith-add", "arith-add#2")]
    assert report["ablation"]["tasks"] == ["arith-add#1", "arith-add#2"]
    assert run(argv) == 0
    tables = capsys.readouterr().out
    assert "arith-add#1" in tables and "arith-add#2" in tables
