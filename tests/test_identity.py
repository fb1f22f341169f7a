"""A checkpoint is identified by its weights and architecture, not by the files around them (issue 21 item 3;
docs/mask-format.md, "Checkpoint identity"); masks that record only the file's SHA-256 still evaluate."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from maskprobe.cli import run
from maskprobe.errors import MaskFileError
from maskprobe.loading.checkpoints import identify, load_checkpoint
from maskprobe.masks.maskfile import load_masks

HIDDEN = "16,16"
TASK = ["--task", "arith-add", "--task-arg", f"hidden={HIDDEN}", "--task-arg", "eval_size=32"]


def fnn() -> torch.nn.Module:
    from checkpoint_helpers import fnn

    torch.manual_seed(0)
    return fnn(HIDDEN)


def _sharded(state: dict, folder: Path) -> Path:
    folder.mkdir()
    names = list(state)
    shards = {"a.safetensors": names[:3], "b.safetensors": names[3:]}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def _with_checkpoint(src: Path, dst: Path, checkpoint: dict) -> Path:
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    save_file(load_file(src), str(dst), metadata={**meta, "checkpoint": json.dumps(checkpoint)})
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A sharded folder and a mask trained on it (5 steps)."""
    root = tmp_path_factory.mktemp("identity")
    folder = _sharded(fnn().state_dict(), root / "model")
    mask = root / "add.safetensors"
    argv = ["train", str(folder), *TASK, "--steps", "5", "--batch-size", "8", "--seed", "0", "-q", "--out", str(mask)]
    assert run(argv) == 0
    return folder, mask


def _evaluate(capsys, ckpt: Path, mask: Path) -> tuple[int, str]:
    capsys.readouterr()
    code = run(["evaluate", str(ckpt), *TASK, "--mask", str(mask), "--device", "cpu", "--json"])
    return code, capsys.readouterr().err


def test_a_mask_records_the_identity_not_the_files_hash(trained):
    folder, mask = trained
    recorded = load_masks(mask).metadata["checkpoint"]
    assert "sha256" not in recorded
    assert recorded["identity"] == load_checkpoint(folder, fnn).identity == identify(fnn())
    assert recorded["identity"]["architecture"] == "Sequential" and recorded["identity"]["scheme"] == "maskprobe.weights/1"


def test_an_unrelated_file_in_the_folder_keeps_the_identity(trained, capsys, tmp_path):
    folder, mask = trained
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    (copy / "notes.txt").write_text("trained on Tuesday\n")
    assert load_checkpoint(copy, fnn).identity == load_masks(mask).metadata["checkpoint"]["identity"]
    code, err = _evaluate(capsys, copy, mask)
    assert (code, err) == (0, "")


def test_the_same_weights_elsewhere_or_in_another_format_are_one_identity(tmp_path, capsys, trained):
    _, mask = trained
    state = fnn().state_dict()
    (tmp_path / "one").mkdir()
    (tmp_path / "other").mkdir()
    save_file(state, str(a := tmp_path / "one" / "model.safetensors"))
    shutil.copy(a, b := tmp_path / "other" / "model.safetensors")
    torch.save(state, c := tmp_path / "model.pt")
    ids = {load_checkpoint(p, fnn).identity["weights"] for p in (a, b, c)}
    ids.add(load_checkpoint(a, fnn, meta=True).identity["weights"])  # memory-mapped, tensor by tensor
    ids.add(load_checkpoint(c, fnn, meta=True).identity["weights"])
    assert len(ids) == 1
    code, err = _evaluate(capsys, b, mask)  # the mask was trained on the sharded folder
    assert (code, err) == (0, "")


def test_a_changed_weight_changes_the_identity_and_the_mask_is_refused(tmp_path, capsys, trained):
    _, mask = trained
    state = fnn().state_dict()
    state["0.weight"][0, 0] += 1e-3
    save_file(state, str(path := tmp_path / "changed.safetensors"))
    assert load_checkpoint(path, fnn).identity != identify(fnn())
    code, err = _evaluate(capsys, path, mask)
    assert code == 2 and err.startswith("maskprobe: error: ") and "trained on another checkpoint (weights " in err
    assert err.count("\n") == 1
    capsys.readouterr()
    assert run(["evaluate", str(path), *TASK, "--mask", str(mask), "--allow-mismatch", "--json"]) == 0


def test_the_architecture_is_part_of_the_identity():
    class Other(torch.nn.Sequential):
        pass

    a = fnn()
    b = Other(*fnn())
    assert identify(a)["weights"] == identify(b)["weights"] and identify(a) != identify(b)


def test_mixed_dtypes_memory_mapped_equal_loaded(tmp_path):
    state = fnn().state_dict()
    state["0.weight"] = state["0.weight"].half()  # the module keeps float32: each tensor is cast as loading casts it
    save_file(state, str(path := tmp_path / "mixed.safetensors"))
    loaded = load_checkpoint(path, fnn)
    assert loaded.identity == load_checkpoint(path, fnn, meta=True).identity == identify(loaded.model)


def test_tied_hf_folder_memory_mapped_equals_loaded(tmp_path):
    pytest.importorskip("transformers")
    from checkpoint_helpers import tiny_gpt2

    tiny_gpt2().save_pretrained(tmp_path / "gpt2")  # lm_head.weight is stored once, tied to the embedding
    loaded = load_checkpoint(tmp_path / "gpt2")
    assert loaded.identity["architecture"] == "GPT2LMHeadModel"
    assert load_checkpoint(tmp_path / "gpt2", meta=True).identity == loaded.identity
    (tmp_path / "gpt2" / "README.md").write_text("a model card\n")
    assert load_checkpoint(tmp_path / "gpt2").identity == loaded.identity


def test_an_old_mask_with_only_the_file_hash_still_evaluates(tmp_path, capsys, trained):
    folder, mask = trained
    save_file(fnn().state_dict(), str(path := tmp_path / "m.safetensors"))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    old = _with_checkpoint(mask, tmp_path / "old.safetensors", {"path": str(path), "sha256": sha, "format": "safetensors"})
    assert _evaluate(capsys, path, old) == (0, "")
    wrong = _with_checkpoint(mask, tmp_path / "wrong.safetensors", {"path": str(path), "sha256": "0" * 64})
    code, err = _evaluate(capsys, path, wrong)
    assert code == 2 and "trained on another checkpoint (sha256 000000000000, this one " in err
    # compare: an old and a new mask of one checkpoint cannot be told apart by what they record, and are not refused
    capsys.readouterr()
    assert run(["compare", str(old), str(mask), "--json"]) == 0


def test_masks_of_different_identities_are_refused_by_compare(tmp_path, capsys, trained):
    _, mask = trained
    recorded = load_masks(mask).metadata["checkpoint"]
    other = _with_checkpoint(
        mask, tmp_path / "other.safetensors", {**recorded, "identity": {**recorded["identity"], "weights": "f" * 64}}
    )
    capsys.readouterr()
    assert run(["compare", str(mask), str(other), "--json"]) == 2
    err = capsys.readouterr().err
    assert "come from different checkpoints (weights " in err and "vs weights ffffffffffff" in err


def test_a_malformed_identity_is_refused_in_one_line(tmp_path, trained):
    _, mask = trained
    bad = _with_checkpoint(mask, tmp_path / "bad.safetensors", {"identity": "abc"})
    with pytest.raises(MaskFileError, match=r"metadata field 'checkpoint' 'identity' must be a JSON object"):
        load_masks(bad)
