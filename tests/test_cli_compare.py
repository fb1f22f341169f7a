"""``maskprobe compare`` as a CI gate: exit codes 0/1/2, one FAIL line per violation, --format markdown/json,
the pinned JSON schema, --baseline/--max-regression, packed-bit masks read transparently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskprobe.cli import run
from maskprobe.loading.checkpoints import sha256_of
from maskprobe.masks.maskfile import save_masks

ARGS = {"eval_size": 256}


@pytest.fixture(scope="module")
def masks(tiny_addmul, tmp_path_factory):
    """Random add/mul masks over the tiny checkpoint (densities 0.5 / 0.3), with the metadata train writes."""
    ckpt, model, hidden = tiny_addmul
    out = tmp_path_factory.mktemp("cmpmasks")
    gen = torch.Generator().manual_seed(0)
    sha = sha256_of(ckpt)
    paths = []
    for task, density in (("arith-add", 0.5), ("arith-mul", 0.3)):
        m = {n: torch.rand(p.shape, generator=gen) < density for n, p in model.named_parameters() if n.endswith("weight")}
        meta = {"task": {"name": task, "ref": task, "args": {"hidden": hidden, **ARGS}}, "checkpoint": {"sha256": sha}}
        paths.append(save_masks(out / f"{task}.safetensors", m, meta))
        save_masks(out / f"{task}-packed.safetensors", m, meta, pack_bits=True)
    return ckpt, paths, out


def _run(capsys, *argv):
    capsys.readouterr()
    code = run([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_thresholds_that_hold_exit_0_and_violations_exit_1_one_line_each(masks, capsys):
    _, (a, b), _ = masks
    code, out, err = _run(capsys, "compare", a, b, "--max-iou", "0.9", "--min-density", "0.2", "--format", "json")
    assert code == 0 and "FAIL" not in err
    assert json.loads(out)["passed"] is True
    code, out, err = _run(
        capsys, "compare", a, b, "--max-iou", "0.01", "--min-density", "0.4", "--max-iomin", "arith-add:arith-mul=0.99"
    )
    assert code == 1
    fails = [line for line in err.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 2  # iou of the pair, density of the mul mask (0.3 < 0.4); iomin holds
    assert any("iou[arith-add,arith-mul]" in f and "<= 0.01" in f for f in fails)
    assert any("density[arith-mul]" in f and ">= 0.4" in f for f in fails)
    assert "2 of 4 checks failed" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-iou", "lots"], "a number"),
        (["--max-iou", "arith-add:nope=0.5"], "no mask has task 'nope'"),
        (["--max-iou", "arith-add=0.5"], "TASK_A:TASK_B=VALUE"),
        (["--min-specialize", "0.5"], "needs --checkpoint"),
        (["--format", "yaml"], "--format"),
        (["--max-regression", "0.1"], "needs --baseline"),
        (["--baseline", "{tmp}/missing.json"], "baseline not found"),
        (["--baseline", "{tmp}/not-json.json"], "not a compare JSON"),
        (["--keep-io"], "needs --checkpoint"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(masks, capsys, argv, message):
    _, (a, b), out_dir = masks
    (out_dir / "not-json.json").write_text("{")
    argv = [x.replace("{tmp}", str(out_dir)) for x in argv]
    code, _, err = _run(capsys, "compare", a, b, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_markdown_is_a_job_summary(masks, capsys):
    _, (a, b), _ = masks
    code, out, _ = _run(capsys, "compare", a, b, "--format", "markdown", "--max-iou", "0.01")
    assert code == 1
    assert out.startswith("## maskprobe compare")
    assert "**FAILED**: 0 of 1 checks hold." in out
    assert "| ❌ | iou[arith-add,arith-mul] |" in out
    assert "| layer | role | density A | density B | IoU | chance | IoMin | chance | IoU − chance |" in out
    assert "| **hidden layers** |" in out and "| **total** |" in out


# the documented schema (docs/compare.md): changing these is a breaking change -> bump the schema version
TOP_KEYS = {"schema", "masks", "layout", "layers", "total", "hidden", "summary", "ablation", "scores", "checks", "passed"}
MASK_KEYS = {"path", "task", "label", "density", "kept", "numel", "packed", "foreign"}
COUNT_KEYS = {"name", "role", "shape", "numel", "counts", "density", "intersection", "union", "iou", "iomin", "shared",
              "chance_iou", "chance_iomin", "excess_iou", "excess_iomin", "share_of_others", "by_k"}  # fmt: skip
ABLATION_KEYS = {"tasks", "metrics", "full", "kept", "inverted", "exclusive", "control", "control_exclusive", "drops",
                 "keep_io", "io_tensors", "metric_ranges", "kept_metrics"}  # fmt: skip
SCORE_KEYS = {"specialization", "p_specialize", "p_specialize_control", "reuse", "p_reuse"}
CHECK_KEYS = {"check", "value", "threshold", "kind", "passed", "reason"}


def test_json_schema_is_pinned(masks, capsys):
    ckpt, (a, b), _ = masks
    code, out, _ = _run(capsys, "compare", a, b, "--checkpoint", ckpt, "--device", "cpu", "--json", "--min-density", "0")
    assert code == 0
    data = json.loads(out)
    assert data["schema"] == "maskprobe.compare/1"
    assert set(data) == TOP_KEYS
    assert all(set(m) == MASK_KEYS for m in data["masks"])
    assert all(set(c) == COUNT_KEYS for c in data["layers"])
    assert set(data["total"]) == COUNT_KEYS and set(data["hidden"]) == COUNT_KEYS
    assert set(data["ablation"]) == ABLATION_KEYS and set(data["scores"]) == SCORE_KEYS
    assert set(data["ablation"]["drops"]) == {"kept", "inverted", "exclusive", "control", "control_exclusive"}
    assert all(set(c) == CHECK_KEYS for c in data["checks"])
    assert set(data["summary"]) == {"all", "hidden"} and set(data["summary"]["all"]) == {"pooled", "layer_mean"}
    assert [c["role"] for c in data["layers"]] == ["input", "hidden", "output"]
    n = 2
    for m in ("kept", "inverted", "exclusive", "control"):
        assert np.array(data["ablation"][m]).shape == (n, n)


def test_baseline_reports_moves_and_gates_regressions(masks, capsys, tmp_path):
    ckpt, (a, b), _ = masks
    base = tmp_path / "base.json"
    common = ["compare", a, b, "--checkpoint", ckpt, "--device", "cpu", "--quiet"]
    code, out, _ = _run(capsys, *common, "--json")
    assert code == 0
    base.write_text(out)
    code, out, _ = _run(capsys, *common, "--json", "--baseline", base, "--max-regression", "0.0")
    data = json.loads(out)
    assert code == 0 and all(m["delta"] == 0 for m in data["baseline"]["moves"])
    assert {c["check"] for c in data["checks"]} == {"regression:p_specialize", "regression:p_reuse"}
    # a baseline that was more specialised and shared less: this run regressed by 0.3 in P_specialize
    old = json.loads(base.read_text())
    old["scores"]["p_specialize"] += 0.3
    old["total"]["iou"][0][1] -= 0.05
    base.write_text(json.dumps(old))
    code, out, err = _run(capsys, *common, "--baseline", base, "--max-regression", "0.1")
    assert code == 1
    fails = [line for line in err.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL p_specialize moved -0.3") and "allowed 0.1" in fails[0]
    assert "total.iou[arith-add,arith-mul]" in out and "+0.050" in out


def test_packed_masks_compare_like_plain_ones(masks, capsys):
    _, (a, b), out_dir = masks
    code, plain, _ = _run(capsys, "compare", a, b, "--json")
    code2, packed, _ = _run(
        capsys, "compare", out_dir / "arith-add-packed.safetensors", out_dir / "arith-mul-packed.safetensors", "--json"
    )
    assert code == code2 == 0
    p, q = json.loads(plain), json.loads(packed)
    assert [m["packed"] for m in q["masks"]] == [True, True]
    for m in (*p["masks"], *q["masks"]):  # the file names and the storage differ; every number must not
        del m["path"], m["packed"]
    assert p == q


def test_plot_without_matplotlib_is_bad_input(masks, capsys, monkeypatch, tmp_path):
    import sys

    _, (a, b), _ = masks
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    code, _, err = _run(capsys, "compare", a, b, "--plot", tmp_path / "figs")
    assert code == 2 and "pip install 'maskprobe[plot]'" in err


@pytest.fixture(scope="module")
def seeds(tiny_addmul, tmp_path_factory):
    """Masks of two tasks for three seeds each (as `train --seeds 0,1,2` writes them)."""
    _, model, hidden = tiny_addmul
    out = tmp_path_factory.mktemp("seeds")
    shapes = {n: p.shape for n, p in model.named_parameters() if n.endswith("weight")}
    for seed in (2, 0, 1):  # written out of order: runs are matched by the recorded seed
        gen = torch.Generator().manual_seed(seed)
        for task, density in (("arith-add", 0.5), ("arith-mul", 0.2 + 0.1 * seed)):
            m = {n: torch.rand(s, generator=gen) < density for n, s in shapes.items()}
            meta = {"task": {"name": task, "ref": task, "args": {"hidden": hidden}}, "seed": seed}
            save_masks(out / f"{task}-seed{seed}.safetensors", m, meta)
    return out


def test_group_reports_mean_and_std_over_seed_matched_runs(seeds, capsys):
    files = sorted(seeds.glob("*.safetensors"))
    code, out, _ = _run(capsys, "compare", *files, "--group", "task", "--json", "--min-density", "0.1")
    assert code == 0
    data = json.loads(out)
    assert [[p.rsplit("/", 1)[-1] for p in run] for run in data["runs"]] == [
        [f"arith-add-seed{s}.safetensors", f"arith-mul-seed{s}.safetensors"] for s in (0, 1, 2)
    ]
    singles = []
    for files_of_run in data["runs"]:
        code, one, _ = _run(capsys, "compare", *files_of_run, "--json")
        singles.append(json.loads(one)["total"]["iou"][0][1])
    assert data["total"]["iou"][0][1] == pytest.approx(np.mean(singles))
    assert data["std"]["total"]["iou"][0][1] == pytest.approx(np.std(singles, ddof=1))
    assert data["masks"][1]["density"] == pytest.approx(0.3, abs=0.02)  # mean of ~0.2, 0.3, 0.4
    assert data["std"]["masks"][1]["density"] == pytest.approx(0.1, abs=0.02)
    assert [m["task"] for m in data["masks"]] == ["arith-add", "arith-mul"]
    code, md, _ = _run(capsys, "compare", *files, "--group", "task", "--format", "markdown")
    assert code == 0 and "Mean ± standard deviation over 3 runs" in md and " ± " in md


def test_group_by_globs_and_unequal_groups(seeds, capsys):
    add, mul = f"add={seeds}/arith-add-*.safetensors", f"mul={seeds}/arith-mul-seed[01].safetensors"
    code, _, err = _run(capsys, "compare", "--group", add, "--group", mul)
    assert code == 2 and "same number of mask files" in err
    code, out, _ = _run(capsys, "compare", "--group", add, "--group", f"mul={seeds}/arith-mul-*.safetensors", "--json")
    assert code == 0 and [m["task"] for m in json.loads(out)["masks"]] == ["add", "mul"]
    code, _, err = _run(capsys, "compare", "--group", f"add={seeds}/nothing-*.safetensors", "--group", mul)
    assert code == 2 and "matches no file" in err


def test_train_pack_bits_is_read_by_every_command(tiny_addmul, tmp_path, capsys):
    ckpt, _, hidden = tiny_addmul
    out = tmp_path / "packed"
    common = ["--task-arg", f"hidden={hidden}", "--task-arg", "eval_size=128", "--device", "cpu"]
    assert run(["train", str(ckpt), "-t", "arith-add", "-t", "arith-mul", *common, "--out", str(out), "--steps", "3",
                "--batch-size", "8", "--pack-bits", "--quiet"]) == 0  # fmt: skip
    a, b = out / "arith-add.safetensors", out / "arith-mul.safetensors"
    from safetensors.numpy import load_file

    assert {str(t.dtype) for t in load_file(str(a)).values()} == {"uint8"}  # 8 weights per byte on disk
    code, text, _ = _run(capsys, "compare", a, b, "--checkpoint", ckpt, "--device", "cpu", "--json")
    assert code == 0 and json.loads(text)["masks"][0]["packed"] is True
    code, text, _ = _run(capsys, "inspect", a, "--json")
    layers = json.loads(text)["layers"]
    assert code == 0 and layers[0]["shape"] == [24, 42]
    code, text, _ = _run(capsys, "evaluate", ckpt, "-t", "arith-add", *common, "--mask", a, "--json")
    assert code == 0


def test_three_masks_markdown_has_the_pairwise_matrices_and_by_k(tmp_path, capsys):
    rng = np.random.default_rng(5)
    paths = []
    for k in range(3):
        m = {"l.0.weight": torch.as_tensor(rng.random((6, 5)) < 0.5), "l.1.weight": torch.as_tensor(rng.random((3, 6)) < 0.5)}
        paths.append(save_masks(tmp_path / f"m{k}.safetensors", m, {"task": {"name": f"t{k}"}}))
    code, md, _ = _run(capsys, "compare", *paths, "--format", "markdown")
    assert code == 0
    assert "### Total IoU, pairwise (chance in brackets)" in md and "| t0 | — |" in md
    code, js, _ = _run(capsys, "compare", *paths, "--json")
    total = json.loads(js)["total"]
    assert sum(total["by_k"]) == 48 and len(total["by_k"]) == 4
    assert f"| 3 | {total['by_k'][3]:,} |" in md


def test_a_fail_line_shows_once_on_a_terminal_and_on_stderr_in_a_log(masks, tmp_path):
    """Tables print PASS/FAIL on stdout; the FAIL lines go to stderr too, except where both streams are one terminal
    (they would show twice on the screen, issue 22)."""
    import os
    import pty
    import subprocess
    import sys

    _, (a, b), _ = masks
    argv = [sys.executable, "-m", "maskprobe", "compare", str(a), str(b), "--max-iou", "0.01"]
    env = {**os.environ, "COLUMNS": "100"}
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    assert proc.wait(timeout=120) == 1
    text = screen.decode(errors="replace")
    assert text.count("FAIL iou[arith-add,arith-mul]") == 1, text
    piped = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    assert piped.returncode == 1
    assert piped.stdout.count("FAIL iou[arith-add,arith-mul]") == 1 and piped.stderr.count("FAIL iou[arith-add,arith-mul]") == 1
