"""Every checkpoint format of DESIGN §4 loads with tensors equal to the originals and trains a mask
through the CLI; bad checkpoints get one line on stderr and exit 2 (docs/checkpoints.md)."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskprobe.checkpoints import detect_format, load_checkpoint, read_state_dict, sha256_of
from maskprobe.cli import run
from maskprobe.errors import CheckpointError

HERE = Path(__file__).parent
HELPERS = HERE / "checkpoint_helpers.py"
HIDDEN = "16,16"
TASK = ["--task", "arith-add", "--task-arg", f"hidden={HIDDEN}", "--task-arg", "eval_size=32"]
FAST = ["--steps", "5", "--batch-size", "8", "--seed", "0", "-q"]
MASKED = ["0.weight", "2.weight", "4.weight"]  # weights of the FNN; biases are not masked by default


def fnn() -> torch.nn.Module:
    from checkpoint_helpers import fnn

    torch.manual_seed(0)
    return fnn(HIDDEN)


def _save_sharded(state: dict, folder: Path) -> Path:
    folder.mkdir()
    names = list(state)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def _save(kind: str, model: torch.nn.Module, tmp: Path) -> Path:
    """Write ``model`` the way ``kind`` names; returns the path to hand to maskprobe."""
    state = model.state_dict()
    if kind == "torch-zip":
        torch.save(state, p := tmp / "m.pt")
    elif kind == "torch-legacy":
        torch.save(state, p := tmp / "m.pth", _use_new_zipfile_serialization=False)
    elif kind == "lightning":  # Lightning: nested under state_dict, "model." prefix, other entries beside it
        torch.save(
            {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 70}, p := tmp / "m.ckpt"
        )
    elif kind == "ddp":  # a DDP-wrapped module saved under "model", with optimizer state beside it
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {"lr": 0.1}}, p := tmp / "m.bin")
    elif kind == "safetensors":
        save_file(state, str(p := tmp / "m.safetensors"))
    elif kind == "safetensors-misnamed":  # content wins over the suffix
        save_file(state, str(p := tmp / "weights.pt"))
    elif kind == "sharded-folder":
        p = _save_sharded(state, tmp / "sharded")
    elif kind == "sharded-index":
        p = _save_sharded(state, tmp / "sharded") / "model.safetensors.index.json"
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(model), p := tmp / "m.torchscript.pt")
    elif kind == "pickled-module":
        torch.save(model, p := tmp / "whole.pt")
    else:
        raise AssertionError(kind)
    return p


FORMATS = {
    "torch-zip": "torch-zip",
    "torch-legacy": "torch-legacy",
    "lightning": "torch-zip",
    "ddp": "torch-zip",
    "safetensors": "safetensors",
    "safetensors-misnamed": "safetensors",
    "sharded-folder": "safetensors-sharded",
    "sharded-index": "safetensors-sharded",
    "torchscript": "torchscript",
    "pickled-module": "torch-zip",
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_each_format_loads_equal_tensors_and_trains_a_mask(kind, tmp_path, capsys):
    model = fnn()
    path = _save(kind, model, tmp_path)
    before = sha256_of(path)
    assert detect_format(path) == FORMATS[kind]

    ckpt = load_checkpoint(path, fnn, trust=kind == "pickled-module")
    loaded = ckpt.model.state_dict()
    assert sorted(loaded) == sorted(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    assert ckpt.format == ("pickled-module" if kind == "pickled-module" else FORMATS[kind])

    out = tmp_path / "mask.safetensors"
    trust = ["--trust-checkpoint"] if kind == "pickled-module" else []
    code = run(["train", str(path), *TASK, *FAST, *trust, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    masks = load_file(str(out))
    assert sorted(masks) == MASKED
    assert all(masks[n].dtype == torch.bool and masks[n].shape == model.state_dict()[n].shape for n in MASKED)
    assert sha256_of(path) == before  # the user's checkpoint is never written


def test_weights_only_file_with_model_factory(tmp_path, capsys):
    """--model file.py:factory with --model-arg gives the architecture; the task's build_model is not used."""
    model = fnn()
    path = _save("safetensors", model, tmp_path)
    out = tmp_path / "mask.safetensors"
    # the task would build a 24,24 net, which does not fit: only --model can make this work
    task = ["--task", "arith-add", "--task-arg", "hidden=24,24", "--task-arg", "eval_size=32"]
    argv = ["train", str(path), *task, *FAST, "--model", f"{HELPERS}:fnn", "--model-arg", f"hidden={HIDDEN}", "--out", str(out)]
    assert run(argv) == 0, capsys.readouterr().err
    assert sorted(load_file(str(out))) == MASKED


def test_mismatch_lists_missing_unexpected_and_misshaped(tmp_path):
    state = fnn().state_dict()
    state["extra.weight"] = torch.zeros(2)
    state["0.weight"] = torch.zeros(3, 3)
    del state["4.bias"]
    torch.save(state, p := tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p, fnn)
    msg = str(err.value)
    assert "missing: 4.bias" in msg and "unexpected: extra.weight" in msg
    assert "mis-shaped: 0.weight (3, 3) vs model (16, 42)" in msg


def _script_grads(module, x, logits):
    from maskprobe.masked import MaskedModel

    params = dict(module.named_parameters())
    gated = {n: params[n] * torch.sigmoid(logit) for n, logit in logits.items()}
    MaskedModel(module, gated)(x).pow(2).sum().backward()
    return {n: logit.grad.clone() for n, logit in logits.items()}


def test_torchscript_gates_reach_the_logits_like_the_eager_module(tmp_path):
    """The scripted module runs on the gated weights: same output and same logit gradients as eager."""
    from maskprobe.masked import frozen

    model = fnn()
    path = _save("torchscript", model, tmp_path)
    scripted = load_checkpoint(path).model
    x = torch.randn(5, 42)
    grads = []
    for module in (model, scripted):
        with frozen(module):
            torch.manual_seed(1)
            logits = {n: torch.randn(dict(module.named_parameters())[n].shape, requires_grad=True) for n in MASKED}
            grads.append(_script_grads(module, x, logits))
    for n in MASKED:
        assert grads[1][n].abs().sum() > 0
        torch.testing.assert_close(grads[1][n], grads[0][n])
    # the originals are back in the loaded module after the call
    for name, tensor in model.state_dict().items():
        assert torch.equal(scripted.state_dict()[name], tensor)
    assert torch.equal(scripted(x), model(x))


def test_torchscript_learns_the_same_mask_as_the_eager_checkpoint(tmp_path, capsys):
    """Same seed, same weights: the mask learned on the TorchScript archive equals the state dict's."""
    model = fnn()
    many = ["--steps", "6", "--batch-size", "16", "--init", "0.05", "--lr", "0.1", "--seed", "3", "-q"]
    masks = []
    for kind in ("torch-zip", "torchscript"):
        path = _save(kind, model, tmp_path)
        out = tmp_path / f"{kind}.safetensors"
        assert run(["train", str(path), *TASK, *many, "--out", str(out)]) == 0, capsys.readouterr().err
        masks.append(load_file(str(out)))
    flipped = sum(int((~m).sum()) for m in masks[0].values())
    assert flipped > 0  # the run moved some logits below 0: the comparison is not of two all-ones masks
    for n in MASKED:
        assert torch.equal(masks[0][n], masks[1][n]), n


def test_read_state_dict_without_architecture(tmp_path):
    model = fnn()
    for kind in ("lightning", "sharded-index", "torchscript"):
        (folder := tmp_path / kind).mkdir()
        fmt, state = read_state_dict(_save(kind, model, folder))
        assert fmt == FORMATS[kind]
        assert {k.removeprefix("model."): v for k, v in state.items()}.keys() == model.state_dict().keys()
        for name, tensor in state.items():
            assert torch.equal(tensor, model.state_dict()[name.removeprefix("model.")])


# ---------------------------------------------------------------------------------------------- bad input

MARKER = "PWNED_BY_PICKLE"


class _Evil:
    """Unpickling this calls ``open(MARKER, 'w')``: the marker's existence proves code ran."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra argv starting with the checkpoint path, a phrase the error line must contain)."""
    good = _save("torch-zip", fnn(), tmp)
    raw = good.read_bytes()
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp / "notes.txt.pt").write_text("these are not weights\n")
    header = b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]'  # unterminated JSON
    (tmp / "corrupt.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    huge = struct.pack("<Q", 10_000) + b'{"w": 1}'  # header length beyond the file
    (tmp / "short-header.safetensors").write_bytes(huge)
    (tmp / "evil.pt").write_bytes(pickle.dumps({"0.weight": _Evil(tmp / MARKER)}))
    torch.save({"weights": _Evil(tmp / MARKER)}, tmp / "evil-zip.pt")
    torch.save(fnn(), tmp / "whole.pt")
    (tmp / "empty-folder").mkdir()
    (tmp / "hf-no-weights").mkdir()
    (tmp / "hf-no-weights" / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    from checkpoint_helpers import quantised_fnn

    torch.save(quantised_fnn(HIDDEN).state_dict(), tmp / "int8.pt")
    q_model = ["--model", f"{HELPERS}:quantised_fnn", "--model-arg", f"hidden={HIDDEN}"]
    return {
        "missing": ([str(tmp / "nope.pt")], "not found"),
        "empty": ([str(tmp / "empty.pt")], "is empty"),
        "truncated": ([str(tmp / "truncated.pt")], "damaged"),
        "not-a-checkpoint": ([str(tmp / "notes.txt.pt")], "not a checkpoint"),
        "corrupt-safetensors-header": ([str(tmp / "corrupt.safetensors")], "safetensors"),
        "safetensors-header-past-end": ([str(tmp / "short-header.safetensors")], "safetensors"),
        "malicious-pickle": ([str(tmp / "evil.pt")], "would import io.open"),
        "malicious-pickle-zip": ([str(tmp / "evil-zip.pt")], "would import io.open"),
        "whole-module-untrusted": ([str(tmp / "whole.pt")], "--trust-checkpoint"),
        "folder-without-weights": ([str(tmp / "empty-folder")], "folder"),
        "hf-folder-without-weights": ([str(tmp / "hf-no-weights")], "hf-no-weights"),
        "int8-selected": ([str(tmp / "int8.pt"), *q_model, "--include", "*"], "int8"),
    }


BAD_CASES = [
    "missing", "empty", "truncated", "not-a-checkpoint", "corrupt-safetensors-header", "safetensors-header-past-end",
    "malicious-pickle", "malicious-pickle-zip", "whole-module-untrusted", "folder-without-weights",
    "hf-folder-without-weights", "int8-selected",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_checkpoint_is_one_line_on_stderr_and_exit_2(case, tmp_path, capsys):
    argv, phrase = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code = run(["train", argv[0], *TASK, *FAST, "--out", str(out), *argv[1:]])
    cap = capsys.readouterr()
    assert code == 2, cap.err
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("maskprobe: error:"), cap.err
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in cap.err
    assert not (tmp_path / MARKER).exists()  # the pickle's payload never ran
    assert not out.exists() or not any(out.iterdir())


def test_malicious_pickle_does_not_run_even_through_inspect(tmp_path, capsys):
    _bad_inputs(tmp_path)
    for name in ("evil.pt", "evil-zip.pt"):
        assert run(["inspect", str(tmp_path / name)]) == 2
        assert "--trust-checkpoint" in capsys.readouterr().err
    assert not (tmp_path / MARKER).exists()


def test_the_marker_payload_really_runs_when_trusted(tmp_path):
    """Guards the test above: the payload is live, so its absence there means the loader refused it."""
    _bad_inputs(tmp_path)
    torch.load(tmp_path / "evil-zip.pt", weights_only=False)
    assert (tmp_path / MARKER).exists()


# ------------------------------------------------------------------------------------- Hugging Face folders


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny GPT-2 from a small config, ``save_pretrained`` as safetensors and as pytorch_model.bin."""
    pytest.importorskip("transformers")
    from checkpoint_helpers import tiny_gpt2

    model = tiny_gpt2()
    root = tmp_path_factory.mktemp("hf")
    model.save_pretrained(root / "safetensors")
    # transformers 5 writes only safetensors; older releases and many hub repos hold pytorch_model.bin
    model.config.save_pretrained(root / "bin")
    torch.save(model.state_dict(), root / "bin" / "pytorch_model.bin")
    return model, root


@pytest.mark.parametrize("variant", ["safetensors", "bin"])
def test_hf_folder_loads_equal_tensors_offline(hf_folders, variant):
    model, root = hf_folders
    folder = root / variant
    assert (folder / ("model.safetensors" if variant == "safetensors" else "pytorch_model.bin")).is_file()
    assert detect_format(folder) == "hf-folder"
    ckpt = load_checkpoint(folder)
    assert type(ckpt.model).__name__ == "GPT2LMHeadModel" and ckpt.format == "hf-folder"
    loaded = ckpt.model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_hf_folder_trains_a_mask_and_leaves_embeddings_alone(hf_folders, tmp_path, capsys):
    model, root = hf_folders
    out = tmp_path / "lm.safetensors"
    task = ["--task", f"{HELPERS}:TinyLMTask", "--task-arg", "eval_size=16"]
    code = run(["train", str(root / "safetensors"), *task, *FAST, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    masks = load_file(str(out))
    params = dict(model.named_parameters())
    expected = sorted(n for n, p in params.items() if not n.endswith(".bias") and "wte" not in n and "wpe" not in n)
    assert sorted(masks) == expected
    assert "transformer.h.0.attn.c_attn.weight" in masks
    assert not any("wte" in n or "wpe" in n for n in masks)  # nn.Embedding: not masked by default
    for name, m in masks.items():
        assert m.shape == params[name].shape and m.dtype == torch.bool


def test_shard_index_cannot_point_outside_its_folder(tmp_path):
    """A crafted index must not make maskprobe read (and report on) files elsewhere on the machine."""
    save_file(fnn().state_dict(), str(tmp_path / "outside.safetensors"))
    (folder := tmp_path / "sharded").mkdir()
    index = {"weight_map": {"0.weight": "../outside.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="is not a file name in"):
        read_state_dict(folder)


def test_refusal_names_the_global_the_pickle_wanted(tmp_path):
    _bad_inputs(tmp_path)
    with pytest.raises(CheckpointError, match=r"would import (io|builtins)\.open.*--trust-checkpoint"):
        read_state_dict(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"would import torch\.nn\.modules\.container\.Sequential"):
        read_state_dict(tmp_path / "whole.pt")
    assert not (tmp_path / MARKER).exists()


def test_tokenizer_comes_from_the_same_folder_offline(hf_folders, tmp_path):
    """hf_tokenizer() reads the tokenizer save_pretrained() put beside the weights; none there is a clean error."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from maskprobe.checkpoints import hf_tokenizer

    _, root = hf_folders
    vocab = {"[UNK]": 0, **{f"t{i}": i + 1 for i in range(8)}}
    raw = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = Whitespace()
    folder = tmp_path / "with-tokenizer"
    import shutil

    shutil.copytree(root / "safetensors", folder)
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(folder)
    assert hf_tokenizer(folder)("t3 t1 zz")["input_ids"] == [4, 2, 0]
    assert type(load_checkpoint(folder).model).__name__ == "GPT2LMHeadModel"  # the tokenizer files do not disturb loading
    with pytest.raises(CheckpointError, match="no tokenizer could be loaded"):
        hf_tokenizer(root / "safetensors")


def test_evaluate_on_torchscript_applies_the_mask_like_the_state_dict(tmp_path, capsys):
    """`evaluate --mask` through the TorchScript path gives the state dict's numbers, and the mask matters."""
    model = fnn()
    paths = {kind: _save(kind, model, tmp_path) for kind in ("torch-zip", "torchscript")}
    out = tmp_path / "add.safetensors"
    many = ["--steps", "6", "--batch-size", "16", "--init", "0.05", "--lr", "0.1", "--seed", "3", "-q"]
    assert run(["train", str(paths["torch-zip"]), *TASK, *many, "--out", str(out)]) == 0
    capsys.readouterr()
    results = {}
    for kind, path in paths.items():
        # the mask records the state dict's SHA-256; the archive is another file holding the same weights
        argv = ["evaluate", str(path), *TASK, "--mask", str(out), "--allow-mismatch", "--json"]
        assert run(argv) == 0, capsys.readouterr().err
        results[kind] = json.loads(capsys.readouterr().out)["results"][0]
    eager, scripted = results["torch-zip"], results["torchscript"]
    assert scripted["masked"]["loss"] == pytest.approx(eager["masked"]["loss"], rel=1e-5)
    assert scripted["unmasked"]["loss"] == pytest.approx(eager["unmasked"]["loss"], rel=1e-5)
    assert scripted["masked"]["loss"] != pytest.approx(scripted["unmasked"]["loss"], rel=1e-4)
