"""``evaluate CKPT --mask M`` without ``--task`` rebuilds the task the mask records, as compare does; a recorded data
file that moved is one line saying how to give it again (issue 21 item 4; docs/cli.md "evaluate")."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers")

from builtin_helpers import FAST, animal_lines, make_model, write_lines  # noqa: E402 (transformers first)
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from maskprobe.cli import run  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny GPT-2 folder, a data file and a text-lm mask trained on them (3 steps)."""
    root = tmp_path_factory.mktemp("evalmask")
    model = make_model("gpt2", root / "gpt2")
    data = write_lines(root / "animals.txt", animal_lines(30))
    mask = root / "lm.safetensors"
    argv = ["train", str(model), "--task", "text-lm", "--task-arg", f"data={data}", "--out", str(mask), "-q", *FAST]
    assert run(argv) == 0
    return {"model": model, "data": data, "mask": mask, "root": root}


def _evaluate(capsys, *argv: str) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    code = run(["evaluate", *map(str, argv), "--device", "cpu", "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


def test_the_mask_gives_its_task(world, capsys):
    code, rebuilt, err = _evaluate(capsys, world["model"], "--mask", world["mask"])
    assert (code, err) == (0, "")
    code, given, _ = _evaluate(capsys, world["model"], "--mask", world["mask"], "--task", "text-lm", "--task-arg",
                               f"data={world['data']}")  # fmt: skip
    assert code == 0
    assert rebuilt["results"] == given["results"] and rebuilt["results"][0]["task"] == "text-lm"


def test_a_moved_data_file_says_how_to_give_it_again(world, capsys, tmp_path):
    moved = tmp_path / "animals.txt"
    mask = tmp_path / "lm.safetensors"
    shutil.copy(world["mask"], mask)
    with safe_open(str(mask), "pt") as f:
        meta = f.metadata()
    task = json.loads(meta["task"])
    gone = str(tmp_path / "gone" / "animals.txt")
    save_file(load_file(mask), str(mask), metadata={**meta, "task": json.dumps({**task, "args": {**task["args"], "data": gone}})})
    code, _, err = _evaluate(capsys, world["model"], "--mask", mask)
    assert code == 2 and err.count("\n") == 1 and err.startswith("maskprobe: error: ")
    assert f"data={gone}, which is not there any more" in err and "--task-arg 1:data=NEW_PATH" in err
    shutil.copy(world["data"], moved)
    code, payload, err = _evaluate(capsys, world["model"], "--mask", mask, "--task-arg", f"1:data={moved}")
    assert (code, err) == (0, "")
    _, original, _ = _evaluate(capsys, world["model"], "--mask", world["mask"])
    assert payload["results"] == original["results"]  # the same data, the other recorded arguments kept


def test_no_task_and_no_mask_is_one_line(world, capsys):
    code, _, err = _evaluate(capsys, world["model"])
    assert code == 2 and "give at least one --task, or a --mask" in err


def test_a_mask_naming_a_file_is_not_imported(world, capsys, tmp_path):
    evil = tmp_path / "evil.py"
    marker = tmp_path / "imported"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    mask = tmp_path / "evil.safetensors"
    with safe_open(str(world["mask"]), "pt") as f:
        meta = f.metadata()
    task = json.loads(meta["task"])
    save_file(load_file(world["mask"]), str(mask), metadata={**meta, "task": json.dumps({**task, "ref": f"{evil}:Evil"})})
    code, _, err = _evaluate(capsys, world["model"], "--mask", mask)
    assert code == 2 and "not an installed task" in err and not marker.exists()
