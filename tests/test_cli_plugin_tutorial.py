"""The tutorial in docs/plugins.md works as written: its files and commands, run in order outside the repo.

Every ```python file=NAME block is written to tmp_path; every ```bash block's lines are run there, in order:
``python X.py`` with this interpreter, ``maskprobe ...`` through the CLI (``maskprobe.cli.run``). Then the
author's own test from the tutorial is run, and the outputs are checked.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from maskprobe.cli import run

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
TUTORIAL_END = "## The contract (frozen)"
BLOCK = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", re.S)


def tutorial_steps(text: str) -> list[tuple[str, str, str]]:
    """``[(kind, name, body)]`` for the tutorial's blocks: ("file", NAME, code) or ("bash", "", lines)."""
    steps = []
    for lang, info, body in BLOCK.findall(text.split(TUTORIAL_END)[0]):
        m = re.search(r"file=(\S+)", info)
        if lang == "python" and m:
            steps.append(("file", m.group(1), body))
        elif lang == "bash":
            steps.append(("bash", "", body))
    return steps


def test_tutorial_has_the_steps_it_promises():
    steps = tutorial_steps(DOC.read_text())
    files = [name for kind, name, _ in steps if kind == "file"]
    commands = " ".join(body for kind, _, body in steps if kind == "bash")
    assert files == ["mytask.py", "test_mytask.py", "make_checkpoint.py"]
    assert "maskprobe train digitop.pt --task mytask.py:DigitOp" in commands
    assert "maskprobe compare" in commands and "maskprobe tasks --check" in commands


@pytest.mark.slow
def test_tutorial_runs_outside_the_repo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for kind, name, body in tutorial_steps(DOC.read_text()):
        if kind == "file":
            (tmp_path / name).write_text(body)
            continue
        for line in body.strip().splitlines():
            argv = shlex.split(line)
            if argv[0] == "python":
                done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, done.stderr[-2000:]
            else:
                assert argv[0] == "maskprobe", line
                code = run(argv[1:])
                assert code == 0, (line, capsys.readouterr().err[-2000:])
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert out.count("ok ") >= 5  # every contract check of tasks --check passed

    import test_mytask  # the author's own test, from the tutorial

    test_mytask.test_digit_op_follows_the_contract()

    for task in ("digit-add", "digit-mul"):
        from maskprobe import load_masks

        ms = load_masks(tmp_path / f"{task}.safetensors")
        assert ms.metadata["task"]["name"] == task
        assert ms.metadata["task"]["ref"] == f"{tmp_path / 'mytask.py'}:DigitOp"
        assert ms.metadata["metric_full"]["accuracy"] > 0.9  # the tutorial's network learned both operations
        assert 0 < ms.density < 0.9
    argv = ["compare", "digit-add.safetensors", "digit-mul.safetensors", "--checkpoint", "digitop.pt", "--json"]
    assert run(argv) == 2  # the masks name a plugin file: a mask file is data (docs/checkpoints.md)
    capsys.readouterr()
    code = run([*argv, "--trust-mask-tasks"])  # the author's own masks
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert "digit-add" in json.dumps(report) and "digit-mul" in json.dumps(report)
