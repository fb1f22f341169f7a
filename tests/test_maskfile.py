"""Mask files: round trip, metadata, readable by plain safetensors, atomic."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskprobe.errors import BadInputError, MaskFileError
from maskprobe.masks.maskfile import FORMAT, load_masks, open_masks, save_masks


def _masks():
    g = torch.Generator().manual_seed(0)
    return {"layer.0.weight": torch.rand(5, 7, generator=g) > 0.5, "norm.weight": torch.tensor([True, False, True])}


def test_round_trip_with_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = {
        "task": {"name": "t", "ref": "t", "args": {"x": 1}},
        "seed": 3,
        "hparams": {"beta": 1e-4, "batch_size": 128},
        "checkpoint": {"sha256": "ab" * 32, "path": "c.pt"},
    }
    save_masks(path, _masks(), meta)
    ms = load_masks(path)
    for k, v in _masks().items():
        assert torch.equal(ms.masks[k], v)
        assert ms.masks[k].dtype == torch.bool
    assert ms.metadata["format"] == FORMAT
    assert ms.metadata["task"] == {"name": "t", "ref": "t", "args": {"x": 1}}
    assert ms.metadata["seed"] == 3 and ms.metadata["hparams"]["beta"] == 1e-4
    assert ms.task_name == "t"
    assert ms.kept == sum(int(v.sum()) for v in _masks().values())
    with open_masks(path) as r:
        assert sorted(r.names) == sorted(_masks())
        assert r.shape("layer.0.weight") == (5, 7)
        assert r.get("norm.weight").tolist() == [True, False, True]


def test_plain_safetensors_can_read_and_multiply(tmp_path):
    path = tmp_path / "m.safetensors"
    save_masks(path, _masks(), {})
    plain = load_file(str(path))
    w = torch.ones(5, 7)
    assert torch.equal(w * plain["layer.0.weight"], _masks()["layer.0.weight"].float())
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = f.metadata()
    assert raw["format"] == FORMAT and "created" in raw
    assert all(isinstance(v, str) for v in raw.values())


def test_non_mask_safetensors_and_garbage_are_refused(tmp_path):
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(MaskFileError, match="not a maskprobe mask"):
        load_masks(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(MaskFileError):
        load_masks(junk)
    with pytest.raises(MaskFileError, match="not found"):
        load_masks(tmp_path / "missing.safetensors")


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_masks(path, _masks(), {"seed": 1})
    before = path.read_bytes()

    import safetensors.torch

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 10)  # a partial file, then the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(BadInputError, match="disk full"):
        save_masks(path, _masks(), {"seed": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind
