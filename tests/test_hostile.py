"""Issue 19, the security, data-loss and CI-gate items: a mask file is data, compare checks what it is asked to
check, and a reused result must have been made with the settings asked for. Each test fails on the code before."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest_reliability import make_checkpoint, one_thread, refused, train_argv  # noqa: F401 (one_thread: autouse fixture)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from maskprobe.cli import run

BAD = 2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    make_checkpoint(root / "c.pt", steps=20)
    assert run(train_argv(root / "c.pt", root / "a.safetensors", "--seed", "0")) == 0
    assert run(train_argv(root / "c.pt", root / "b.safetensors", "--seed", "1", task="arith-mul")) == 0
    return root


def with_metadata(src: Path, dst: Path, **fields: str) -> Path:
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    save_file(load_file(src), dst, metadata={**meta, **fields})
    return dst


def with_task(src: Path, dst: Path, ref: str) -> Path:
    with safe_open(str(src), "pt") as f:
        task = json.loads(f.metadata()["task"])
    return with_metadata(src, dst, task=json.dumps({**task, "ref": ref}))


def compare_argv(env: Path, a: Path, b: Path, *extra: str) -> list:
    return ["compare", a, b, "--checkpoint", env / "c.pt", "--device", "cpu", "--json", "-q", *extra]


# ---- 1. a mask file never makes compare import a path or a module -----------------------------------------

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from sample_tasks.arithmetic import AddTask


class Evil(AddTask):
    pass
"""


def _evil(folder: Path, stem: str) -> tuple[Path, Path]:
    marker = folder / f"{stem}.marker"
    (folder / f"{stem}.py").write_text(EVIL.format(marker=str(marker)))
    return folder / f"{stem}.py", marker


@pytest.mark.parametrize("form", ["absolute", "relative", "module"])
def test_a_mask_file_cannot_make_compare_import_code(env, tmp_path, capsys, monkeypatch, form):
    stem = f"evil_{uuid.uuid4().hex[:10]}"
    path, marker = _evil(tmp_path, stem)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = {"absolute": f"{path}:Evil", "relative": f"{stem}.py:Evil", "module": f"{stem}:Evil"}[form]
    bad = with_task(env / "a.safetensors", tmp_path / "bad.safetensors", ref)
    argv = compare_argv(env, bad, env / "b.safetensors")
    refused(capsys, argv, repr(ref), "--trust-mask-tasks", "--task")
    assert not marker.exists()
    # the same refusal under --group (each run is one compare), and the opt-in imports it and works
    refused(capsys, [*argv[:1], "--group", "add=" + str(bad), "--group", f"mul={env / 'b.safetensors'}", *argv[3:]],
            repr(ref))  # fmt: skip
    assert not marker.exists()
    capsys.readouterr()
    assert run([str(a) for a in argv] + ["--trust-mask-tasks"]) == 0, capsys.readouterr().err
    assert marker.exists()
    assert json.loads(capsys.readouterr().out)["scores"] is not None


def test_installed_tasks_and_tasks_named_on_the_command_line_need_no_opt_in(env, tmp_path, capsys):
    # the entry point's own module:Class is installed code: no flag needed
    ok = with_task(env / "a.safetensors", tmp_path / "mc.safetensors", "sample_tasks.arithmetic:AddTask")
    capsys.readouterr()
    assert run([str(a) for a in compare_argv(env, ok, env / "b.safetensors")]) == 0, capsys.readouterr().err
    # a path the user names with --task is the user's choice
    path, marker = _evil(tmp_path, f"evil_{uuid.uuid4().hex[:10]}")
    bad = with_task(env / "a.safetensors", tmp_path / "bad.safetensors", "/nowhere/else.py:Other")
    argv = compare_argv(env, bad, env / "b.safetensors", "--task", f"{path}:Evil", "--task", "arith-mul",
                        "--task-arg", "hidden=16,16", "--task-arg", "eval_size=64")  # fmt: skip
    assert run([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert marker.exists()


def test_trust_mask_tasks_needs_a_checkpoint(env, capsys):
    refused(capsys, ["compare", env / "a.safetensors", env / "b.safetensors", "--trust-mask-tasks"], "--checkpoint")


# ---- 5. compare applies or refuses every --task-arg ------------------------------------------------------


@pytest.mark.parametrize(
    "pair, needle",
    [("bogus=1", "'bogus=1'"), ("5:hidden=99", "'5'"), ("nosuch:hidden=1", "'nosuch'"), ("1:eval_size=x", "eval_size='x'")],
)
def test_compare_refuses_a_task_arg_it_cannot_apply(env, capsys, pair, needle):
    refused(capsys, compare_argv(env, env / "a.safetensors", env / "b.safetensors", "--task-arg", pair), needle)


def test_compare_applies_task_args_over_the_recorded_ones(env, capsys):
    def kept(*extra: str) -> list[dict]:
        """Each task's metrics with its own mask kept."""
        capsys.readouterr()
        assert run([str(a) for a in compare_argv(env, env / "a.safetensors", env / "b.safetensors", *extra)]) == 0
        metrics = json.loads(capsys.readouterr().out)["ablation"]["kept_metrics"]
        return [metrics[0][0], metrics[1][1]]

    base = kept()
    by_position, by_name = kept("--task-arg", "1:eval_size=5"), kept("--task-arg", "arith-add:eval_size=5")
    assert by_position == by_name and by_position[1] == base[1]
    assert by_position[0] != base[0] and (by_position[0]["digit_accuracy"] * 10) % 1 == 0  # over 5 examples now
    both = kept("--task-arg", "eval_size=5")  # a plain key=value goes to every mask's task that takes it
    assert both[0] == by_position[0] and both[1] != base[1]
    refused(capsys, ["compare", env / "a.safetensors", env / "b.safetensors", "--task-arg", "eval_size=5"], "--checkpoint")


# ---- 3. compare --plot never writes into a checkpoint folder ----------------------------------------------


def test_plot_inside_a_checkpoint_folder_is_refused(env, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = sorted(p.name for p in folder.iterdir())
    a, b = env / "a.safetensors", env / "b.safetensors"
    for plot in (folder, folder / "figs", folder / "figs" / "deeper"):
        refused(capsys, ["compare", a, b, "--checkpoint", folder, "--plot", plot], "--plot", "inside the checkpoint folder")
    # without --checkpoint: the folder the masks record is protected too
    moved = with_metadata(a, tmp_path / "a2.safetensors", checkpoint=json.dumps({"path": str(folder), "sha256": "0" * 64}))
    refused(capsys, ["compare", moved, b, "--allow-mismatch", "--plot", folder / "figs"], str(folder))
    refused(capsys, ["compare", "--group", f"add={moved}", "--group", f"mul={b}", "--plot", folder / "figs"], str(folder))
    assert sorted(p.name for p in folder.iterdir()) == before
    capsys.readouterr()
    assert run(["compare", str(a), str(b), "--plot", str(tmp_path / "figs"), "-q"]) == 0  # elsewhere is fine
    assert (tmp_path / "figs" / "density.png").exists()


# ---- 4, 13. a CI gate that cannot be evaluated is a usage error; a malformed baseline is one line ----------


@pytest.fixture(scope="module")
def baselines(env):
    """compare JSONs of a and b: with scores (--checkpoint) and structural only."""
    import contextlib
    import io

    out = {}
    for name, extra in (("full", ["--checkpoint", str(env / "c.pt"), "--device", "cpu"]), ("structural", [])):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert run(["compare", str(env / "a.safetensors"), str(env / "b.safetensors"), "--json", "-q", *extra]) == 0
        out[name] = env / f"baseline-{name}.json"
        out[name].write_text(buf.getvalue())
    return out


def _baseline(env: Path, baselines: dict, tmp_path: Path, edit) -> Path:
    data = json.loads(baselines["full"].read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_checks_that_cannot_be_evaluated_are_usage_errors(env, baselines, tmp_path, capsys):
    a, b = env / "a.safetensors", env / "b.safetensors"
    assert "scores" not in json.loads(baselines["structural"].read_text())
    refused(capsys, compare_argv(env, a, b, "--baseline", baselines["structural"], "--max-regression", "0"),
            "--max-regression", "no scores")  # fmt: skip
    no_checkpoint = ["compare", a, b, "--baseline", baselines["full"], "--max-regression", "0"]
    refused(capsys, no_checkpoint, "--max-regression needs --checkpoint")
    high = _baseline(env, baselines, tmp_path, lambda d: d["scores"].update(p_specialize="high"))
    refused(capsys, compare_argv(env, a, b, "--baseline", high, "--max-regression", "0"), "p_specialize = 'high'")
    refused(capsys, compare_argv(env, a, b, "--baseline", baselines["full"], "--max-regression", "nan"), "finite")
    refused(capsys, ["compare", a, b, "--max-iou", "arith-add:arith-add=0"], "no pair of two distinct masks")
    refused(capsys, compare_argv(env, a, b, "--max-reuse", "arith-add:arith-add=0"), "no pair of two distinct masks")
    # before any long work: the checkpoint named here does not even exist
    refused(
        capsys, ["compare", a, b, "--checkpoint", tmp_path / "none.pt", "--min-specialize", "sub=0"], "no mask has task 'sub'"
    )
    # the same flags with what they need: every check is there
    capsys.readouterr()
    argv = compare_argv(env, a, b, "--baseline", baselines["full"], "--max-regression", "0", "--max-iou", "arith-add:arith-mul=1")
    assert run([str(x) for x in argv]) == 0, capsys.readouterr().err
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert [c["check"] for c in checks] == ["iou[arith-add,arith-mul]", "regression:p_specialize", "regression:p_reuse"]
    assert all(c["passed"] for c in checks)  # the same masks as the baseline: nothing moved


@pytest.mark.parametrize(
    "edit",
    [lambda d: d.update(masks=None), lambda d: d.update(layers=[{"name": 1}]), lambda d: d.update(layers=[{"name": "x"}]),
     lambda d: d.update(masks=[{"task": 3}]), lambda d: d.update(scores=[1]), lambda d: d["total"].update(iou=[[0]]),
     lambda d: d.update(masks="ab")],
)  # fmt: skip
def test_a_malformed_baseline_is_one_line(env, baselines, tmp_path, capsys, edit):
    bad = _baseline(env, baselines, tmp_path, edit)
    refused(capsys, ["compare", env / "a.safetensors", env / "b.safetensors", "--baseline", bad], str(bad), "well-formed")


# ---- 19. two masks of one task carry the same labels everywhere -------------------------------------------


def test_two_masks_of_one_task_are_labelled_alike_everywhere(env, tmp_path, capsys):
    a2 = tmp_path / "a2.safetensors"
    assert run(train_argv(env / "c.pt", a2, "--seed", "5")) == 0
    a = env / "a.safetensors"
    capsys.readouterr()
    argv = ["compare", a, a2, "--min-density", "arith-add#1=1.5", "--min-density", "arith-add#2=0", "--max-iou",
            "arith-add:arith-add=1", "--format", "json"]  # fmt: skip
    assert run([str(x) for x in argv]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [m["label"] for m in data["masks"]] == ["arith-add#1", "arith-add#2"]
    names = ["iou[arith-add#1,arith-add#2]", "density[arith-add#1]", "density[arith-add#2]"]
    assert [c["check"] for c in data["checks"]] == names
    fails = [line for line in captured.err.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL density[arith-add#1] = ")
    capsys.readouterr()
    assert run([str(x) for x in argv[:3]] + ["--min-density", "arith-add=1.5"]) == 1  # the task name: both masks
    assert "arith-add#1" in capsys.readouterr().out  # the table's labels are the same


# ---- 9. every file's layer roles are checked against the first's ------------------------------------------


def test_files_recording_different_layer_roles_are_refused(env, tmp_path, capsys):
    a, b = env / "a.safetensors", env / "b.safetensors"
    with safe_open(str(b), "pt") as f:
        layers = json.loads(f.metadata()["layers"])
    swapped = {"input": "output", "output": "input", "hidden": "hidden"}
    changed = [{**row, "role": swapped[row["role"]]} for row in layers]
    assert changed != layers
    bad = with_metadata(b, tmp_path / "b-swapped.safetensors", layers=json.dumps(changed))
    for first, second in ((a, bad), (bad, a)):
        line = refused(capsys, ["compare", first, second], "record different layer roles", "--io-layer")
        assert first.name in line and second.name in line
    capsys.readouterr()
    assert run(["compare", str(a), str(bad), "--io-layer", "none", "--json"]) == 0  # roles from the flag: no conflict
    assert json.loads(capsys.readouterr().out)["layout"] == "--io-layer"


# ---- 21. --group's own mistakes are named -----------------------------------------------------------------


def test_group_mistakes_get_their_own_message(env, capsys):
    a, b = env / "a.safetensors", env / "b.safetensors"
    refused(capsys, ["compare", a, b, "--group", "bogus"], "--group 'bogus': expected 'task' or NAME=GLOB")
    refused(capsys, ["compare", "--group", "bogus"], "--group 'bogus': expected 'task' or NAME=GLOB")
    # a name given twice collects both globs (each file once); a file in two groups names both groups
    refused(capsys, ["compare", "--group", f"add={a}", "--group", f"add={a}", "--group", f"mul={a}"],
            f"{a} is in two groups ('add' and 'mul')")  # fmt: skip
    from maskprobe.measure.groups import group_files

    assert group_files([], [f"add={a}", f"add={env}/a.safe*", f"mul={b}"]) == {"add": [a], "mul": [b]}
    refused(capsys, ["compare", a, b, "--group", "task", "--group", f"add={a}"], "cannot be combined")


# ---- 6. train --resume skips a finished mask only when it was made with the requested settings ------------


def test_resume_skips_a_finished_mask_only_with_its_own_settings(env, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert run(train_argv(env / "c.pt", out, steps=4)) == 0
    raw = out.read_bytes()
    other = make_checkpoint(tmp_path / "other.pt", steps=20, shift=0.01)
    for argv, needle in (
        (train_argv(env / "c.pt", out, "--resume", steps=5), "steps 4, asked 5"),
        (train_argv(env / "c.pt", out, "--resume", steps=4, task="arith-mul"), "task 'arith-add', asked 'arith-mul'"),
        (train_argv(env / "c.pt", out, "--resume", "--beta", "0.5", steps=4), "beta 0.0001, asked 0.5"),
        (train_argv(env / "c.pt", out, "--resume", "--seed", "3", steps=4), "seed 0, asked 3"),
        (train_argv(env / "c.pt", out, "--resume", "--task-arg", "eval_size=32", steps=4), "task arguments"),
        (train_argv(other, out, "--resume", steps=4), "checkpoint"),
        (train_argv(env / "c.pt", out, "--resume", "--mask-biases", steps=4), "selection"),
    ):
        line = refused(capsys, argv, needle, "--force", "another --out")
        assert str(out) in line
    assert out.read_bytes() == raw
    assert run(train_argv(env / "c.pt", out, "--resume", steps=4)) == 0  # the same settings: skipped
    assert out.read_bytes() == raw


# ---- 8. --fix-from a mask of another checkpoint is refused unless --allow-mismatch ------------------------


def test_fix_from_a_mask_of_another_checkpoint_needs_allow_mismatch(env, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "other.pt", steps=20, shift=0.01)
    out = tmp_path / "fixed.safetensors"
    argv = train_argv(other, out, "--fix-from", env / "a.safetensors")
    refused(capsys, argv, "--fix-from", "another checkpoint", "--allow-mismatch")
    assert not out.exists()
    assert run(argv + ["--allow-mismatch"]) == 0 and out.exists()
    out.unlink()
    assert run(train_argv(env / "c.pt", out, "--fix-from", env / "a.safetensors")) == 0  # its own checkpoint: fine
    refused(capsys, train_argv(env / "c.pt", tmp_path / "x.safetensors", "--allow-mismatch"), "--fix-from")


# ---- 7. experiments reuse a step's output only when it was made with the requested settings ---------------


def test_experiments_reuse_a_step_only_with_its_own_settings(tmp_path):
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]

    def addmul(out: Path, *extra: object) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(root / "experiments" / "addmul.py"), "--seeds", "0", "--hidden", "8,8", "--base-steps",
               "20", "--eval-size", "50", "--threads", "1", "--out", str(out), *map(str, extra)]  # fmt: skip
        env = {**__import__("os").environ, "CI": "true", "PYTHONPATH": str(root)}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)

    def ran(out: Path) -> int:
        return len((out / "commands.jsonl").read_text().splitlines())

    out = tmp_path / "addmul"
    assert addmul(out, "--mask-steps", 3).returncode == 0
    before = (out / "results.json").read_bytes()
    r = addmul(out, "--mask-steps", 7, "--beta", 0.5)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "arith-add.safetensors" in last or "train.json" in last, last
    assert "was --steps 3, now --steps 7" in last and "--force" in last and "another --out" in last
    assert (out / "results.json").read_bytes() == before and ran(out) == 3  # nothing ran, nothing rewritten
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns(".lock"))
    assert addmul(moved, "--mask-steps", 3).returncode == 0 and ran(moved) == 3  # same settings, moved folder: reused
    (out / "seed0" / "base.pt").unlink()  # a base network made again with other settings: its masks are stale
    r = addmul(out, "--mask-steps", 3, "--base-steps", 25)
    assert r.returncode == 1 and "from earlier steps made with other settings" in r.stderr.strip().splitlines()[-1]
    r = addmul(out, "--mask-steps", 7, "--beta", 0.5, "--force")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "results.json").read_text())["mask_steps"] == 7


def test_group_names_target_task_args_and_unknown_targets_are_named(env, capsys):
    a, b = env / "a.safetensors", env / "b.safetensors"
    base = ["compare", "--group", f"add={a}", "--group", f"mul={b}", "--checkpoint", env / "c.pt", "--device", "cpu", "--json"]

    def kept(*extra: str) -> list[dict]:
        capsys.readouterr()
        assert run([str(x) for x in [*base, *extra]]) == 0, capsys.readouterr().err
        metrics = json.loads(capsys.readouterr().out)["ablation"]["kept_metrics"]
        return [metrics[0][0], metrics[1][1]]

    plain, by_group = kept(), kept("--task-arg", "mul:eval_size=5")
    assert by_group[0] == plain[0] and by_group[1] != plain[1]
    refused(capsys, [*base, "--task-arg", "div:eval_size=5"], "'div' names no mask's task", "1 arith-add, 2 arith-mul")
