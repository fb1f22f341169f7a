"""maskprobe.config: TrainConfig's defaults are the paper's code's (DESIGN §2, docs/method.md) except ``steps``,
check() refuses settings a run cannot use, Selection says what is masked, and nothing here imports torch."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskprobe.config import Selection, TrainConfig
from maskprobe.errors import BadInputError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_code_values():
    c = TrainConfig()
    assert c.init == 2.0 and 1 / (1 + math.exp(-c.init)) == pytest.approx(0.881, abs=5e-4)  # keep probability
    assert c.tau == 1.0
    assert c.samples == 4  # K mask samples per step
    assert c.beta == 1e-4
    assert c.lr == 1e-2
    assert c.clip == 1.0
    assert c.batch_size == 128
    assert c.steps == 5000  # the one departure: the paper trains 20,000 steps (docs/method.md)
    assert c.seed == 0 and c.device == "cpu" and c.backend == "auto"
    assert c.batched_samples is False and c.eval_every is None and c.fixed_from is None and c.fixed == ("output",)
    assert c.selection == Selection() and c.selection.mask_biases is False and c.selection.mask_norms is False


def test_every_default_docs_method_md_names_as_a_flag_is_the_configs():
    """``--flag VALUE`` in docs/method.md is the default of that field (``--steps 20000`` is the paper's budget)."""
    text = (ROOT / "docs" / "method.md").read_text().split("## Settings")[0]  # the examples there set other values
    found = dict(re.findall(r"--(init|tau|batch-size|samples|beta|lr|clip) ([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)", text))
    assert set(found) == {"init", "tau", "batch-size", "samples", "beta", "lr", "clip"}
    c = TrainConfig()
    for flag, value in found.items():
        assert getattr(c, flag.replace("-", "_")) == type(getattr(c, flag.replace("-", "_")))(float(value)), flag
    assert "`--steps 20000` reproduces the paper's budget" in text


def test_the_train_command_takes_its_defaults_from_the_config():
    from maskprobe.commands.train import train

    params = inspect.signature(train).parameters
    c = TrainConfig()
    for name in ("samples", "init", "tau", "clip", "seed", "backend", "batched_samples"):
        assert params[name].default == getattr(c, name), name
    for name in ("steps", "batch_size", "lr"):  # chosen from the model's size and the device when not given
        assert params[name].default is None, name
    assert float(params["beta"].default) == c.beta  # a comma list, as text
    assert params["mask_biases"].default is Selection().mask_biases
    assert params["mask_norms"].default is Selection().mask_norms


def test_configs_are_frozen_and_replace_makes_a_new_one():
    c = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.beta = 1.0  # type: ignore[misc]
    d = dataclasses.replace(c, beta=1e-3, seed=7)
    assert (d.beta, d.seed, c.beta, c.seed) == (1e-3, 7, 1e-4, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Selection().mask_biases = True  # type: ignore[misc]


def test_hparams_hold_every_setting_but_the_selection_and_the_progress_cadence():
    h = TrainConfig(fixed_from="ctrl.safetensors", fixed=("head.*",), log_every=5, eval_every=10).hparams()
    assert h == {
        "steps": 5000, "batch_size": 128, "lr": 0.01, "beta": 0.0001, "samples": 4, "init": 2.0, "tau": 1.0, "clip": 1.0,
        "seed": 0, "device": "cpu", "backend": "auto", "batched_samples": False, "eval_batch_size": 1024,
        "fixed_from": "ctrl.safetensors", "fixed": ["head.*"],
    }  # fmt: skip
    assert TrainConfig(log_every=1).hparams() == TrainConfig(log_every=100, eval_every=3).hparams()
    assert TrainConfig(selection=Selection(mask_biases=True)).hparams() == TrainConfig().hparams()


def test_the_default_config_passes_its_check():
    TrainConfig().check()
    TrainConfig(beta=0.0, init=-3.0, batch_size=4, samples=4, steps=1).check()  # the edges that are allowed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": float("nan")}, "--lr must be a finite number, got nan"),
        ({"beta": float("inf")}, "--beta must be a finite number, got inf"),
        ({"init": float("-inf")}, "--init must be a finite number, got -inf"),
        ({"tau": float("nan")}, "--tau must be a finite number"),
        ({"clip": float("inf")}, "--clip must be a finite number"),
        ({"lr": 0.0}, "--lr must be > 0, got 0.0"),
        ({"tau": -1.0}, "--tau must be > 0, got -1.0"),
        ({"clip": 0.0}, "--clip must be > 0"),
        ({"beta": -1e-4}, "--beta must be >= 0, got -0.0001"),
        ({"steps": 0}, "--steps must be >= 1, got 0"),
        ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
        ({"samples": 0}, "--samples must be >= 1, got 0"),
        ({"batch_size": 3, "samples": 4}, "--batch-size 3 is smaller than --samples 4"),
        ({"eval_batch_size": 0}, "eval_batch_size must be >= 1, got 0"),
        ({"log_every": 0}, "log_every must be >= 1, got 0"),
        ({"eval_every": 0}, "eval_every must be >= 1 (or None: ten times per run), got 0"),
    ],
)
def test_check_refuses_settings_a_run_cannot_use(kwargs, message):
    with pytest.raises(BadInputError) as info:
        TrainConfig(**kwargs).check()
    assert message in str(info.value)
    assert "\n" not in str(info.value)  # one line, as the CLI prints it


def test_a_batch_smaller_than_k_says_how_to_fix_it():
    with pytest.raises(BadInputError, match=r"K=4 examples.*raise --batch-size or lower --samples"):
        TrainConfig(batch_size=2).check()


def test_selection_defaults_and_its_metadata_form():
    s = Selection()
    assert (s.include, s.exclude, s.mask_biases, s.mask_norms) == ((), (), False, False)
    assert s.to_dict() == {"include": [], "exclude": [], "mask_biases": False, "mask_norms": False}
    s = Selection(include=("encoder.*",), exclude=("*.lm_head.*", "*.pos*"), mask_biases=True, mask_norms=False)
    assert s.to_dict() == {"include": ["encoder.*"], "exclude": ["*.lm_head.*", "*.pos*"], "mask_biases": True,
                           "mask_norms": False}  # fmt: skip
    assert Selection(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.to_dict().items()}) == s  # round trip
    assert Selection(exclude=("a",)) != Selection(exclude=("b",))


def test_importing_the_config_does_not_import_torch():
    code = "import sys, maskprobe.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
