"""The paper's experiment scripts (experiments/*.py), end to end at tiny sizes as a user runs them: one command,
the results files, the paper-form tables, a rerun that skips finished steps, and bad input as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "experiments" / f"{name}.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=600)


def commands(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "commands.jsonl").read_text().splitlines()]


def test_addmul_two_seeds_gives_the_papers_table_with_mean_and_std(tmp_path):
    out = tmp_path / "addmul"
    flags = ["--seeds", "0-1", "--hidden", "24,24", "--base-steps", 300, "--mask-steps", 30, "--eval-size", 200]
    r = script("addmul", *flags, "--threads", 1, "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["experiment"] == "addmul" and res["seeds"] == [0, 1] and res["mask_steps"] == 30
    assert res["beta"] == pytest.approx(1e-4 * 20_000 / 30, rel=1e-2)  # the paper's beta, scaled to the steps
    assert [run["seed"] for run in res["runs"]] == [0, 1]
    for run in res["runs"]:
        ab = run["compare"][""]["ablation"]
        assert len(ab["full"]) == 2 and all(0.0 <= v <= 1.0 for v in ab["full"])
        assert len(ab["kept"]) == 2 and len(ab["inverted"]) == 2
        assert -1.0 <= run["compare"][""]["scores"]["p_specialize"] <= 1.0
        assert (out / f"seed{run['seed']}" / "masks" / "arith-add.safetensors").is_file()
    assert res["machine"]["cores"] == os.cpu_count() and res["machine"]["torch"]
    md = (out / "results.md").read_text()
    assert "| task scored | Full | + | ¬+ | * | ¬* |" in md
    assert md.count(" ± ") > 10 and "P_specialize" in md
    assert "Command: `python experiments/addmul.py --seeds 0-1" in md  # relative to the repository, pasteable
    low = {run["seed"] for run in res["runs"] if min(run["compare"][""]["ablation"]["full"]) < 0.9}
    assert {u["seed"] for u in res["unlearned"]} == low  # 300 base steps: a seed may not learn mul, and says so
    assert md.count("did not learn its tasks") == len(low)
    assert all(c["rc"] == 0 and c["cpu_seconds"] >= 0 for c in commands(out))
    ran = len(commands(out))
    assert ran == 2 * 3  # base, masks, compare per seed

    again = script("addmul", *flags, "--threads", 1, "--out", out)
    assert again.returncode == 0, again.stderr
    assert len(commands(out)) == ran  # every step's output exists: nothing reruns
    assert json.loads((out / "results.json").read_text())["runs"][0]["compare"] == res["runs"][0]["compare"]


def test_double_addition_lstm_reports_reuse_plain_and_keep_io(tmp_path):
    out = tmp_path / "dadd"
    r = script("double_addition", "--model", "lstm", "--seeds", 0, "--lstm-size", 12, "--base-steps", 40,
               "--mask-steps", 10, "--eval-size", 100, "--threads", 1, "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "lstm" and res["task_args"]["lstm_size"] == 12
    assert res["beta"] == pytest.approx(1e-4 * 20_000 / 10, rel=1e-2)
    compare = res["runs"][0]["compare"]
    assert set(compare) == {"", "keep_io"}
    for variant in compare.values():
        assert 0.0 <= variant["scores"]["p_reuse"] <= 1.0
    md = (out / "results.md").read_text()
    assert "| pair scored | Full | Pair 1 | ¬Pair 1 | Pair 2 | ¬Pair 2 |" in md and "P_reuse, --keep-io" in md


def test_scan_transformer_scores_every_split_and_the_output_rows(tmp_path):
    out = tmp_path / "scan"
    arch = ["--arch", "hidden=16", "--arch", "layers=1", "--arch", "heads=2", "--arch", "ff=32"]
    r = script("scan", "--model", "transformer", "--seeds", 0, *arch, "--base-steps", 20, "--mask-steps", 5,
               "--eval-size", 20, "--threads", 1, "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    run = res["runs"][0]
    tasks = {"scan-simple", "scan-jump", "scan-length", "scan-turn-left"}
    for key in ("unmasked", "own_mask", "control_mask", "density"):
        assert set(run[key]) == tasks and all(0.0 <= v <= 1.0 for v in run[key].values())
    assert set(run["removed_from_control"]) == {"jump", "length", "turn-left"}
    for shares in run["removed_from_control"].values():
        assert len(shares) == len(res["tokens"]) == 7 and all(0.0 <= v <= 1.0 for v in shares)
    md = (out / "results.md").read_text()
    assert "| split (its test set) | unmasked network | control (simple) mask | the split's own mask |" in md
    assert "I_JUMP row, jump mask:" in md


def test_class_removal_fixes_the_output_layer_and_reports_each_class(tmp_path):
    out = tmp_path / "cr"
    flags = ["--seeds", 0, "--classes", "3", "--base-steps", 40, "--mask-steps", 10, "--threads", 1, "--out", out]
    r = script("class_removal", *flags)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    masks = out / "seed0" / "masks"
    assert sorted(p.name for p in masks.iterdir()) == ["control.safetensors", "without-3.safetensors"]
    from safetensors import safe_open
    from safetensors.torch import load_file

    control, removal = load_file(str(masks / "control.safetensors")), load_file(str(masks / "without-3.safetensors"))
    assert (control["head.weight"] == removal["head.weight"]).all()  # the output layer is fixed to the control's
    hparams = json.loads(safe_open(str(masks / "without-3.safetensors"), "pt").metadata()["hparams"])
    assert hparams["fixed"] == ["output"] and Path(hparams["fixed_from"]) == masks / "control.safetensors"
    md = (out / "results.md").read_text()
    assert "| class removed |" in md and md.count("\n| 3 |") == 1 and "\n| 7 |" not in md
    assert res["runs"][0]["seed"] == 0

    ran = len(commands(out))  # a step file damaged by hand: named, not a traceback, nothing rerun
    (out / "seed0" / "compare.json").write_text('{"truncated": ')
    r = script("class_removal", *flags)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "compare.json is not valid JSON" in r.stderr and "--force" in r.stderr
    assert len(commands(out)) == ran


def test_a_seed_whose_base_network_failed_is_named_with_its_scores():
    sys.path.insert(0, str(ROOT))
    from experiments.common import unlearned, unlearned_lines

    runs = [{"seed": 0, "full": {"a": 1.0, "b": 0.95}}, {"seed": 1, "full": {"a": 0.098, "b": 1.0}}]
    failed = unlearned(runs, lambda r: r["full"])
    assert failed == [{"seed": 1, "below": {"a": 0.098}, "floor": 0.9}]
    (line,) = unlearned_lines(failed)
    assert "seed 1's base network did not learn" in line and "a 9.8 %" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "5-2"], "runs backwards"),
        (["--seeds", "x"], "expected integers"),
        (["--seeds", "1,1"], "names a value twice"),
        (["--mask-steps", "0"], "must be at least 1"),
        (["--beta", "nan"], "finite number"),
        (["--jobs", "0"], "must be at least 1"),
        (["--eval-size", "many"], "whole number"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args, message):
    r = script("addmul", *args)
    assert r.returncode == 2
    assert message in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr


def test_a_failing_step_is_one_line_naming_the_log_and_a_rerun_continues(tmp_path):
    out = tmp_path / "scan"
    r = script("scan", "--seeds", 0, "--arch", "bogus=1", "--base-steps", 5, "--mask-steps", 2, "--out", out)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: python -m sample_tasks.scan") and "commands.log" in last
    assert "Traceback" not in r.stderr
    assert "rc 2" in (out / "commands.log").read_text()


def test_an_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = script("addmul", "--out", blocker / "sub")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_ctrl_c_ends_in_one_line_and_keeps_the_finished_steps(tmp_path):
    import signal
    import time

    out = tmp_path / "addmul"
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "experiments" / "addmul.py"), "--seeds", "0-1", "--hidden", "8", "--base-steps",
           "1000000", "--mask-steps", "5", "--eval-size", "50", "--threads", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (out / "seed0").is_dir() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the base network is training
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the script and its command
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: the finished steps are kept")
    assert "Traceback" not in err
    assert not (out / "results.json").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "addmul"
    out.mkdir()
    with open(out / ".lock", "a") as held:  # a run in progress holds this
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = script("addmul", "--seeds", 0, "--out", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: another run is writing into {out}: wait for it to end, or give another --out"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # it wrote nothing
