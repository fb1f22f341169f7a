"""maskprobe.learning.statefile: the ``.state.pt`` beside a mask. Saved atomically and read back bitwise; anything else
(corrupt, truncated, foreign, pickled code, another run's) is one clear BadInputError, never a traceback."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from maskprobe.config import Selection, TrainConfig
from maskprobe.errors import BadInputError, MaskprobeError
from maskprobe.learning import statefile
from maskprobe.learning.statefile import FORMAT, Snapshots, load_state, resume_key, save_state
from maskprobe.learning.training import TrainState
from maskprobe.tasks import TaskRef

SHA = "ab" * 32
SHAPES = {"l.0.weight": (4, 3), "l.1.weight": (2, 4)}


def _key(config=None, ref=None, sha=SHA):
    return resume_key(config or TrainConfig(steps=100), ref or TaskRef("arith-add", {"hidden": "8"}), sha)


def _state(step=7, shapes=SHAPES):
    gen = torch.Generator().manual_seed(step)
    logits = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    moments = {
        n: {"exp_avg": torch.randn(s, generator=gen), "exp_avg_sq": torch.rand(s, generator=gen)} for n, s in shapes.items()
    }
    optimizer = {"format": "maskprobe.adam/1", "step": step, "state": moments}  # as MaskLogits.state_dict() writes it
    return TrainState(step, logits, optimizer, torch.tensor([1, 2, 3, 4], dtype=torch.uint8), [[1.0, 0.5, 0.9]] * 2)


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


# ---- resume key ------------------------------------------------------------------------------------------


def test_the_resume_key_names_settings_selection_task_and_checkpoint():
    key = _key()
    assert set(key) == {"hparams", "selection", "task", "checkpoint_sha256"}
    assert key["checkpoint_sha256"] == SHA
    assert json.loads(key["selection"]) == Selection().to_dict()
    assert json.loads(key["task"]) == {"ref": "arith-add", "args": {"hidden": "8"}}
    assert "('beta', 0.0001)" in key["hparams"] and "('steps', 100)" in key["hparams"]


def test_the_resume_key_ignores_the_progress_cadence_but_not_the_settings():
    assert _key(TrainConfig(steps=100, log_every=1, eval_every=7)) == _key(TrainConfig(steps=100))
    assert _key(TrainConfig(steps=100, beta=1e-3)) != _key()
    assert _key(TrainConfig(steps=100, selection=Selection(mask_biases=True))) != _key()
    assert _key(ref=TaskRef("arith-add", {"hidden": "16"})) != _key()
    assert _key(sha="cd" * 32) != _key()
    # task arguments in another order are the same task
    assert _key(ref=TaskRef("t", {"a": 1, "b": 2})) == _key(ref=TaskRef("t", {"b": 2, "a": 1}))


# ---- round trip ------------------------------------------------------------------------------------------


def test_save_then_load_gives_the_same_state_bitwise(tmp_path):
    path = tmp_path / "add.state.pt"
    state = _state()
    save_state(path, state, _key())
    back = load_state(path, _key(), SHAPES)
    assert isinstance(back, TrainState) and back.step == 7
    assert set(back.logits) == set(SHAPES)
    for n in SHAPES:
        assert torch.equal(back.logits[n], state.logits[n]) and back.logits[n].dtype == torch.float32
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(back.optimizer["state"][n][moment], state.optimizer["state"][n][moment])
    assert back.optimizer["step"] == 7 and back.optimizer["format"] == "maskprobe.adam/1"
    assert torch.equal(back.noise_rng, state.noise_rng)
    assert back.history == [[1.0, 0.5, 0.9]] * 2
    assert _no_temp_files(tmp_path)


def test_the_file_is_a_tagged_torch_save_dict_readable_without_pickled_code(tmp_path):
    path = tmp_path / "s.state.pt"
    save_state(path, _state(), _key())
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT == "maskprobe.state/1"
    assert payload["checkpoint_sha256"] == SHA and payload["step"] == 7


def test_saving_again_replaces_the_file_and_creates_missing_folders(tmp_path):
    path = tmp_path / "runs" / "deep" / "s.state.pt"
    save_state(path, _state(step=3), _key())
    save_state(path, _state(step=9), _key())
    assert load_state(path, _key(), SHAPES).step == 9
    assert _no_temp_files(path.parent)


def test_a_failed_write_keeps_the_last_good_state_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "s.state.pt"
    save_state(path, _state(step=3), _key())
    before = path.read_bytes()

    def half_then_fail(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(BadInputError, match=f"cannot write {path}"):
        save_state(path, _state(step=9), _key())
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)
    monkeypatch.undo()
    assert load_state(path, _key(), SHAPES).step == 3


def test_a_folder_in_the_way_is_a_clear_error(tmp_path):
    (tmp_path / "s.state.pt").mkdir()
    with pytest.raises(BadInputError, match="it is a folder"):
        save_state(tmp_path / "s.state.pt", _state(), _key())


# ---- what is refused -------------------------------------------------------------------------------------


class Payload:
    """A pickled call: weights_only=True must refuse it without running it (it would make the folder ``path``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "is not a readable state file (FileNotFoundError)"),
        (lambda p: p.write_bytes(b""), "is not a readable state file"),
        (lambda p: p.write_bytes(b"\x00garbage" * 100), "is not a readable state file"),
        (lambda p: p.write_text("{}"), "is not a readable state file"),
        (lambda p: p.write_bytes(pickle.dumps(Payload(f"{p}.ran"), protocol=2)), "not a readable state file (UnpicklingError)"),
        (lambda p: torch.save([1, 2, 3], p), "is not a maskprobe state file"),
        (lambda p: torch.save({"step": 1}, p), "is not a maskprobe state file"),
        (lambda p: torch.save({"format": "maskprobe.state/0"}, p), "is not a maskprobe state file"),
    ],
)
def test_a_file_that_is_not_a_state_file_is_refused_in_one_line(tmp_path, make, message):
    path = tmp_path / "s.state.pt"
    make(path)
    with pytest.raises(BadInputError) as info:
        load_state(path, _key(), SHAPES)
    text = str(info.value)
    assert text.startswith(f"cannot resume: {path} ") and message in text and "\n" not in text
    assert isinstance(info.value, MaskprobeError) and info.value.exit_code == 2
    assert not os.path.exists(f"{path}.ran")  # nothing in the file was run


def test_a_truncated_state_file_is_refused(tmp_path):
    path = tmp_path / "s.state.pt"
    save_state(path, _state(), _key())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="is not a readable state file"):
        load_state(path, _key(), SHAPES)


@pytest.mark.parametrize(
    ("other", "what"),
    [
        (_key(TrainConfig(steps=100, lr=0.1)), "other settings"),
        (_key(TrainConfig(steps=100, selection=Selection(exclude=("l.1.*",)))), "other --include/--exclude/--mask-biases"),
        (_key(ref=TaskRef("arith-mul", {})), "other task arguments"),
        (_key(sha="00" * 32), "other checkpoint"),
    ],
)
def test_another_runs_state_is_refused_saying_what_differs(tmp_path, other, what):
    path = tmp_path / "s.state.pt"
    save_state(path, _state(), _key())
    with pytest.raises(BadInputError) as info:
        load_state(path, other, SHAPES)
    assert f"cannot resume from {path}: it was made with {what}" in str(info.value)
    assert "pass --force instead of --resume" in str(info.value)


def test_two_differences_are_both_named(tmp_path):
    path = tmp_path / "s.state.pt"
    save_state(path, _state(), _key())
    with pytest.raises(BadInputError, match="made with other settings, checkpoint;"):
        load_state(path, _key(TrainConfig(steps=5), sha="00" * 32), SHAPES)


@pytest.mark.parametrize(
    ("shapes", "first"),
    [
        ({"l.0.weight": (4, 3), "l.1.weight": (2, 5)}, "'l.1.weight'"),
        ({"l.0.weight": (4, 3)}, "'l.1.weight'"),
        ({**SHAPES, "l.2.weight": (1, 2)}, "'l.2.weight'"),
    ],
)
def test_logits_that_do_not_fit_the_masked_parameters_are_refused(tmp_path, shapes, first):
    path = tmp_path / "s.state.pt"
    save_state(path, _state(), _key())
    with pytest.raises(BadInputError, match=f"its logits do not fit the masked parameters \\(first: {first}\\)"):
        load_state(path, _key(), shapes)


@pytest.mark.parametrize(
    "damage",
    [
        {"step": "seven"},  # not a number
        {"logits": [torch.zeros(2)]},  # not a name -> tensor dict
        {"logits": {"l.0.weight": "x", "l.1.weight": "y"}},  # not tensors
        {"optimizer": None, "logits": None},
    ],
)
def test_a_state_file_with_the_right_tag_but_damaged_fields_is_refused(tmp_path, damage):
    path = tmp_path / "s.state.pt"
    payload = {"format": FORMAT, **_key(), **_state().to_dict(), **damage}
    torch.save(payload, path)
    with pytest.raises(BadInputError, match=f"cannot resume: {path} is damaged \\("):
        load_state(path, _key(), SHAPES)


def test_a_state_file_without_a_step_is_damaged(tmp_path):
    path = tmp_path / "s.state.pt"
    payload = {"format": FORMAT, **_key(), **_state().to_dict()}
    del payload["step"]
    torch.save(payload, path)
    with pytest.raises(BadInputError, match=r"is damaged \(KeyError: 'step'\)"):
        load_state(path, _key(), SHAPES)


# ---- snapshots -------------------------------------------------------------------------------------------


def test_failing_snapshots_warn_once_per_stretch_and_training_goes_on(tmp_path, monkeypatch):
    path = tmp_path / "s.state.pt"
    warnings = []
    snap = Snapshots(path, _key(), warnings.append)
    real = statefile.save_state

    def failing(*args, **kwargs):
        raise BadInputError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(statefile, "save_state", failing)
    snap(_state(step=10))
    snap(_state(step=20))
    assert warnings == [
        f"snapshot at step 10 failed (cannot write {path}: No space left on device); training goes on, no snapshot is kept yet"
    ]
    monkeypatch.setattr(statefile, "save_state", real)
    snap(_state(step=30))
    assert load_state(path, _key(), SHAPES).step == 30 and snap.failing is False
    monkeypatch.setattr(statefile, "save_state", failing)
    snap(_state(step=40))
    assert len(warnings) == 2 and warnings[1].endswith(f"training goes on, {path} keeps the last good snapshot")
    assert load_state(path, _key(), SHAPES).step == 30


def test_a_snapshot_error_that_is_not_a_write_failure_is_not_swallowed(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(statefile, "save_state", broken)
    with pytest.raises(TypeError, match="a bug"):
        Snapshots(tmp_path / "s.state.pt", _key(), print)(_state())
