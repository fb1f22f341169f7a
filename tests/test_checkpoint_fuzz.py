"""Property tests: random, truncated and corrupted bytes given to the checkpoint reader end in a
:class:`MaskprobeError` (a one-line message the CLI prints), never another exception and never run code."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from maskprobe.errors import MaskprobeError
from maskprobe.loading.checkpoints import detect_format, load_checkpoint, read_state_dict

MARKER = "FUZZ_PWNED"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    """Valid files of every single-file format (and a malicious pickle) whose bytes the tests damage."""
    root = tmp_path_factory.mktemp("seeds")
    model = fnn()
    torch.save(model.state_dict(), root / "zip.pt")
    torch.save(model.state_dict(), root / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(model.state_dict(), str(root / "st.safetensors"))
    torch.jit.save(torch.jit.script(model), root / "ts.pt")
    torch.save({"state_dict": model.state_dict(), "evil": _Evil(str(root / MARKER))}, root / "evil.pt")
    (root / "evil-legacy.pt").write_bytes(pickle.dumps(_Evil(str(root / MARKER)), protocol=2))
    return root


def _read_all_ways(path: Path) -> None:
    """Every entry point; each must succeed or raise MaskprobeError."""
    for call in (lambda: detect_format(path), lambda: read_state_dict(path), lambda: load_checkpoint(path, fnn)):
        try:
            call()
        except MaskprobeError as exc:
            assert str(exc) and "\n" not in str(exc)


@SETTINGS
@given(data=st.data())
def test_damaged_checkpoints_raise_maskprobe_error(seeds, tmp_path, data):
    root = seeds
    name = data.draw(st.sampled_from(sorted(p.name for p in root.iterdir() if p.name != MARKER)))
    raw = bytearray((root / name).read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 6))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    else:  # a valid head followed by junk
        raw = raw[: data.draw(st.integers(1, len(raw)))] + data.draw(st.binary(max_size=64))
    path = tmp_path / "fuzz.bin"
    path.write_bytes(bytes(raw))
    _read_all_ways(path)
    assert not (root / MARKER).exists()


MAGIC = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x10\x00\x00\x00\x00\x00\x00\x00{"]


@SETTINGS
@given(head=st.sampled_from(MAGIC), body=st.binary(max_size=300))
def test_random_bytes_raise_maskprobe_error(tmp_path, head, body):
    """Random bytes, also behind each format's magic so the reader gets past detection."""
    path = tmp_path / "random.pt"
    path.write_bytes(head + body)
    _read_all_ways(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(index=st.dictionaries(st.sampled_from(["weight_map", "metadata", "x"]), json_values, max_size=3))
def test_malformed_shard_index_raises_maskprobe_error(tmp_path, index):
    """Any JSON as ``model.safetensors.index.json`` (wrong types, missing shards, paths outside the folder)."""
    folder = tmp_path / "sharded"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _read_all_ways(folder)
    _read_all_ways(folder / "model.safetensors.index.json")
