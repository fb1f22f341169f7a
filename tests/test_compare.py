"""maskprobe.measure.compare: the library's compare() gives exactly what the CLI prints, from one pass over the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskprobe.errors import BadInputError, MaskFileError
from maskprobe.masks import maskfile
from maskprobe.masks.maskfile import save_masks
from maskprobe.measure.compare import compare, compare_groups
from maskprobe.measure.thresholds import Thresholds


def _masks(tmp_path, n=2, pack=False, task=None, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"l.0.weight": (6, 5), "l.1.weight": (4, 6), "l.2.weight": (3, 4)}
    paths = []
    for k in range(n):
        m = {name: torch.as_tensor(rng.random(s) < 0.3 + 0.2 * k) for name, s in shapes.items()}
        meta = {"task": {"name": task or f"t{k}"}}
        paths.append(save_masks(tmp_path / f"m{k}{'p' if pack else ''}.safetensors", m, meta, pack_bits=pack))
    return paths


def test_compare_counts_once_and_reports_the_documented_schema(tmp_path):
    report = compare(_masks(tmp_path))
    data = report.to_dict()
    assert data["schema"] == "maskprobe.compare/1"
    assert [c["name"] for c in data["layers"]] == ["l.0.weight", "l.1.weight", "l.2.weight"]
    assert [c["role"] for c in data["layers"]] == ["input", "hidden", "output"]
    assert report.tasks == ["t0", "t1"] and report.labels == ["t0", "t1"] and report.scores is None
    assert json.loads(json.dumps(data)) == data  # JSON-able as is (NaN already null)


def test_packed_and_plain_masks_give_equal_reports(tmp_path):
    plain = compare(_masks(tmp_path)).to_dict()
    packed = compare(_masks(tmp_path, pack=True)).to_dict()
    for key in ("layers", "total", "hidden", "summary"):
        assert plain[key] == packed[key]
    assert [m["packed"] for m in packed["masks"]] == [True, True]


def test_the_same_file_twice_is_refused_and_equal_task_names_are_labelled_apart(tmp_path):
    a, _ = _masks(tmp_path)
    with pytest.raises(BadInputError, match="given twice"):
        compare([a, tmp_path / "." / a.name])
    (tmp_path / "same").mkdir()
    assert compare(_masks(tmp_path / "same", task="add")).labels == ["add#1", "add#2"]


def test_thresholds_check_the_finished_report(tmp_path):
    report = compare(_masks(tmp_path), thresholds=Thresholds(max_iou=("0.01",), min_density=("0.2",)))
    checks = {c["check"]: c["passed"] for c in report.checks}
    assert checks == {"iou[t0,t1]": False, "density[t0]": True, "density[t1]": True}
    assert not report.passed and report.to_dict()["passed"] is False


def test_malformed_thresholds_fail_before_any_work():
    with pytest.raises(BadInputError, match="--max-iou"):
        Thresholds(max_iou=("lots",))
    with pytest.raises(BadInputError, match="--baseline"):
        Thresholds(max_regression=0.1)


def test_groups_report_mean_and_std(tmp_path):
    groups = {"a": [], "b": []}
    for s in range(3):
        d = tmp_path / f"s{s}"
        d.mkdir()
        a, b = _masks(d, seed=s)
        groups["a"].append(a)
        groups["b"].append(b)
    report = compare_groups(groups)
    singles = [compare(list(run)).to_dict()["total"]["iou"][0][1] for run in zip(groups["a"], groups["b"], strict=True)]
    assert report.to_dict()["total"]["iou"][0][1] == pytest.approx(np.mean(singles))
    assert report.to_dict()["std"]["total"]["iou"][0][1] == pytest.approx(np.std(singles, ddof=1))
    assert report.labels == ["a", "b"]


def test_incompatible_masks_are_refused(tmp_path):
    a, _ = _masks(tmp_path)
    other = save_masks(tmp_path / "o.safetensors", {"x.weight": torch.ones(2, 2, dtype=torch.bool)}, {"task": {"name": "o"}})
    with pytest.raises(MaskFileError, match="mask different parameters"):
        compare([a, other])
    assert maskfile.FORMAT == "maskprobe.mask/1"


def test_overlap_refuses_the_same_file_twice_and_leaks_no_handle(tmp_path):
    """overlap() opens its files through masksets.open_all, as compare does (issue 22)."""
    import torch

    from maskprobe.errors import BadInputError, MaskFileError
    from maskprobe.masks.maskfile import save_masks
    from maskprobe.measure.overlap import overlap

    a = tmp_path / "a.safetensors"
    save_masks(a, {"w": torch.tensor([True, False, True])}, {"task": {"name": "t", "ref": "t"}})
    with pytest.raises(BadInputError, match="given twice"):
        overlap([a, tmp_path / "." / "a.safetensors"])
    with pytest.raises(MaskFileError):
        overlap([a, tmp_path / "missing.safetensors"])
