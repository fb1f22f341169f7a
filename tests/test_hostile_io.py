"""Issue 19, the hostile sweep's signals, hangs and exit codes: every phase stops on SIGINT/SIGTERM within seconds
with one line on stderr and keeps what training learned; files that are not regular files, huge numbers and
ranges are refused with one line (exit 2), never a hang or exit 70.

The signal tests run ``maskprobe`` as a real process with a task plugin (written here) that waits forever in the
phase under test and touches a marker file when it gets there, so the signal arrives in that phase and nowhere
else; without the fix such a process would never exit (the test's own timeout would fail it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_reliability import make_checkpoint, one_thread  # noqa: F401

from maskprobe.errors import EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGTERM, BadInputError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and FIFOs")

SLOW = '''
import os, pathlib, time
from sample_tasks.arithmetic import AddTask


class Slow(AddTask):
    """arith-add that waits in the phase $SLOW_PHASE (touching $SLOW_MARKER when it gets there)."""

    name = "slow-add"

    def __init__(self, hidden: str = "16,16", eval_size: int = 64):
        super().__init__(hidden=hidden, eval_size=eval_size)
        self.phase, self.marker = os.environ.get("SLOW_PHASE", ""), os.environ.get("SLOW_MARKER", "")
        self.losses = 0

    def _wait(self, phase, forever=True):
        if self.phase == phase:
            pathlib.Path(self.marker).touch()
            while True:
                time.sleep(0.05)
                if not forever:
                    return

    def build_model(self):
        self._wait("load")
        return super().build_model()

    def setup(self, context):
        self._wait("setup")

    def batches(self, split, batch_size, generator):
        self._wait("data")
        return super().batches(split, batch_size, generator)

    def loss(self, model, batch):
        self.losses += 1
        if self.losses > 1:  # inside the first step
            self._wait("step")
            self._wait("steps", forever=False)
        return super().loss(model, batch)

    def evaluate(self, model, batches):
        if not model.overrides:  # the unmasked network: train's final evaluation, evaluate's and compare's
            self._wait("evaluate")
        return super().evaluate(model, batches)
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile_io")
    make_checkpoint(root / "c.pt")
    (root / "slow.py").write_text(SLOW)
    return root


def _maskprobe(env: Path, argv: list[str], phase: str, signals: list[int], tmp_path: Path) -> tuple[int, str, float]:
    """Run ``maskprobe ARGV`` until the plugin reaches ``phase``, send ``signals`` (0.3 s apart); return the exit
    code, stderr and the seconds from the first signal to the exit."""
    marker = tmp_path / "reached"
    marker.unlink(missing_ok=True)
    environ = {**os.environ, "CI": "true", "SLOW_PHASE": phase, "SLOW_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "maskprobe", *argv], cwd=env, env=environ, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240  # the process's start (torch's import) on a loaded machine
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"phase {phase} never reached (rc {proc.returncode}): {proc.communicate()[1][-2000:]}")
            time.sleep(0.1)
        time.sleep(0.3)
        t0 = time.monotonic()
        for i, s in enumerate(signals):
            if i:
                time.sleep(0.3)
            proc.send_signal(s)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _train(out: Path, steps: int = 3) -> list[str]:
    return ["train", "c.pt", "--task", "slow.py:Slow", "--out", str(out), "--steps", str(steps), "--batch-size", "8",
            "--device", "cpu", "--quiet"]  # fmt: skip


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskprobe: "), err
    return lines[0]


# seconds from the signal to the exit: "about a second" on an idle machine; the bound leaves room for a loaded
# one (the old code never exited in these phases, or ran the whole evaluation first)
PROMPT = 20.0


@pytest.mark.parametrize("phase", ["load", "setup", "data"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_during_set_up_stops_at_once_and_leaves_nothing(env, tmp_path, phase, sig):
    out = tmp_path / "o"
    rc, err, secs = _maskprobe(env, _train(out / "m.safetensors"), phase, [sig], tmp_path)
    assert rc == (EXIT_SIGTERM if sig == signal.SIGTERM else EXIT_SIGINT) and secs < PROMPT
    line = _one_line(err)
    assert signal.Signals(sig).name in line and "nothing was written" in line
    assert not out.exists()  # no folder, no lock left behind


def test_a_signal_during_the_final_evaluation_saves_the_state_and_resume_writes_the_mask(env, tmp_path):
    out = tmp_path / "o" / "m.safetensors"
    rc, err, secs = _maskprobe(env, _train(out), "evaluate", [signal.SIGINT], tmp_path)
    assert rc == EXIT_SIGINT and secs < PROMPT
    line = _one_line(err)
    assert "step 3/3" in line and "final evaluation" in line and "state saved" in line and "--resume" in line
    assert not out.exists() and out.with_name("m.state.pt").exists()
    done = subprocess.run([sys.executable, "-m", "maskprobe", *_train(out), "--resume"], cwd=env, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "CI": "true"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.exists() and not out.with_name("m.state.pt").exists()
    from maskprobe.masks.maskfile import open_masks

    with open_masks(out) as reader:
        meta = reader.metadata
    assert meta["steps"] == 3 and meta["final_loss"] == meta["final_loss"]  # no step left to run: the loss is kept


def test_a_second_ctrl_c_inside_a_step_saves_the_state_of_the_last_whole_step(env, tmp_path):
    out = tmp_path / "o" / "m.safetensors"
    rc, err, secs = _maskprobe(env, _train(out), "step", [signal.SIGINT, signal.SIGINT], tmp_path)
    assert rc == EXIT_SIGINT and secs < PROMPT
    line = _one_line(err)
    assert "at step 0/3" in line and "state saved" in line
    import torch

    assert torch.load(out.with_name("m.state.pt"), weights_only=True)["step"] == 0


def test_sigterm_during_training_stops_at_the_next_step(env, tmp_path):
    out = tmp_path / "o" / "m.safetensors"
    rc, err, secs = _maskprobe(env, _train(out, steps=10_000), "steps", [signal.SIGTERM], tmp_path)
    assert rc == EXIT_SIGTERM and secs < PROMPT
    line = _one_line(err)
    assert "SIGTERM at step" in line and "/10000 of slow-add" in line
    assert out.with_name("m.state.pt").exists() and not out.exists()


@pytest.fixture(scope="module")
def masks(env) -> list[Path]:
    import torch

    from maskprobe.masks.maskfile import save_masks
    from sample_tasks.arithmetic import AddTask

    model = AddTask(hidden="16,16").build_model()
    paths = []
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        m = {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters() if n.endswith("weight")}
        save_masks(env / f"m{i}.safetensors", m, {"task": {"name": "slow-add"}})
        paths.append(env / f"m{i}.safetensors")
    return paths


@pytest.mark.parametrize("phase", ["setup", "evaluate"])
def test_compare_and_evaluate_stop_at_once_with_one_line(env, tmp_path, masks, phase):
    task = ["--task", "slow.py:Slow"]
    argv = ["compare", *map(str, masks), "--checkpoint", "c.pt", *task, *task, "--device", "cpu", "--quiet"]
    rc, err, secs = _maskprobe(env, argv, phase, [signal.SIGTERM], tmp_path)
    assert rc == EXIT_SIGTERM and secs < PROMPT
    assert "SIGTERM" in _one_line(err)
    rc, err, secs = _maskprobe(env, ["evaluate", "c.pt", *task, "--device", "cpu"], phase, [signal.SIGINT], tmp_path)
    assert rc == EXIT_SIGINT and secs < PROMPT
    assert "SIGINT" in _one_line(err)


def test_a_signal_while_plotting_stops_at_once(env, masks, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from maskprobe import cli
    from maskprobe.render import plots

    def slow_plot(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # never reached: the handler raises at once
        raise AssertionError("the signal was not honoured")

    monkeypatch.setattr(plots, "plot_compare", slow_plot)
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = cli.run(["compare", *map(str, masks), "--plot", str(tmp_path / "plots")])
    assert rc == EXIT_SIGTERM and time.monotonic() - t0 < 10
    assert "SIGTERM" in _one_line(capsys.readouterr().err)
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler is gone with it


# ---- item 12: --plot into a folder that cannot be made ----------------------------------------------------------


def test_plot_into_a_folder_that_cannot_be_made_is_one_line_exit_2(env, masks, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from maskprobe import cli

    (tmp_path / "file").write_text("x")
    rc = cli.run(["compare", *map(str, masks), "--plot", str(tmp_path / "file" / "plots")])
    assert rc == EXIT_BAD_INPUT
    assert "--plot" in _one_line(capsys.readouterr().err)
    from maskprobe.render.plots import plot_compare

    with pytest.raises(BadInputError, match="--plot"):  # the library's own check, for a notebook's call
        plot_compare({"masks": []}, tmp_path / "file" / "plots")


# ---- item 17: files that are not regular files, ranges that never end ------------------------------------------


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "fifo.txt"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("which", ["fifo", "zero", "loop"])
def test_data_that_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path, fifo, which):
    from maskprobe.builtin.data import read_records

    path = {"fifo": fifo, "zero": Path("/dev/zero"), "loop": tmp_path / "loop.txt"}[which]
    if which == "loop":
        os.symlink(path.name, path)  # a link to itself
    t0 = time.monotonic()
    with pytest.raises(BadInputError) as caught:  # the old code blocked on the FIFO, read /dev/zero until memory ran out
        read_records(path)
    assert time.monotonic() - t0 < 5
    assert ("symlink loop" if which == "loop" else "not a regular file") in str(caught.value)  # not "not found"


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    from maskprobe.builtin.data import read_records

    path = tmp_path / "d.csv"
    path.write_text("text,text,label\na,b,x\nc,d,y\n")
    with pytest.raises(BadInputError, match="'text' twice"):  # the old code trained on the last 'text' column
        read_records(path)


@pytest.mark.parametrize("which", ["fifo", "zero"])
def test_a_baseline_that_is_not_a_regular_file_is_one_line(env, masks, fifo, which, capsys):
    from maskprobe import cli

    path = fifo if which == "fifo" else Path("/dev/zero")
    t0 = time.monotonic()
    rc = cli.run(["compare", *map(str, masks), "--baseline", str(path), "--quiet"])
    assert rc == EXIT_BAD_INPUT and time.monotonic() - t0 < 30
    assert "not a regular file" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "flags",
    [["--seeds", "0-1000000"], ["--seeds", "0-999,1000"], ["--seed", "99999999999999999999"],
     ["--seed=-9223372036854775809"], ["--seeds", "0,99999999999999999999"]],
)  # fmt: skip
def test_huge_seeds_and_seed_ranges_are_refused_with_the_limit(env, tmp_path, capsys, flags):
    from conftest_reliability import train_argv

    from maskprobe import cli

    out = tmp_path / "o"
    t0 = time.monotonic()
    rc = cli.run(train_argv(env / "c.pt", out, *flags, steps=1))
    assert rc == EXIT_BAD_INPUT and time.monotonic() - t0 < 30  # not minutes of silence, not exit 70
    line = _one_line(capsys.readouterr().err)
    assert "at most 1,000" in line or "9223372036854775807" in line
    assert not out.exists()


def test_compare_seed_beyond_64_bits_is_one_line(env, masks, capsys):
    from maskprobe import cli

    rc = cli.run(["compare", *map(str, masks), "--seed", "99999999999999999999"])
    assert rc == EXIT_BAD_INPUT and "--seed" in _one_line(capsys.readouterr().err)


# ---- item 24: messages that say what is wrong ------------------------------------------------------------------


def test_a_tokenizer_given_as_a_file_is_not_called_a_missing_folder(tmp_path):
    from maskprobe.tasks.args import resolve_tasks

    (tmp_path / "tokenizer.json").write_text("{}")
    [(task, _)] = resolve_tasks(["text-lm"], [f"data={tmp_path / 'd.txt'}", f"tokenizer={tmp_path / 'tokenizer.json'}"])
    with pytest.raises(BadInputError, match="is a file; give the folder"):
        task._tokenizer(None)


# ---- item 25: typer's usage errors as docs/cli.md's one line ------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["train", "c.pt", "--bogus"], ["train"], ["nosuch"], ["train", "c.pt", "--steps", "abc"], ["compare", "--format"]],
)
def test_usage_errors_are_one_maskprobe_error_line(argv, capsys):
    from maskprobe import cli

    assert cli.run(argv) == EXIT_BAD_INPUT
    cap = capsys.readouterr()
    line = _one_line(cap.err)  # no "Usage:" block, no box: the wording is click's, the prefix and one line ours
    assert line.startswith("maskprobe: error: ") and "--help" in line and cap.out == ""


# ---- item 22: a dense mask's warning says how much it pruned -------------------------------------------------------


@pytest.mark.parametrize("removed, said", [(0, "nothing was pruned"), (19, "only 1.9 % was pruned (19 of 1,000 weights)")])
def test_a_dense_mask_says_how_much_was_pruned(removed, said):
    import types

    import torch

    from maskprobe.config import TrainConfig
    from maskprobe.learning.training import MaskResult
    from maskprobe.tasks import TaskRef
    from sample_tasks.arithmetic import AddTask

    mask = torch.ones(1000, dtype=torch.bool)
    mask[:removed] = False
    result = MaskResult(AddTask(hidden="8"), TaskRef("arith-add", {}), TrainConfig(), {"w": mask},
                        types.SimpleNamespace(step=10), 0.0, {}, {})  # fmt: skip
    [line] = [w for w in result.warnings() if "stayed dense" in w]
    assert said in line and ("nothing was pruned" in line) == (removed == 0)


# ---- item 11: a full disk when the lock is written ----------------------------------------------------------------


def test_a_full_disk_at_the_lock_is_one_line_and_leaves_no_lock_or_folder(env, tmp_path, monkeypatch, capsys):
    import errno

    from conftest_reliability import train_argv

    from maskprobe import cli, locking

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(locking, "_write_pid", full)
    out = tmp_path / "o"
    assert cli.run(train_argv(env / "c.pt", out / "m.safetensors", steps=1)) == EXIT_BAD_INPUT  # was exit 70
    assert os.strerror(errno.ENOSPC) in _one_line(capsys.readouterr().err)
    assert not out.exists()  # neither o/ nor an empty o/.m.safetensors.lock


# ---- item 15: zero-size weight tensors ----------------------------------------------------------------------------


@pytest.mark.parametrize("hidden, code", [("0", EXIT_BAD_INPUT), ("16,0", 0)])
def test_zero_size_weights_are_one_line_or_a_mask(tmp_path, capsys, hidden, code):
    import torch
    from conftest_reliability import train_argv

    from maskprobe import cli
    from sample_tasks.arithmetic import AddTask

    torch.save(AddTask(hidden=hidden).build_model().state_dict(), tmp_path / "z.pt")
    out = tmp_path / "o" / "m.safetensors"
    assert cli.run(train_argv(tmp_path / "z.pt", out, hidden=hidden, steps=2)) == code  # both were exit 70
    err = capsys.readouterr().err
    if code:
        assert "no weight to mask" in _one_line(err) and not out.parent.exists()
    else:
        from maskprobe.masks.maskfile import load_masks

        assert "Traceback" not in err and load_masks(out).masks["2.weight"].shape == (0, 16)


# ---- item 16: the experiment scripts with one hidden layer ------------------------------------------------------


@pytest.mark.parametrize("name", ["addmul", "double_addition"])
def test_experiments_with_one_hidden_layer_write_their_tables(tmp_path, name):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / name
    flags = ["--seeds", "0", "--hidden", "8", "--base-steps", "20", "--mask-steps", "3", "--eval-size", "64", "--threads", "1"]
    proc = subprocess.run([sys.executable, str(root / "experiments" / f"{name}.py"), *flags, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=root,
                          env={**os.environ, "CI": "true", "PYTHONPATH": str(root)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]  # was KeyError: 'hidden' after every step had run
    assert "n/a (no such layer" in (out / "results.md").read_text()


# ---- item 18: tasks --check tells bad input from a broken plugin --------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from builtin_helpers import make_model

    return make_model("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.mark.parametrize("data", ["missing", "empty"])
def test_tasks_check_calls_bad_data_bad_input_exit_2_as_train_does(gpt2, tmp_path, capsys, data):
    from maskprobe import cli

    path = tmp_path / "d.txt"
    if data == "empty":
        path.write_text("\n")
    rc = cli.run(["tasks", "--check", "text-lm", "--checkpoint", str(gpt2), "--task-arg", f"data={path}"])
    assert rc == EXIT_BAD_INPUT  # was 3: "a task plugin is broken"
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("maskprobe: error: ") and str(path) in err[-1]


# ---- item 20: betas that one file name cannot tell apart ----------------------------------------------------------


def test_betas_that_print_alike_are_refused_with_the_reason(env, tmp_path, capsys):
    from conftest_reliability import train_argv

    from maskprobe import cli

    rc = cli.run(train_argv(env / "c.pt", tmp_path / "o", "--beta", "1e-4,1.0000001e-4", steps=1))
    assert rc == EXIT_BAD_INPUT
    line = _one_line(capsys.readouterr().err)
    assert "6 significant digits" in line and "both named" not in line  # the old message suggested a fix that did not help
    assert cli.run(train_argv(env / "c.pt", tmp_path / "s", "--seeds", "10000000,10000001", "--dry-run", steps=1)) == 0


# ---- item 24: class subsets and --fix say what is wrong -----------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("transformers")
    import csv

    from builtin_helpers import labelled_rows, make_model

    root = tmp_path_factory.mktemp("cls")
    with open(root / "d.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["text", "label"])
        writer.writeheader()
        writer.writerows(labelled_rows(10))
    return make_model("bert-cls", root / "model"), root / "d.csv"


@pytest.mark.parametrize(
    "arg, needle",
    [("classes=animal,animal", "classes= names 'animal' twice"),  # was a mask named ...-only-animal+animal
     ("exclude_classes=animal,number,color", "leaves out every label")],  # was "no train example left ... (all)"
)  # fmt: skip
def test_class_subsets_that_cannot_train_say_why(classifier, tmp_path, capsys, arg, needle):
    from maskprobe import cli

    model, data = classifier
    argv = ["train", str(model), "--task", "text-classify", "--task-arg", f"data={data}", "--task-arg", arg,
            "--out", str(tmp_path / "o"), "--steps", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    assert cli.run(argv) == EXIT_BAD_INPUT
    line = _one_line(capsys.readouterr().err)
    assert needle in line and "(all)" not in line


def test_fix_matching_nothing_names_the_masked_tensors_not_the_output_layer(env, tmp_path, capsys):
    from conftest_reliability import train_argv

    from maskprobe import cli

    first = tmp_path / "first.safetensors"
    assert cli.run(train_argv(env / "c.pt", first, steps=1)) == 0
    capsys.readouterr()
    rc = cli.run(train_argv(env / "c.pt", tmp_path / "o", "--fix", "nomatch*", "--fix-from", str(first), steps=1))
    assert rc == EXIT_BAD_INPUT
    line = _one_line(capsys.readouterr().err)
    assert "0.weight" in line and "output" not in line


# ---- item 10: scan's architecture sizes ---------------------------------------------------------------------------


def test_scan_refuses_a_negative_size_instead_of_running_the_preset():
    from sample_tasks.scan import ScanSimpleTask

    with pytest.raises(ValueError, match="hidden must be a size"):  # was: the preset's 64, recorded as -1
        ScanSimpleTask(hidden=-1)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "experiments" / "scan.py"), "--arch", "hidden=-1", "--out", "unused"],
                          capture_output=True, text=True, timeout=120, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    assert proc.returncode == 2 and "hidden must be a size" in proc.stderr.strip().splitlines()[-1]
    assert not (root / "unused").exists()


def test_compare_and_task_files_that_are_fifos_are_one_line(env, masks, tmp_path, capsys):
    from maskprobe import cli

    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert cli.run(["compare", str(fifo), str(masks[0]), "--quiet"]) == EXIT_BAD_INPUT  # hung in the zip sniffing
    assert "not a regular file" in _one_line(capsys.readouterr().err) and time.monotonic() - t0 < 30
    plugin = tmp_path / "t.py"
    os.mkfifo(plugin)
    assert cli.run(["train", str(env / "c.pt"), "--task", f"{plugin}:T", "--out", str(tmp_path / "o")]) != 0
    assert "not a regular file" in _one_line(capsys.readouterr().err)  # was "not found"


def test_an_interrupt_in_a_later_mask_names_the_masks_kept(env, tmp_path):
    out = tmp_path / "o"
    argv = ["train", "c.pt", "--task", "arith-mul", "--task", "slow.py:Slow", "--task-arg", "hidden=16,16",
            "--task-arg", "eval_size=64", "--out", f"{out}/", "--steps", "3", "--batch-size", "8",
            "--device", "cpu", "-q"]  # fmt: skip
    rc, err, secs = _maskprobe(env, argv, "evaluate", [signal.SIGTERM], tmp_path)
    assert rc == EXIT_SIGTERM and secs < PROMPT
    last = err.strip().splitlines()[-1]  # after arith-mul's own warning lines
    assert last.startswith("maskprobe: interrupted by SIGTERM") and "kept: " in last and "arith-mul.safetensors" in last
    assert sorted(p.name for p in out.iterdir()) == ["arith-mul.safetensors", "slow-add.state.pt"]
