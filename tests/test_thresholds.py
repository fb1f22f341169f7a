"""maskprobe.measure.thresholds: ``VALUE`` / ``TASK=VALUE`` / ``A:B=VALUE`` parsed, checked on a finished report (NaN and
JSON null never pass), the one-line reasons, and the moves against a baseline."""

from __future__ import annotations

import json
import math

import pytest

from maskprobe.errors import BadInputError
from maskprobe.measure.compare import CompareReport
from maskprobe.measure.thresholds import (
    Threshold,
    Thresholds,
    compare_baseline,
    evaluate_thresholds,
    load_baseline,
    parse_thresholds,
)


def _report(tasks=("add", "mul", "div"), scores=True):
    """A compare report with the keys the thresholds read; iou[i][j] = 0.1 * (i + j), iomin = iou + 0.05."""
    n = len(tasks)
    iou = [[1.0 if i == j else 0.1 * (i + j) for j in range(n)] for i in range(n)]
    data = {
        "schema": "maskprobe.compare/1",
        "masks": [{"task": t, "density": 0.2 + 0.1 * k} for k, t in enumerate(tasks)],
        "total": {
            "iou": iou,
            "iomin": [[v + 0.05 for v in row] for row in iou],
            "excess_iou": [[0.0] * n for _ in range(n)],
        },
        "hidden": None,
        "layers": [],
    }
    if scores:
        data["scores"] = {
            "p_specialize": 0.6,
            "p_specialize_control": 0.01,
            "specialization": [0.9, 0.5, None][:n],
            "p_reuse": 0.2,
            "reuse": [[0.0, 0.3, 0.1], [0.05, 0.0, 0.4], [0.0, 0.0, 0.0]][:n],
        }
    return data


# ---- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "arity", "target", "value"),
    [
        ("0.5", 1, (), 0.5),
        ("1e-3", 2, (), 0.001),
        ("-0.25", 1, (), -0.25),
        ("add=0.9", 1, ("add",), 0.9),
        ("add:mul=0.1", 2, ("add", "mul"), 0.1),
        (" add : mul =0.1", 2, ("add", "mul"), 0.1),  # spaces around names are dropped
        ("a=b=0.3", 1, ("a=b",), 0.3),  # the last '=' splits
    ],
)
def test_parse_value_task_and_pair_forms(spec, arity, target, value):
    assert parse_thresholds("--flag", [spec], None, arity) == [Threshold("--flag", target, value)]


@pytest.mark.parametrize(
    ("spec", "arity", "message"),
    [
        ("lots", 1, "--max-iou 'lots': expected VALUE or TASK=VALUE, and VALUE a number"),
        ("add=", 1, "expected VALUE or TASK=VALUE"),
        ("nan", 1, "--max-iou 'nan': the threshold must be finite"),
        ("add=inf", 1, "must be finite"),
        ("add:mul=0.1", 1, "a target here is written TASK=VALUE"),
        ("add=0.1", 2, "a target here is written TASK_A:TASK_B=VALUE"),
        ("a:b:c=0.1", 2, "TASK_A:TASK_B=VALUE"),
    ],
)
def test_malformed_thresholds_say_what_is_wrong(spec, arity, message):
    with pytest.raises(BadInputError) as info:
        parse_thresholds("--max-iou", [spec], None, arity)
    assert message in str(info.value)


def test_an_unknown_task_is_named_with_the_tasks_there_are():
    with pytest.raises(BadInputError, match=r"no mask has task 'sub' \(tasks: add, mul\)"):
        parse_thresholds("--min-density", ["add=0.1", "sub=0.1"], ["add", "mul"], 1)
    with pytest.raises(BadInputError, match="no mask has task 'sub'"):
        parse_thresholds("--max-iou", ["add:sub=0.1"], ["add", "mul"], 2)


def test_thresholds_validate_every_flag_at_construction():
    for flag, kwargs in (
        ("--min-specialize", {"min_specialize": ("x",)}),
        ("--max-reuse", {"max_reuse": ("add=0.1",)}),  # a pair flag given one task
        ("--max-iomin", {"max_iomin": ("inf",)}),
        ("--min-density", {"min_density": ("a:b=0.1",)}),
    ):
        with pytest.raises(BadInputError, match=flag):
            Thresholds(**kwargs)
    with pytest.raises(BadInputError, match="--max-regression needs --baseline OLD.json"):
        Thresholds(max_regression=0.05)
    Thresholds(max_iou=("add:mul=0.5",), min_density=("0.1", "add=0.2"))  # well-formed: no error


def test_functional_flag_names_the_first_flag_that_needs_a_checkpoint():
    assert Thresholds().functional_flag is None
    assert Thresholds(max_iou=("0.5",), min_density=("0.1",)).functional_flag is None
    assert Thresholds(max_reuse=("0.5",)).functional_flag == "--max-reuse"
    assert Thresholds(max_reuse=("0.5",), min_specialize=("0.1",)).functional_flag == "--min-specialize"


# ---- checks ----------------------------------------------------------------------------------------------


def _by_name(checks):
    return {c["check"]: c for c in checks}


def test_every_check_is_a_dict_with_the_documented_keys_and_a_one_line_reason():
    (check,) = evaluate_thresholds(_report(), min_specialize=["0.7"])
    assert check == {
        "check": "p_specialize",
        "value": 0.6,
        "threshold": 0.7,
        "kind": "min",
        "passed": False,
        "reason": "p_specialize = 0.6000, needs >= 0.7 (--min-specialize)",
    }
    (check,) = evaluate_thresholds(_report(), max_reuse=["0.25"])
    assert check["passed"] is True and check["reason"] == "p_reuse = 0.2000, needs <= 0.25 (--max-reuse)"


def test_a_value_equal_to_its_threshold_passes():
    checks = evaluate_thresholds(_report(), min_specialize=["0.6"], max_reuse=["0.2"])
    assert [c["passed"] for c in checks] == [True, True]


def test_a_total_iou_threshold_checks_every_unordered_pair():
    checks = evaluate_thresholds(_report(), max_iou=["0.25"])
    assert [(c["check"], c["value"], c["passed"]) for c in checks] == [
        ("iou[add,mul]", 0.1, True),
        ("iou[add,div]", 0.2, True),
        ("iou[mul,div]", pytest.approx(0.3), False),
    ]
    assert checks[2]["reason"] == "iou[mul,div] = 0.3000, needs <= 0.25 (--max-iou)"


def test_a_pair_threshold_checks_that_pair_only():
    checks = evaluate_thresholds(_report(), max_iomin=["mul:div=0.3"])
    assert [(c["check"], c["value"], c["passed"]) for c in checks] == [("iomin[mul,div]", pytest.approx(0.35), False)]
    assert "(--max-iomin)" in checks[0]["reason"]


def test_reuse_per_ordered_pair_and_specialization_per_task():
    checks = _by_name(evaluate_thresholds(_report(), max_reuse=["add:mul=0.25", "mul:add=0.25"], min_specialize=["add=0.8"]))
    assert checks["reuse[add->mul]"]["value"] == 0.3 and not checks["reuse[add->mul]"]["passed"]
    assert checks["reuse[mul->add]"]["value"] == 0.05 and checks["reuse[mul->add]"]["passed"]
    assert checks["specialization[add]"]["value"] == 0.9 and checks["specialization[add]"]["passed"]
    assert len(checks) == 3


def test_density_per_mask_with_equal_task_names_numbered_apart():
    checks = evaluate_thresholds(_report(tasks=("add", "add", "mul"), scores=False), min_density=["0.25"])
    assert [(c["check"], c["passed"]) for c in checks] == [("density[add#1]", False), ("density[add#2]", True),
                                                           ("density[mul]", True)]  # fmt: skip
    only_mul = evaluate_thresholds(_report(tasks=("add", "add", "mul"), scores=False), min_density=["mul=0.5"])
    assert [(c["check"], c["value"], c["passed"]) for c in only_mul] == [("density[mul]", pytest.approx(0.4), False)]


def test_checks_come_in_flag_order():
    checks = evaluate_thresholds(
        _report(), min_density=["0.1"], max_iou=["add:mul=1"], max_reuse=["1"], min_specialize=["0"], max_iomin=["add:div=1"]
    )
    assert [c["check"] for c in checks] == [
        "p_specialize", "p_reuse", "iou[add,mul]", "iomin[add,div]", "density[add]", "density[mul]", "density[div]",
    ]  # fmt: skip


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_a_null_or_nan_value_never_passes_and_reads_n_a(missing):
    report = _report()
    report["scores"]["p_specialize"] = missing
    report["total"]["iou"][0][1] = missing
    checks = _by_name(evaluate_thresholds(report, min_specialize=["-1", "div=-1"], max_iou=["add:mul=1"]))
    for name in ("p_specialize", "specialization[div]", "iou[add,mul]"):  # specialization[div] is None in _report
        assert checks[name]["passed"] is False
        assert math.isnan(checks[name]["value"])
        assert " = n/a, needs " in checks[name]["reason"]


@pytest.mark.parametrize(("kwargs", "flag"), [({"min_specialize": ["0.1"]}, "--min-specialize"),
                                              ({"max_reuse": ["add:mul=0.1"]}, "--max-reuse")])  # fmt: skip
def test_functional_thresholds_without_scores_need_a_checkpoint(kwargs, flag):
    with pytest.raises(BadInputError, match=f"{flag} needs --checkpoint"):
        evaluate_thresholds(_report(scores=False), **kwargs)
    assert evaluate_thresholds(_report(scores=False), max_iou=["0.9"])  # structural checks need no scores


def test_unknown_tasks_fail_when_checked_against_the_report():
    with pytest.raises(BadInputError, match="no mask has task 'sub'"):
        evaluate_thresholds(_report(), min_density=["sub=0.1"])


def test_apply_writes_checks_and_passed_into_the_report():
    report = CompareReport(_report())
    checks = Thresholds(max_iou=["0.5"], min_density=["0.1"]).apply(report)
    assert report.data["checks"] == checks and len(checks) == 6
    assert report.data["passed"] is True and report.passed
    Thresholds(min_density=["0.35"]).apply(report)
    assert [c["passed"] for c in report.checks] == [False, False, True]
    assert report.data["passed"] is False and not report.passed
    assert "baseline" not in report.data


# ---- baseline --------------------------------------------------------------------------------------------


def test_load_baseline_accepts_a_compare_json_of_the_same_schema_family(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**_report(), "schema": "maskprobe.compare/2"}))
    assert load_baseline(path)["masks"][0]["task"] == "add"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "baseline not found: "),
        ("{not json", "is not a compare JSON (JSONDecodeError"),
        (b"\xff\xfe\x00", "is not a compare JSON (UnicodeDecodeError"),
        ("[1, 2]", "has schema None, expected 'maskprobe.compare/1'"),
        ('{"schema": "maskprobe.train/1"}', "has schema 'maskprobe.train/1'"),
        ('{"schema": 3}', "has schema 3"),
    ],
)
def test_load_baseline_refuses_what_is_not_a_compare_report(tmp_path, content, message):
    path = tmp_path / "old.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(BadInputError) as info:
        load_baseline(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_moves_are_keyed_by_task_name_and_sorted_largest_first():
    old = _report(tasks=("add", "mul"))
    new = _report(tasks=("mul", "add"))  # reordered: the numbers still match by name
    new["masks"][0]["density"] = 0.5  # mul: 0.3 -> 0.5
    new["masks"][1]["density"] = 0.25  # add: 0.2 -> 0.25
    new["scores"]["p_specialize"] = 0.5
    new["scores"]["specialization"] = [0.5, 0.9]  # unchanged, in the new order
    moved = compare_baseline(old, new)
    deltas = {m["key"]: m["delta"] for m in moved["moves"]}
    assert deltas["density[mul]"] == pytest.approx(0.2)
    assert deltas["density[add]"] == pytest.approx(0.05)
    assert deltas["p_specialize"] == pytest.approx(-0.1)
    assert [abs(m["delta"]) for m in moved["moves"]] == sorted((abs(m["delta"]) for m in moved["moves"]), reverse=True)
    assert moved["moves"][0]["key"] == "density[mul]"
    assert moved["checks"] == []  # no --max-regression


def test_pair_numbers_of_reordered_masks_still_match_their_baseline():
    old = _report(tasks=("add", "mul", "div"))
    new = _report(tasks=("div", "mul", "add"))  # the same masks given in the opposite order
    new["total"]["iou"] = [[1.0, 0.3, 0.2], [0.3, 1.0, 0.1], [0.2, 0.1, 1.0]]  # the same pairs' values
    new["scores"]["specialization"] = [None, 0.5, 0.9]
    moved = compare_baseline(old, new)
    assert moved["only_in_baseline"] == [] and moved["only_here"] == []
    iou = {m["key"]: m for m in moved["moves"] if m["key"].startswith("total.iou[")}
    assert set(iou) == {"total.iou[add,mul]", "total.iou[add,div]", "total.iou[div,mul]"}
    assert all(m["delta"] == pytest.approx(0.0) for m in iou.values())


def test_keys_in_one_report_only_are_listed_not_compared():
    old, new = _report(tasks=("add", "mul")), _report(tasks=("add", "sub"))
    moved = compare_baseline(old, new)
    assert "density[mul]" in moved["only_in_baseline"] and "density[sub]" in moved["only_here"]
    assert all("mul" not in m["key"] and "sub" not in m["key"] for m in moved["moves"])
    no_scores = compare_baseline(_report(scores=False), new)
    assert "p_specialize" in no_scores["only_here"] and "p_specialize" not in {m["key"] for m in no_scores["moves"]}


def test_max_regression_fails_a_drop_of_p_specialize_and_a_rise_of_p_reuse():
    old, new = _report(), _report()
    new["scores"]["p_specialize"] = 0.4  # -0.2: worse
    new["scores"]["p_reuse"] = 0.1  # -0.1: better
    checks = _by_name(compare_baseline(old, new, max_regression=0.1)["checks"])
    assert set(checks) == {"regression:p_specialize", "regression:p_reuse"}
    spec, reuse = checks["regression:p_specialize"], checks["regression:p_reuse"]
    assert spec["passed"] is False and spec["value"] == pytest.approx(0.2) and spec["kind"] == "max"
    assert spec["reason"] == "p_specialize moved -0.2000 (0.6000 -> 0.4000), allowed 0.1 (--max-regression)"
    assert reuse["passed"] is True and reuse["value"] == pytest.approx(-0.1)
    new["scores"]["p_reuse"] = 0.35
    assert _by_name(compare_baseline(old, new, max_regression=0.1)["checks"])["regression:p_reuse"]["passed"] is False


def test_apply_with_a_baseline_records_the_moves_and_the_regression_checks():
    old = _report()
    new = CompareReport(_report())
    new.data["scores"]["p_specialize"] = 0.3
    checks = Thresholds(min_density=["0.1"], baseline=old, baseline_path="old.json", max_regression=0.2).apply(new)
    assert [c["check"] for c in checks][-2:] == ["regression:p_specialize", "regression:p_reuse"]
    assert new.data["baseline"]["path"] == "old.json"
    assert set(new.data["baseline"]) == {"path", "moves", "only_in_baseline", "only_here"}
    assert new.data["baseline"]["moves"][0] == {"key": "p_specialize", "old": 0.6, "new": 0.3, "delta": pytest.approx(-0.3)}
    assert new.passed is False  # p_specialize fell by 0.3 > 0.2
