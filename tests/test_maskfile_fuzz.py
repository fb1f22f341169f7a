"""Hypothesis fuzzing of the mask-file reader: whatever the bytes, the reader either returns a valid
:class:`MaskSet` (bool tensors of 0/1 bytes) or raises :class:`MaskFileError`; never another exception,
never a crash. The same for the streaming reader and for ``maskprobe inspect`` (exit 2, no traceback)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskprobe.errors import MaskFileError
from maskprobe.masks.maskfile import load_masks, open_masks, save_masks

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_bytes(tmp_path) -> bytes:
    path = tmp_path / "valid.safetensors"
    g = torch.Generator().manual_seed(0)
    save_masks(path, {"a.weight": torch.rand(6, 5, generator=g) > 0.5, "b": torch.tensor([True, False, True])},
               {"task": {"name": "t", "ref": "t", "args": {}}, "seed": 1})  # fmt: skip
    return path.read_bytes()


def check_reader(path) -> None:
    """Both readers: a valid result or MaskFileError, nothing else."""
    try:
        ms = load_masks(path)
    except MaskFileError:
        pass
    else:
        for t in ms.masks.values():
            assert t.dtype == torch.bool and (int(t.view(torch.uint8).max()) if t.numel() else 0) <= 1
        _ = (ms.kept, ms.numel, ms.density, ms.task_name)
    try:
        with open_masks(path) as r:
            for name in r.names:
                arr = r.get(name)
                assert arr.dtype == bool and (arr.size == 0 or arr.view(np.uint8).max() <= 1)
                _ = r.shape(name)
            _ = r.task_name
    except MaskFileError:
        pass


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    check_reader(path)


@FUZZ
@given(data=st.data())
def test_truncated_and_bit_flipped_valid_files(tmp_path, data):
    raw = bytearray(valid_bytes(tmp_path))
    cut = data.draw(st.integers(0, len(raw)))
    raw = raw[:cut]
    for _ in range(data.draw(st.integers(0, 3))):
        if raw:
            low = data.draw(st.sampled_from([0, max(0, len(raw) - 40)]))  # anywhere, or in the tensor data
            i = data.draw(st.integers(low, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(bytes(raw))
    check_reader(path)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(
    header=st.dictionaries(
        st.sampled_from(["__metadata__", "a", "b.weight"]),
        st.fixed_dictionaries({}, optional={"dtype": st.sampled_from(["BOOL", "F32", "U8", "X"]) | JSONISH,
                                            "shape": st.lists(st.integers(-2, 5), max_size=3) | JSONISH,
                                            "data_offsets": st.lists(st.integers(-2, 40), max_size=3) | JSONISH})
        | JSONISH,
        max_size=3,
    ),
    body=st.binary(max_size=40),
    fmt=st.booleans(),
)  # fmt: skip
def test_hostile_headers(tmp_path, header, body, fmt):
    """Structured attacks on the JSON header: wrong dtypes, negative shapes, overlapping offsets, bad metadata."""
    if fmt and isinstance(header.get("__metadata__"), dict | None):
        header["__metadata__"] = {**(header.get("__metadata__") or {}), "format": "maskprobe.mask/1"}
    blob = json.dumps(header).encode()
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)
    check_reader(path)


def test_bool_bytes_other_than_0_and_1_are_rejected(tmp_path):
    raw = bytearray(valid_bytes(tmp_path))
    raw[-1] = 7  # the last data byte belongs to a bool tensor
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(raw))
    with pytest.raises(MaskFileError, match="not 0 or 1"):
        load_masks(path)
    with pytest.raises(MaskFileError, match="not 0 or 1"), open_masks(path) as r:
        for n in r.names:
            r.get(n)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 8, struct.pack("<Q", 2**62), struct.pack("<Q", 4) + b"{}}}", b"PK\x03\x04garbage"],
    ids=["empty", "zero-header", "huge-header", "bad-json", "zip"],
)
def test_inspect_on_damaged_file_is_one_line(tmp_path, capsys, content):
    from maskprobe.cli import run

    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    assert run(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
