"""``maskprobe inspect``: a checkpoint's parameters and what the selection flags would mask; a mask
file's metadata and density per tensor (text and ``--json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from maskprobe.cli import run
from maskprobe.masks.maskfile import save_masks

HELPERS = Path(__file__).parent / "checkpoint_helpers.py"
WEIGHTS = {"0.weight": (16, 42), "0.bias": (16,), "2.weight": (16, 16), "2.bias": (16,), "4.weight": (20, 16), "4.bias": (20,)}


def fnn() -> torch.nn.Module:
    from checkpoint_helpers import fnn

    torch.manual_seed(0)
    return fnn("16,16")


def inspect_json(capsys, *argv: str) -> dict:
    code = run(["inspect", *argv, "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    return json.loads(cap.out)


def test_state_dict_parameters_and_default_selection(tmp_path, capsys):
    torch.save({"state_dict": fnn().state_dict(), "epoch": 2}, p := tmp_path / "m.ckpt")
    doc = inspect_json(capsys, str(p))
    assert doc["kind"] == "checkpoint" and doc["format"] == "torch-zip"
    rows = {r["name"]: r for r in doc["parameters"]}
    assert {n: tuple(r["shape"]) for n, r in rows.items()} == WEIGHTS
    assert all(r["dtype"] == "float32" for r in rows.values())
    assert rows["0.weight"]["numel"] == 672 and rows["0.weight"]["masked"] is True
    assert rows["0.bias"]["masked"] is False and rows["0.bias"]["reason"] == "bias"
    assert doc["total"] == {"tensors": 6, "masked_tensors": 3, "numel": 1300, "masked": 672 + 256 + 320}


def test_selection_flags_change_what_would_be_masked(tmp_path, capsys):
    save_file(fnn().state_dict(), str(p := tmp_path / "m.safetensors"))
    doc = inspect_json(capsys, str(p), "--mask-biases", "--exclude", "4.*")
    masked = sorted(r["name"] for r in doc["parameters"] if r["masked"])
    assert masked == ["0.bias", "0.weight", "2.bias", "2.weight"]
    doc = inspect_json(capsys, str(p), "--include", "2.*")
    assert sorted(r["name"] for r in doc["parameters"] if r["masked"]) == ["2.bias", "2.weight"]
    assert doc["total"]["masked"] == 256 + 16


def test_text_output_lists_parameters_and_totals(tmp_path, capsys):
    torch.save(fnn().state_dict(), p := tmp_path / "m.pt")
    assert run(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "torch-zip" in out
    for name in WEIGHTS:
        assert name in out
    assert "16x42" in out and "no (bias)" in out
    assert "1,300" in out and "1,248 masked (96.0%)" in out


def test_torchscript_shows_module_parameters(tmp_path, capsys):
    torch.jit.save(torch.jit.script(fnn()), p := tmp_path / "m.ts")
    doc = inspect_json(capsys, str(p))
    assert doc["format"] == "torchscript" and doc["note"] == "module in the file"
    assert {r["name"] for r in doc["parameters"]} == set(WEIGHTS)


def test_architecture_from_model_factory(tmp_path, capsys):
    torch.save(fnn().state_dict(), p := tmp_path / "m.pt")
    doc = inspect_json(capsys, str(p), "--model", f"{HELPERS}:fnn", "--model-arg", "hidden=16,16")
    assert doc["note"] == "architecture built" and doc["total"]["masked"] == 1248


def test_int8_parameter_is_shown_as_unmaskable(tmp_path, capsys):
    from checkpoint_helpers import quantised_fnn

    torch.save(quantised_fnn("16,16").state_dict(), p := tmp_path / "q.pt")
    doc = inspect_json(capsys, str(p), "--include", "*")
    q = next(r for r in doc["parameters"] if r["name"] == "q")
    assert q["dtype"] == "int8" and q["masked"] is False and q["reason"] == "not floating point"


def test_hf_folder_shows_embeddings_unmasked_and_tied_weights_once(tmp_path, capsys):
    pytest.importorskip("transformers")
    from checkpoint_helpers import tiny_gpt2

    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "gpt2")
    doc = inspect_json(capsys, str(tmp_path / "gpt2"))
    rows = {r["name"]: r for r in doc["parameters"]}
    assert doc["format"] == "hf-folder"
    assert set(rows) == {n for n, _ in model.named_parameters()}  # lm_head.weight is tied to wte: not listed twice
    assert rows["transformer.wte.weight"]["reason"] == "embedding" and not rows["transformer.wpe.weight"]["masked"]
    assert rows["transformer.h.0.mlp.c_fc.weight"]["masked"]


def test_mask_file_metadata_and_density_per_tensor(tmp_path, capsys):
    masks = {"0.weight": torch.zeros(16, 42, dtype=torch.bool), "2.weight": torch.ones(16, 16, dtype=torch.bool)}
    masks["0.weight"][:4] = True  # 4 of 16 rows: 25 %
    meta = {"format": "maskprobe.mask/1", "task": {"name": "arith-add", "ref": "arith-add", "args": {}}, "seed": 7}
    for packed in (False, True):
        p = save_masks(tmp_path / f"m{int(packed)}.safetensors", masks, meta, pack_bits=packed)
        doc = inspect_json(capsys, str(p))
        assert doc["kind"] == "mask" and doc["metadata"]["task"]["name"] == "arith-add"
        layers = {r["name"]: r for r in doc["layers"]}
        assert layers["0.weight"]["kept"] == 168 and layers["0.weight"]["density"] == pytest.approx(0.25)
        assert layers["2.weight"]["density"] == 1.0 and layers["2.weight"]["shape"] == [16, 16]
        assert doc["total"] == {"kept": 168 + 256, "numel": 672 + 256, "density": pytest.approx(424 / 928)}
    assert run(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "arith-add" in out and "25.0%" in out and "424 / 928" in out


@pytest.mark.parametrize("name", ["missing.pt", "empty.pt", "evil.pt"])
def test_bad_files_are_one_line_errors(tmp_path, capsys, name):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "evil.pt").write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    assert run(["inspect", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskprobe: error:") and err.count("\n") == 1 and "Traceback" not in err
