"""maskprobe.measure.groups: ``--group`` files into groups (by task, or NAME=GLOB), groups into runs (matched by checkpoint,
then seed, then file name), and the mean ± sample std of the runs' reports, leaf by leaf."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maskprobe.errors import BadInputError
from maskprobe.masks.maskfile import save_masks
from maskprobe.measure.compare import compare, compare_groups
from maskprobe.measure.groups import aggregate, group_files, match_runs
from maskprobe.measure.thresholds import Thresholds

SHAPES = {"l.0.weight": (6, 5), "l.1.weight": (4, 6), "l.2.weight": (3, 4)}


def _mask(path, task, *, seed=None, sha=None, density=0.4, rng_seed=0):
    gen = torch.Generator().manual_seed(rng_seed)
    masks = {n: torch.rand(s, generator=gen) < density for n, s in SHAPES.items()}
    meta = {"task": {"name": task}}
    if seed is not None:
        meta["seed"] = seed
    if sha is not None:
        meta["checkpoint"] = {"sha256": sha}
    return save_masks(path, masks, meta)


def _names(runs):
    return [[p.name for p in run] for run in runs]


# ---- group_files -----------------------------------------------------------------------------------------


def test_group_by_task_reads_the_task_name_in_each_file(tmp_path):
    files = [
        _mask(tmp_path / "x1.safetensors", "mul"),
        _mask(tmp_path / "x2.safetensors", "add"),
        _mask(tmp_path / "x3.safetensors", "mul"),
        _mask(tmp_path / "x4.safetensors", "add"),
    ]
    groups = group_files(files, ["task"])
    assert list(groups) == ["mul", "add"]  # in order of first appearance
    assert {k: [p.name for p in v] for k, v in groups.items()} == {
        "mul": ["x1.safetensors", "x3.safetensors"],
        "add": ["x2.safetensors", "x4.safetensors"],
    }


def test_group_by_globs_names_each_group_and_sorts_its_files(tmp_path):
    for s in (2, 0, 1):
        _mask(tmp_path / f"add-{s}.safetensors", "arith-add")
        _mask(tmp_path / f"mul-{s}.safetensors", "arith-mul")
    groups = group_files([], [f"A={tmp_path}/add-*.safetensors", f"M={tmp_path}/mul-*.safetensors"])
    assert list(groups) == ["A", "M"]
    assert [p.name for p in groups["A"]] == ["add-0.safetensors", "add-1.safetensors", "add-2.safetensors"]
    # a name given twice collects both globs
    twice = group_files([], [f"A={tmp_path}/add-0*", f"A={tmp_path}/add-1*", f"M={tmp_path}/mul-[01]*"])
    assert [p.name for p in twice["A"]] == ["add-0.safetensors", "add-1.safetensors"]


def test_group_globs_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _mask(tmp_path / "a.safetensors", "a")
    _mask(tmp_path / "b.safetensors", "b")
    groups = group_files([], ["a=~/a.safetensors", "b=~/b.safetensors"])
    assert groups["a"] == [tmp_path / "a.safetensors"]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["add"], "--group 'add': expected 'task' or NAME=GLOB"),
        (["=x*"], "expected 'task' or NAME=GLOB"),
        (["add="], "expected 'task' or NAME=GLOB"),
        (["add={dir}/nothing-*"], "--group 'add={dir}/nothing-*': the glob matches no file"),
        (["a={dir}/a*", "b={dir}/*"], "is in two groups ('a' and 'b')"),
        (["a={dir}/*"], "--group needs masks of at least two tasks, found ['a']"),
    ],
)
def test_bad_group_specs_are_refused(tmp_path, specs, message):
    _mask(tmp_path / "a.safetensors", "add")
    _mask(tmp_path / "b.safetensors", "mul")
    specs = [s.format(dir=tmp_path) for s in specs]
    with pytest.raises(BadInputError) as info:
        group_files([], specs)
    assert message.format(dir=tmp_path) in str(info.value)


def test_globs_and_mask_arguments_do_not_mix_and_one_task_is_not_a_comparison(tmp_path):
    a = _mask(tmp_path / "a.safetensors", "add")
    b = _mask(tmp_path / "b.safetensors", "add")
    with pytest.raises(BadInputError, match="give no MASK arguments"):
        group_files([a], [f"x={tmp_path}/a*", f"y={tmp_path}/b*"])
    with pytest.raises(BadInputError, match=r"at least two tasks, found \['add'\]"):
        group_files([a, b], ["task"])
    with pytest.raises(BadInputError, match="found none"):
        group_files([], ["task"])


# ---- match_runs ------------------------------------------------------------------------------------------


def test_runs_are_matched_by_the_recorded_seed_not_the_file_names(tmp_path):
    groups = {
        "add": [_mask(tmp_path / f"add-{n}.safetensors", "add", seed=s) for n, s in (("a", 2), ("b", 0), ("c", 1))],
        "mul": [_mask(tmp_path / f"mul-{n}.safetensors", "mul", seed=s) for n, s in (("a", 1), ("b", 2), ("c", 0))],
    }
    assert _names(match_runs(groups)) == [
        ["add-b.safetensors", "mul-c.safetensors"],  # seed 0
        ["add-c.safetensors", "mul-a.safetensors"],  # seed 1
        ["add-a.safetensors", "mul-b.safetensors"],  # seed 2
    ]


def test_the_checkpoint_decides_before_the_seed(tmp_path):
    groups = {
        "add": [_mask(tmp_path / "add-1.safetensors", "add", seed=0, sha="bb" * 32),
                _mask(tmp_path / "add-2.safetensors", "add", seed=1, sha="aa" * 32)],
        "mul": [_mask(tmp_path / "mul-1.safetensors", "mul", seed=0, sha="aa" * 32),
                _mask(tmp_path / "mul-2.safetensors", "mul", seed=1, sha="bb" * 32)],
    }  # fmt: skip
    assert _names(match_runs(groups)) == [
        ["add-2.safetensors", "mul-1.safetensors"],  # checkpoint aa...
        ["add-1.safetensors", "mul-2.safetensors"],  # checkpoint bb...
    ]


def test_without_seeds_or_checkpoints_runs_follow_the_file_names(tmp_path):
    groups = {
        "add": [_mask(tmp_path / f"add-{s}.safetensors", "add") for s in (3, 1, 2)],
        "mul": [_mask(tmp_path / f"mul-{s}.safetensors", "mul") for s in (2, 3, 1)],
    }
    assert _names(match_runs(groups)) == [[f"add-{s}.safetensors", f"mul-{s}.safetensors"] for s in (1, 2, 3)]


def test_a_run_of_masks_from_different_checkpoints_is_refused(tmp_path):
    groups = {
        "add": [_mask(tmp_path / "add-1.safetensors", "add", sha="aa" * 32),
                _mask(tmp_path / "add-2.safetensors", "add", sha="bb" * 32)],
        "mul": [_mask(tmp_path / "mul-1.safetensors", "mul", sha="aa" * 32),
                _mask(tmp_path / "mul-2.safetensors", "mul", sha="cc" * 32)],
    }  # fmt: skip
    with pytest.raises(BadInputError, match="cannot match runs: add-2.safetensors, mul-2.safetensors record different"):
        match_runs(groups)


def test_groups_of_different_sizes_are_refused(tmp_path):
    groups = {
        "add": [_mask(tmp_path / f"add-{s}.safetensors", "add") for s in (0, 1, 2)],
        "mul": [_mask(tmp_path / f"mul-{s}.safetensors", "mul") for s in (0, 1)],
    }
    with pytest.raises(BadInputError, match=r"same number of mask files \(one per run\), got \{'add': 3, 'mul': 2\}"):
        match_runs(groups)


# ---- aggregate -------------------------------------------------------------------------------------------


def test_aggregate_gives_the_mean_and_the_sample_std_of_every_leaf_in_the_reports_shape():
    reports = [
        {"schema": "s/1", "x": 1.0, "m": [[1, 2], [3, 4]], "d": {"k": 0.5, "name": "a"}},
        {"schema": "s/1", "x": 2.0, "m": [[3, 2], [5, 4]], "d": {"k": 0.7, "name": "b"}},
        {"schema": "s/1", "x": 6.0, "m": [[5, 2], [7, 4]], "d": {"k": 0.9, "name": "c"}},
    ]
    mean, std = aggregate(reports)
    assert mean == {"schema": "s/1", "x": 3.0, "m": [[3.0, 2.0], [5.0, 4.0]],
                    "d": {"k": pytest.approx(0.7), "name": "a"}}  # fmt: skip
    assert std["schema"] is None and std["d"]["name"] is None  # text: the first report's, no spread
    assert std["x"] == pytest.approx(np.std([1, 2, 6], ddof=1))
    assert std["m"] == [[2.0, 0.0], [2.0, 0.0]]
    assert std["d"]["k"] == pytest.approx(0.2)


def test_null_and_non_finite_values_are_left_out_of_a_leafs_statistics():
    mean, std = aggregate([{"v": 1.0}, {"v": None}, {"v": 3.0}, {"v": float("nan")}, {"v": float("inf")}])
    assert mean["v"] == 2.0 and std["v"] == pytest.approx(math.sqrt(2))
    assert aggregate([{"v": None}, {"v": float("nan")}]) == ({"v": None}, {"v": None})
    assert aggregate([None, 4.0]) == (4.0, 0.0)  # one number: std 0
    assert aggregate([5]) == (5.0, 0.0)


def test_booleans_and_lists_of_other_lengths_are_taken_from_the_first_report():
    assert aggregate([True, False, False]) == (True, None)
    assert aggregate([{"packed": False}, {"packed": True}]) == ({"packed": False}, {"packed": None})
    assert aggregate([[1, 2], [1, 2, 3]]) == ([1, 2], None)


# ---- compare_groups --------------------------------------------------------------------------------------


@pytest.fixture
def seeded(tmp_path):
    groups = {"add": [], "mul": []}
    for s in (1, 0, 2):
        groups["add"].append(_mask(tmp_path / f"a{s}.safetensors", "arith-add", seed=s, density=0.5, rng_seed=s))
        groups["mul"].append(_mask(tmp_path / f"m{s}.safetensors", "arith-mul", seed=s, density=0.2 + 0.1 * s,
                                   rng_seed=10 + s))  # fmt: skip
    return groups


def test_compare_groups_reports_each_number_as_mean_and_std_over_the_runs(seeded):
    report = compare_groups(seeded)
    data = report.to_dict()
    assert _names([[Path(p) for p in run] for run in data["runs"]]) == [
        [f"a{s}.safetensors", f"m{s}.safetensors"] for s in (0, 1, 2)
    ]
    singles = [compare(run).to_dict() for run in match_runs(seeded)]
    densities = [r["masks"][1]["density"] for r in singles]
    assert data["masks"][1]["density"] == pytest.approx(np.mean(densities))
    assert data["std"]["masks"][1]["density"] == pytest.approx(np.std(densities, ddof=1))
    iou = [r["layers"][1]["iou"][0][1] for r in singles]
    assert data["layers"][1]["iou"][0][1] == pytest.approx(np.mean(iou))
    assert data["std"]["layers"][1]["iou"][0][1] == pytest.approx(np.std(iou, ddof=1))
    assert [m["path"] for m in data["masks"]] == ["add (3 files)", "mul (3 files)"]
    assert report.tasks == ["add", "mul"] and report.labels == ["add", "mul"]
    assert {k: len(v) for k, v in data["groups"].items()} == {"add": 3, "mul": 3}
    assert data["std"]["layers"][1]["name"] is None and data["layers"][1]["name"] == "l.1.weight"


def test_compare_groups_checks_thresholds_on_the_mean_report(seeded):
    report = compare_groups(seeded, thresholds=Thresholds(min_density=["0.35"]))
    checks = {c["check"]: c for c in report.checks}
    assert set(checks) == {"density[add]", "density[mul]"}  # named after the groups
    assert checks["density[add]"]["passed"] and not checks["density[mul]"]["passed"]  # mul: mean of ~0.2, 0.3, 0.4
    assert checks["density[mul]"]["value"] == pytest.approx(report.to_dict()["masks"][1]["density"])
    assert report.passed is False


def test_compare_groups_reports_progress_per_run(seeded):
    lines = []
    compare_groups(seeded, progress=lines.append)
    assert lines == [f"run {k + 1}/3: a{k}.safetensors, m{k}.safetensors" for k in range(3)]
