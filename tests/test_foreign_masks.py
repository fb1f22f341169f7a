"""Masks from other tools (issue 21 item 9; docs/mask-format.md "Masks from other tools"): plain bool/uint8
safetensors without metadata and numpy ``.npz`` archives keyed by parameter name are compared structurally (labels
from file names, one note on stderr), ablated with ``--checkpoint`` and ``--task``, and never unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from maskprobe.cli import run
from maskprobe.errors import MaskFileError
from maskprobe.masks.maskfile import open_masks, save_masks

HIDDEN = "16,16"
ARGS = ["--task-arg", f"hidden={HIDDEN}", "--task-arg", "eval_size=64"]


def fnn() -> torch.nn.Module:
    from checkpoint_helpers import fnn

    torch.manual_seed(0)
    return fnn(HIDDEN)


def _masks(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in fnn().named_parameters() if n.endswith("weight")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    a, b = _masks(1), _masks(2)
    out = {"a": a, "b": b, "root": root}
    save_file(a, str(out.setdefault("a_bool", root / "a.safetensors")))
    save_file({k: v.to(torch.uint8) for k, v in b.items()}, str(out.setdefault("b_uint8", root / "b.safetensors")))
    np.savez(out.setdefault("a_npz", root / "a_np.npz"), **{k: v.numpy() for k, v in a.items()})
    np.savez_compressed(out.setdefault("b_npz", root / "b_np.npz"), **{k: v.numpy().astype(np.uint8) for k, v in b.items()})
    save_masks(out.setdefault("b_maskprobe", root / "b_mp.safetensors"), b, {"task": {"name": "mine", "ref": "arith-mul"}})
    torch.save(fnn().state_dict(), out.setdefault("ckpt", root / "addmul.pt"))
    return out


def _compare(capsys, *argv: object) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    code = run(["compare", *map(str, argv), "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


def _iou(a: dict, b: dict) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union


@pytest.mark.parametrize("pair", [("a_bool", "b_uint8"), ("a_npz", "b_npz"), ("a_npz", "b_maskprobe"), ("a_bool", "b_npz")])
def test_plain_safetensors_and_npz_are_compared_structurally(files, capsys, pair):
    code, data, err = _compare(capsys, files[pair[0]], files[pair[1]])
    assert code == 0, err
    assert data["total"]["iou"][0][1] == pytest.approx(_iou(files["a"], files["b"]))
    assert data["masks"][0]["kept"] == sum(int(m.sum()) for m in files["a"].values())
    assert [m["label"] for m in data["masks"]][0] == Path(files[pair[0]]).stem  # the file name, no metadata
    lines = err.splitlines()
    foreign = [Path(files[p]).name for p in pair if p != "b_maskprobe"]
    assert len(lines) == 1 and lines[0].startswith("maskprobe: note: ") and all(name in lines[0] for name in foreign)
    assert "no maskprobe metadata" in lines[0] and ("b_mp.safetensors" not in lines[0])


def test_ablation_with_checkpoint_and_tasks(files, capsys):
    code, data, err = _compare(
        capsys, files["a_npz"], files["b_uint8"], "--checkpoint", files["ckpt"], "--task", "arith-add", "--task", "arith-mul",
        *ARGS, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert data["ablation"]["tasks"] == ["a_np", "b"]  # labelled by file name, evaluated on the tasks given
    full = data["ablation"]["full"]
    assert len(full) == 2 and all(0 <= f <= 1 for f in full)  # accuracy of arith-add and arith-mul, unmasked
    assert -1 <= data["scores"]["p_specialize"] <= 1
    # without --task nothing says which task a foreign mask belongs to: one line, exit 2
    code, _, err = _compare(capsys, files["a_npz"], files["b_uint8"], "--checkpoint", files["ckpt"], *ARGS)
    assert code == 2 and "records no task; give the tasks with --task" in err and err.count("\n") == 1


class _Boom:
    def __reduce__(self):
        return (open, (str(Path(__file__).parent / "UNPICKLED-BY-MASKPROBE"), "w"))


def test_an_npz_of_python_objects_is_refused_unread(tmp_path, capsys, files):
    marker = Path(__file__).parent / "UNPICKLED-BY-MASKPROBE"
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = _Boom(), 1
    np.savez(bad := tmp_path / "evil.npz", **{"0.weight": objects})
    assert pickle.dumps(_Boom())  # the archive really holds a pickle
    code, _, err = _compare(capsys, bad, files["b_npz"])
    assert code == 2 and err.count("\n") == 1 and "holds Python objects" in err and "never unpickles" in err
    assert not marker.exists()


def test_what_is_not_a_mask_is_refused_in_one_line(tmp_path, capsys, files):
    save_file({"0.weight": torch.zeros(16, 42)}, str(weights := tmp_path / "weights.safetensors"))
    code, _, err = _compare(capsys, weights, files["b_npz"])
    assert code == 2 and "'0.weight' is F32: not a mask" in err and err.count("\n") == 1
    np.savez(twos := tmp_path / "twos.npz", **{k: v.numpy().astype(np.uint8) * 2 for k, v in files["a"].items()})
    code, _, err = _compare(capsys, twos, files["b_npz"])
    assert code == 2 and "values other than 0 and 1" in err
    (junk := tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = _compare(capsys, junk, files["b_npz"])
    assert code == 2 and "not a readable .npz archive" in err and err.count("\n") == 1
    with pytest.raises(MaskFileError, match="not a maskprobe mask"):  # only compare's reader opens other tools' masks
        open_masks(files["a_bool"])
