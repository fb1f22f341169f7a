"""Golden bytes of the mask format (docs/mask-format.md): a change to what save_masks writes is always deliberate.

tests/data/golden-mask.safetensors and golden-mask-packed.safetensors are committed; each test rebuilds them from the
inputs below and compares bytes, and reads the committed files back. To change the format on purpose, run
``python tests/test_mask_golden.py`` to rewrite both files, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskprobe.masks.maskfile import FORMAT, load_masks, save_masks

DATA = Path(__file__).parent / "data"
GOLDEN = {False: DATA / "golden-mask.safetensors", True: DATA / "golden-mask-packed.safetensors"}


def golden_masks() -> dict[str, torch.Tensor]:
    return {
        "layers.0.weight": torch.tensor([[True, False, True], [False, False, True]]),
        "layers.0.norm.weight": torch.tensor([True, True, False, True, False, False, True, True, True]),
        "out.weight": torch.zeros(2, 2, dtype=torch.bool),
    }


def golden_metadata() -> dict:
    return {
        "task": {"name": "arith-add", "ref": "arith-add", "args": {"hidden": "3"}},
        "checkpoint": {"path": "addmul.pt", "sha256": "0" * 64},
        "hparams": {"beta": 1e-4, "lr": 0.01, "init": 2.0, "tau": 1.0, "samples": 4, "batch_size": 128},
        "seed": 7,
        "steps": 20000,
        "final_loss": 0.125,
        "density": {"total": 0.5, "layers.0.weight": 0.5},
        "layers": [{"name": "layers.0.weight", "role": "input"}, {"name": "out.weight", "role": "output"}],
        "note": 'ünïcode, "quotes" and a\nnewline',
        "created": "2026-01-01T00:00:00Z",
    }


def write(path: Path, packed: bool) -> None:
    save_masks(path, golden_masks(), golden_metadata(), pack_bits=packed)


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
def test_save_masks_writes_the_golden_bytes(tmp_path, packed):
    out = tmp_path / "m.safetensors"
    write(out, packed)
    assert out.read_bytes() == GOLDEN[packed].read_bytes()


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
def test_the_golden_file_reads_back_as_written(packed):
    ms = load_masks(GOLDEN[packed])
    assert set(ms.masks) == set(golden_masks())
    for name, want in golden_masks().items():
        assert ms.masks[name].dtype == torch.bool
        assert torch.equal(ms.masks[name], want)
    meta = ms.metadata
    assert meta["format"] == FORMAT
    assert meta["task"] == golden_metadata()["task"]
    assert meta["hparams"]["beta"] == 1e-4 and meta["seed"] == 7 and meta["steps"] == 20000
    assert meta["note"] == golden_metadata()["note"]


def test_a_mask_file_is_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders its metadata map differently per process; save_masks sorts it (same content, same bytes)."""
    code = "import sys; sys.path.insert(0, sys.argv[2]); import test_mask_golden as g; g.write(g.Path(sys.argv[1]), False)"
    digests = set()
    for i in range(3):
        out = tmp_path / f"m{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(out), str(Path(__file__).parent)], check=True)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


if __name__ == "__main__":  # rewrite the golden files (a deliberate format change)
    DATA.mkdir(exist_ok=True)
    for packed, path in GOLDEN.items():
        write(path, packed)
        print(path, hashlib.sha256(path.read_bytes()).hexdigest())
