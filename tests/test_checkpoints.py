"""Every checkpoint format of DESIGN §4 loads with tensors equal to the originals and trains a mask
through the CLI; bad checkpoints get one line on stderr and exit 2 (docs/checkpoints.md)."""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskprobe import Task
from maskprobe.cli import run
from maskprobe.errors import CheckpointError, PluginError
from maskprobe.loading.checkpoints import detect_format, load_checkpoint, read_state_dict, sha256_of

HERE = Path(__file__).parent
HELPERS = HERE / "checkpoint_helpers.py"
HIDDEN = "16,16"
TASK = ["--task", "arith-add", "--task-arg", f"hidden={HIDDEN}", "--task-arg", "eval_size=32"]
FAST = ["--steps", "5", "--batch-size", "8", "--seed", "0", "-q"]
MASKED = ["0.weight", "2.weight", "4.weight"]  # weights of the FNN; biases are not masked by default
OPEN_GLOBAL = re.compile(r"would import [\w.]*\bopen\b")  # builtins.open is io.open, _io.open, ... by version


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
    from maskprobe.learning.masked import MaskedModel

    params = dict(module.named_parameters())
    gated = {n: params[n] * torch.sigmoid(logit) for n, logit in logits.items()}
    MaskedModel(module, gated)(x).pow(2).sum().backward()
    return {n: logit.grad.clone() for n, logit in logits.items()}


def test_torchscript_gates_reach_the_logits_like_the_eager_module(tmp_path):
    """The scripted module runs on the gated weights: same output and same logit gradients as eager."""
    from maskprobe.learning.masked import frozen

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
        # the global's module differs across Python versions (io.open, _io.open): only its name is pinned
        "malicious-pickle": ([str(tmp / "evil.pt")], OPEN_GLOBAL),
        "malicious-pickle-zip": ([str(tmp / "evil-zip.pt")], OPEN_GLOBAL),
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
    assert phrase.search(lines[0]) if isinstance(phrase, re.Pattern) else phrase in lines[0], lines[0]
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
    expected = sorted(n for n, p in params.items() if not n.endswith(".bias") and "wte" not in n and "wpe" not in n
                      and ".ln_" not in n)  # fmt: skip
    assert sorted(masks) == expected  # norm gains (ln_1, ln_2, ln_f) are not masked by default
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
    with pytest.raises(CheckpointError, match=OPEN_GLOBAL.pattern + ".*--trust-checkpoint"):
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

    from maskprobe.loading.checkpoints import hf_tokenizer

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


# ------------------------------------------------------------------------------ one way to open a checkpoint


class _NoModel(Task):
    name = "no-model"

    def batches(self, split, batch_size, generator):
        yield torch.zeros(1)

    def loss(self, model, batch):
        return torch.zeros(())

    def evaluate(self, model, batches):
        return {"accuracy": 1.0}


class _BrokenModel(_NoModel):
    name = "broken-model"

    def build_model(self):
        raise RuntimeError("boom")


def _equal_to(module: torch.nn.Module, model: torch.nn.Module) -> bool:
    return all(torch.equal(module.state_dict()[k], v) for k, v in model.state_dict().items())


def test_architecture_comes_from_the_builder_else_model_else_the_first_task_that_builds(tmp_path):
    from sample_tasks.arithmetic import AddTask

    model = fnn()
    path = _save("safetensors", model, tmp_path)
    unfit = AddTask(hidden="24,24")  # its build_model() does not fit the file: never asked while another source wins
    assert _equal_to(load_checkpoint(path, fnn, tasks=[unfit], model="no.such:factory").model, model)
    assert _equal_to(load_checkpoint(path, tasks=[unfit], model=f"{HELPERS}:fnn", model_args={"hidden": HIDDEN}).model, model)
    task = AddTask(hidden=HIDDEN)
    assert _equal_to(load_checkpoint(path, tasks=[_NoModel(), task]).model, model)
    assert _equal_to(load_checkpoint(path, tasks=[(task, None)]).model, model)  # resolve_tasks()' pairs too


def test_weights_without_architecture_is_one_error_naming_both_remedies(tmp_path):
    path = _save("safetensors", fnn(), tmp_path)
    message = (
        f"{path} holds only weights: give the architecture with --model package.module:factory (and --model-arg "
        "key=value), or a --task whose build_model() returns the module"
    )
    for kwargs in ({}, {"tasks": [_NoModel()]}):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, **kwargs)
        assert str(err.value) == message
    with pytest.raises(PluginError, match=r"^task plugin 'broken-model' \(.*test_checkpoints\.py\): build_model\(\) failed: "
                       r"RuntimeError: boom$"):  # fmt: skip
        load_checkpoint(path, tasks=[_BrokenModel()])
    with pytest.raises(CheckpointError, match=r"^--model builtins:int returned int, not an nn.Module$"):
        load_checkpoint(path, model="builtins:int")


def test_meta_builds_the_architecture_without_reading_weights(tmp_path, monkeypatch):
    import maskprobe.loading.formats
    from maskprobe.loading.checkpoints import sha256_of

    def no_reading(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(maskprobe.loading.formats, "_load_safetensors", no_reading)
    model = fnn()
    for kind in ("safetensors", "sharded-index"):
        (folder := tmp_path / kind).mkdir()
        path = _save(kind, model, folder)
        ckpt = load_checkpoint(path, fnn, meta=True)
        assert {p.device.type for p in ckpt.model.parameters()} == {"meta"}
        assert ckpt.format == FORMATS[kind] and ckpt.sha256 == sha256_of(path)
        fresh = ckpt.build()
        assert fresh is not ckpt.model and {p.device.type for p in fresh.parameters()} == {"cpu"}
        assert ckpt.dtypes == dict.fromkeys(model.state_dict(), "float32")
    monkeypatch.undo()
    path = _save("torch-zip", model, tmp_path)  # memory-mapped, not read
    assert {p.device.type for p in load_checkpoint(path, fnn, meta=True).model.parameters()} == {"meta"}


def test_meta_tensors_are_the_opened_files_weights_and_refuse_a_file_replaced_since(tmp_path):
    """``Checkpoint.tensors()`` (what ``--shard`` fills its shards from): the stored tensors under the module's names,
    equal to the file's, for every memory-mappable format; a safetensors file rewritten after it was opened (and
    hashed) is refused, not silently trained on under the old identity."""
    import os

    model = fnn()
    expected = {k: v.detach() for k, v in model.state_dict().items()}
    for kind in ("safetensors", "sharded-index", "torch-zip"):
        (folder := tmp_path / kind).mkdir()
        ckpt = load_checkpoint(_save(kind, model, folder), fnn, meta=True)
        got = ckpt.tensors()
        assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected), kind
    (folder := tmp_path / "replaced").mkdir()
    path = _save("safetensors", model, folder)
    ckpt = load_checkpoint(path, fnn, meta=True)
    save_file({k: v + 1 for k, v in expected.items()}, str(path.with_suffix(".new")))
    os.replace(path.with_suffix(".new"), path)  # the same names and shapes, other weights, a new inode
    with pytest.raises(CheckpointError, match="changed since it was opened"):
        ckpt.tensors()


def test_meta_refuses_what_cannot_be_memory_mapped_and_what_does_not_fit(tmp_path, hf_folders):
    from checkpoint_helpers import fnn as make

    model = fnn()
    for kind, phrase in (("torchscript", "torchscript, which cannot be memory-mapped"),
                         ("torch-legacy", "torch-legacy, which cannot be memory-mapped")):  # fmt: skip
        with pytest.raises(CheckpointError, match=phrase):
            load_checkpoint(_save(kind, model, tmp_path), fnn, meta=True)
    with pytest.raises(CheckpointError, match=r"holds no \*\.safetensors weights \(\.bin weights cannot be memory-mapped\)"):
        load_checkpoint(hf_folders[1] / "bin", meta=True)
    with pytest.raises(
        CheckpointError,
        match=r"m.safetensors does not fit the architecture: mis-shaped: 0.bias \(16,\) vs model \(24,\), 0.weight \(16, 42\)",
    ):
        load_checkpoint(_save("safetensors", model, tmp_path), lambda: make("24,24"), meta=True)


def test_meta_hf_folder_uses_the_class_of_its_config(hf_folders):
    model, root = hf_folders
    ckpt = load_checkpoint(root / "safetensors", meta=True)
    assert type(ckpt.model).__name__ == "GPT2LMHeadModel" and ckpt.format == "hf-folder"
    assert {p.device.type for p in ckpt.model.parameters()} == {"meta"}
    fresh = ckpt.build()
    assert type(fresh).__name__ == "GPT2LMHeadModel" and sorted(fresh.state_dict()) == sorted(model.state_dict())


def test_read_state_dict_memory_mapped_equals_read(tmp_path, hf_folders):
    model = fnn()
    paths = {}
    for kind in ("safetensors", "sharded-index", "torch-zip", "safetensors-misnamed"):
        (folder := tmp_path / kind).mkdir()
        paths[kind] = _save(kind, model, folder)
    paths["hf"] = hf_folders[1] / "safetensors"
    for kind, path in paths.items():
        fmt, mapped = read_state_dict(path, mmap=True)
        _, read = read_state_dict(path)
        assert fmt == detect_format(path)
        if kind == "hf":  # the module's state dict holds the tied lm_head.weight the file stores once
            read.pop("lm_head.weight")
        assert sorted(mapped) == sorted(read), kind
        assert all(torch.equal(mapped[k], read[k]) for k in read), kind
    with pytest.raises(CheckpointError, match="torchscript, which cannot be memory-mapped"):
        read_state_dict(_save("torchscript", model, tmp_path), mmap=True)


def test_identity_is_computed_once_per_file_and_again_when_it_changes(tmp_path, monkeypatch):
    import hashlib
    import os
    import shutil
    from types import SimpleNamespace

    import maskprobe.loading.digest

    calls = []
    monkeypatch.setattr(maskprobe.loading.digest, "hashlib", SimpleNamespace(sha256=lambda: calls.append(1) or hashlib.sha256()))
    path = _save("safetensors", fnn(), tmp_path)
    first = load_checkpoint(path, fnn).identity
    assert first["architecture"] == "Sequential" and len(first["weights"]) == 64 and len(calls) == 1
    assert load_checkpoint(path, fnn, meta=True).identity == first and len(calls) == 1  # cached, the same key
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load_checkpoint(path, fnn).identity == first and len(calls) == 2  # touched: hashed again
    shutil.copy(path, copy := tmp_path / "copy.safetensors")
    assert load_checkpoint(copy, fnn).identity == first and len(calls) == 3  # another file, the same weights
    # the file's own SHA-256 (what older masks record) only when asked for, once per file
    assert load_checkpoint(path, fnn).sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and sha256_of(path)


# ------------------------------------------------------------------------------------------ tied parameters


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.tok = torch.nn.Embedding(10, 4)
        self.head.weight = self.tok.weight


def test_tied_tensor_stored_once_loads(tmp_path, hf_folders):
    from checkpoint_helpers import tiny_gpt2
    from safetensors.torch import save_model

    model, root = hf_folders
    file = root / "safetensors" / "model.safetensors"  # save_pretrained wrote the tied lm_head.weight not at all
    assert "lm_head.weight" not in load_file(str(file))
    ckpt = load_checkpoint(file, tiny_gpt2)
    assert ckpt.model.lm_head.weight is ckpt.model.transformer.wte.weight
    assert _equal_to(ckpt.model, model)
    save_model(_Tied(), str(path := tmp_path / "tied.safetensors"))  # keeps one of the two names
    assert len(load_file(str(path))) == 1
    loaded = load_checkpoint(path, _Tied).model
    assert loaded.head.weight is loaded.tok.weight and torch.equal(loaded.tok.weight, _Tied().tok.weight)


def test_tied_names_with_different_values_are_refused(tmp_path):
    state = {"head.weight": torch.zeros(10, 4), "tok.weight": torch.ones(10, 4)}
    save_file(state, str(path := tmp_path / "t.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, _Tied)
    assert str(err.value) == f"{path}: head.weight and tok.weight are one tensor in the architecture but differ in the file"


# ----------------------------------------------------------------------------------------- dtypes as stored


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["safetensors", "torch-zip"])
def test_one_dtype_file_gives_a_module_in_that_dtype(tmp_path, kind, dtype):
    from maskprobe.learning.selection import describe_selection

    model = fnn().to(dtype)
    path = _save(kind, model, tmp_path)
    for meta in (False, True):
        ckpt = load_checkpoint(path, fnn, meta=meta)
        assert {p.dtype for p in ckpt.model.parameters()} == {dtype}
        assert set(ckpt.dtypes.values()) == {str(dtype).removeprefix("torch.")}
        assert {r.dtype for r in describe_selection(ckpt.model)} == {str(dtype).removeprefix("torch.")}
    assert _equal_to(load_checkpoint(path, fnn).model, model)  # bit for bit, no round trip through float32
    assert {p.dtype for p in load_checkpoint(path, fnn, meta=True).build().parameters()} == {dtype}


def test_mixed_dtypes_load_into_the_architecture_and_rows_say_so(tmp_path):
    from maskprobe.learning.selection import describe_selection

    state = {k: (v.half() if k.endswith("weight") else v) for k, v in fnn().state_dict().items()}
    save_file(state, str(path := tmp_path / "mixed.safetensors"))
    ckpt = load_checkpoint(path, fnn)
    assert {p.dtype for p in ckpt.model.parameters()} == {torch.float32}
    rows = {r.name: r.dtype for r in describe_selection(ckpt.model, stored_dtypes=ckpt.dtypes)}
    assert rows == {k: ("float16→float32" if k.endswith("weight") else "float32") for k in state}


def test_hf_folder_keeps_its_stored_dtype(hf_folders, tmp_path):
    from checkpoint_helpers import tiny_gpt2

    tiny_gpt2().half().save_pretrained(tmp_path / "fp16")
    assert {p.dtype for p in load_checkpoint(tmp_path / "fp16").model.parameters()} == {torch.float16}
    assert {p.dtype for p in load_checkpoint(tmp_path / "fp16", meta=True).model.parameters()} == {torch.float16}


# ----------------------------------------------------------------------------------- transformers stays quiet


def test_transformers_logs_nothing_and_its_settings_are_restored(hf_folders, tmp_path, capfd):
    import shutil

    from transformers.utils import logging as hf_logging

    _, root = hf_folders
    shutil.copytree(root / "safetensors", folder := tmp_path / "extra")
    state = load_file(str(folder / "model.safetensors"))
    state["unused.weight"] = torch.zeros(2)  # transformers reports unused tensors on stderr; ignored, as it does
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    load_checkpoint(folder)
    load_checkpoint(folder, meta=True)
    assert capfd.readouterr().err == ""
    assert hf_logging.get_verbosity() == hf_logging.WARNING and hf_logging.is_progress_bar_enabled()


def test_hf_folder_missing_or_misshaped_weight_is_refused(hf_folders, tmp_path):
    import shutil

    _, root = hf_folders
    shutil.copytree(root / "safetensors", folder := tmp_path / "short")
    state = load_file(str(folder / "model.safetensors"))
    del state["transformer.h.0.ln_1.bias"]  # transformers would initialise it at random
    state["transformer.ln_f.weight"] = torch.zeros(3)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert str(err.value) == (
        f"{folder} does not fit its class GPT2LMHeadModel: missing: transformer.h.0.ln_1.bias; "
        "mis-shaped: transformer.ln_f.weight (3,) vs model (16,)"
    )
