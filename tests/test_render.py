"""maskprobe.render: the compare report as rich tables (at 80 columns where they are meant to fit, at the
200-column pipe width otherwise), as markdown, and the other commands' tables and payloads."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from maskprobe import console as mp_console
from maskprobe.masks.maskfile import save_masks
from maskprobe.measure.compare import compare
from maskprobe.measure.groups import aggregate
from maskprobe.render import at, dumps, jsonable, metric_text, num, pct, plus_minus, shape_str, signed
from maskprobe.render.compare import (
    ablation_tables,
    baseline_table,
    class_removal_table,
    compare_tables,
    overlap_table,
    pairwise_tables,
    paper_table,
    scores_table,
)
from maskprobe.render.inspect import checkpoint_payload, mask_payload, mask_tables
from maskprobe.render.markdown import compare_markdown, table
from maskprobe.render.tasks import check_lines, check_payload, tasks_table
from maskprobe.render.train import mask_table, metric_table, selection_table, train_summary

QUERY = "encoder.layer.0.attention.self.query.weight"
KEY = "encoder.layer.0.attention.self.key.weight"
SHAPES = {"embed.weight": (10, 8), QUERY: (8, 8), KEY: (8, 8), "head.weight": (3, 8)}


def text_of(*renderables, width=80):
    """What a terminal of ``width`` columns shows; fails on a line wider than the terminal."""
    c = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    for r in renderables:
        c.print(r)
    text = c.export_text()
    c.file.close()
    assert max(len(line) for line in text.splitlines()) <= width
    return text


def rows_of(text, key=1):
    """The body rows of a table as cells; a row whose ``key`` cell is empty continues the row above (a cell
    folded or wrapped onto more lines), unless a section line comes between them."""
    rows, joinable = [], False
    for line in text.splitlines():
        if not line.startswith("│"):
            joinable = False
            continue
        raw = line[1:-1].split("│")
        cells = [c.strip() for c in raw]
        if joinable and not cells[key]:
            for k, c in enumerate(cells):
                if c:  # a fragment that fills its cell was folded (no space lost), else word-wrapped
                    folded = len(rows[-1][k].rsplit(" ", 1)[-1]) >= len(raw[k]) - 2
                    rows[-1][k] += c if folded else " " + c
        else:
            rows.append(cells)
        joinable = True
    return rows


def assert_clean(text):
    """Nothing cut: no ellipsis, and no number or ``mean ± std`` broken across two lines of a cell."""
    assert "…" not in text
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃").split("│")]
        assert not any(c.endswith("±") or c.startswith("±") for c in cells), line


def _mat(base, n):
    return [[round(base + 0.1 * i + 0.01 * j, 4) for j in range(n)] for i in range(n)]


def _with_ablation(report, ranges=None):
    n = len(report["masks"])
    report = copy.deepcopy(report)
    labels = [m["label"] for m in report["masks"]]
    report["ablation"] = {
        "tasks": labels,
        "metrics": ["accuracy"] * n,
        "full": [0.99 - 0.01 * k for k in range(n)],
        "kept": _mat(0.6, n),
        "inverted": _mat(0.1, n),
        "exclusive": _mat(0.5, n),
        "control": _mat(0.8, n),
        "control_exclusive": _mat(0.85, n),
        "drops": {k: _mat(0.2, n) for k in ("kept", "inverted", "exclusive", "control", "control_exclusive")},
        "metric_ranges": ranges or [[0.0, 1.0]] * n,
    }
    report["scores"] = {
        "specialization": [0.8 - 0.1 * k for k in range(n)],
        "p_specialize": 0.7,
        "p_specialize_control": 0.01,
        "p_reuse": 0.05,
        "reuse": _mat(0.0, n),
    }
    return report


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Structural reports of two and of three masks (real compare() output) with long layer names."""
    d = tmp_path_factory.mktemp("render")
    paths = []
    for k, task in enumerate(["add", "mul", "div"]):
        gen = torch.Generator().manual_seed(k)
        m = {n: torch.rand(s, generator=gen) < 0.3 + 0.2 * k for n, s in SHAPES.items()}
        paths.append(save_masks(d / f"{task}.safetensors", m, {"task": {"name": task}}))
    return compare(paths[:2]).to_dict(), compare(paths).to_dict()


@pytest.fixture(scope="module")
def group_report(reports):
    """A two-run ``--group`` report: mean with ``std`` beside every number."""
    one = _with_ablation(reports[0])
    two = copy.deepcopy(one)
    two["ablation"]["full"] = [0.95, 0.93]
    two["ablation"]["kept"] = _mat(0.5, 2)
    two["scores"]["p_specialize"] = 0.5
    mean, std = aggregate([one, two])
    mean.update(std=std, runs=[["a0", "m0"], ["a1", "m1"]])
    return mean


# ---- shared formatting -----------------------------------------------------------------------------------


def test_number_formats_and_n_a():
    assert [num(0.12345), num(2, 1), num(None), num(float("nan"))] == ["0.123", "2.0", "n/a", "n/a"]
    assert [pct(0.5), pct(0.0123), pct(None), pct(float("nan"))] == ["50.0%", "1.2%", "n/a", "n/a"]
    assert [signed(0.05), signed(-0.0421), signed(None), signed(float("nan"))] == ["+0.050", "-0.042", "n/a", "n/a"]
    assert plus_minus(0.5, None) == "0.500" and plus_minus(0.5, 0.01) == "0.500 ± 0.010"
    assert plus_minus(0.5, 0.01, pct) == "50.0% ± 1.0%"
    assert shape_str((3, 4, 5)) == "3x4x5" and shape_str(()) == "-"
    assert metric_text(0.875, [0.0, 1.0]) == "87.5%" and metric_text(12.34567, None) == "12.3457"
    assert metric_text(0.875, (-1.0, 1.0)) == "0.8750"  # a cosine is not a percentage


def test_at_walks_a_std_tree_and_none_stays_none():
    tree = {"total": {"iou": [[0.0, 0.2], [0.2, 0.0]]}}
    assert at(tree, "total", "iou", 0, 1) == 0.2
    assert at(None, "total", "iou", 0, 1) is None
    assert at({"total": None}, "total", "iou") is None


def test_jsonable_makes_nan_null_tuples_lists_paths_strings():
    obj = {"a": float("nan"), "b": (1, float("inf")), 3: Path("/x/y"), "c": [{"d": -float("inf")}]}
    assert jsonable(obj) == {"a": None, "b": [1, None], "3": "/x/y", "c": [{"d": None}]}
    assert json.loads(dumps(obj)) == {"a": None, "b": [1, None], "3": "/x/y", "c": [{"d": None}]}


# ---- compare tables --------------------------------------------------------------------------------------


def test_the_overlap_table_shows_whole_layer_names_in_model_order_at_the_pipe_width(reports):
    report = reports[0]
    text = text_of(overlap_table(report), width=mp_console.WIDTH_WITHOUT_TERMINAL)
    assert_clean(text)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["embed.weight", KEY, QUERY, "head.weight", "hidden layers", "total"]
    assert [r.split("│")[2].strip() for r in rows] == ["input", "hidden", "hidden", "output", "", ""]
    layer = next(c for c in report["layers"] if c["name"] == QUERY)
    cells = [c.strip() for c in next(r for r in rows if QUERY in r).split("│")[1:-1]]
    assert cells[2] == "8x8"
    assert cells[3] == f"{layer['counts'][0]} ({pct(layer['density'][0])})"
    assert cells[5] == str(layer["intersection"][0][1])
    assert cells[6] == num(layer["iou"][0][1]) and cells[7] == num(layer["chance_iou"][0][1])
    assert cells[10] == signed(layer["excess_iou"][0][1])
    assert "A = add (add.safetensors), B = mul (mul.safetensors)" in text


def test_the_overlap_table_of_a_group_report_shows_mean_and_std_at_the_pipe_width(group_report):
    text = text_of(overlap_table(group_report), width=mp_console.WIDTH_WITHOUT_TERMINAL)
    assert_clean(text)
    total = next(line for line in text.splitlines() if line.startswith("│ total"))
    assert f"{num(group_report['total']['iou'][0][1])} ± 0.000" in total  # equal runs: std 0


def test_the_overlap_table_fits_an_80_column_terminal(reports):
    text = text_of(overlap_table(reports[0], width=80), width=80)
    assert_clean(text)
    assert "IoU (chance)" in text and "|A∩B|" not in text  # the compact form: ratio and chance in one cell
    wide = text_of(overlap_table(reports[0], width=200), width=200)
    assert "|A∩B|" in wide and "IoU-chance" in wide


def test_an_empty_mask_reads_empty_not_a_ratio(reports):
    report = copy.deepcopy(reports[0])
    report["layers"][0]["counts"][1] = 0
    text = text_of(overlap_table(report), width=200)
    row = next(line for line in text.splitlines() if line.startswith("│ embed.weight"))
    assert row.count("empty") == 6


def test_the_paper_table_fits_80_columns_and_reads_metric_kept_and_removed(reports):
    report = _with_ablation(reports[0])
    text = text_of(paper_table(report), width=80)
    assert_clean(text)
    header = next(line for line in text.splitlines() if "Full" in line)
    assert [c.strip() for c in header.strip("┃").split("┃")] == ["task", "Full", "add", "¬add", "mul", "¬mul"]
    add = next(line for line in text.splitlines() if line.startswith("│ add (accuracy)"))
    assert [c.strip() for c in add.strip("│").split("│")] == ["add (accuracy)", "99.0%", "60.0%", "10.0%", "70.0%", "20.0%"]


def test_the_paper_table_prints_a_metric_outside_0_1_as_a_number(reports):
    report = _with_ablation(reports[0], ranges=[[0.0, 1.0], None])
    report["ablation"]["metrics"] = ["accuracy", "perplexity"]
    report["ablation"]["full"] = [0.99, 12.345678]
    text = text_of(paper_table(report), width=80)
    mul = next(line for line in text.splitlines() if line.startswith("│ mul (perplexity)"))
    assert mul.split("│")[2].strip() == "12.3457"
    assert "%" not in mul


def test_the_paper_table_of_a_group_report_shows_mean_and_std(group_report):
    text = text_of(paper_table(group_report), width=120)
    assert_clean(text)
    add = next(line for line in text.splitlines() if line.startswith("│ add (accuracy)"))
    assert add.split("│")[2].strip() == "97.0% ± 2.8%"  # full: 0.99 and 0.95
    assert add.split("│")[3].strip() == "55.0% ± 7.1%"  # kept[0][0]: 0.6 and 0.5


def test_ablation_scores_and_pairwise_tables_fit_80_columns(reports):
    two, three = _with_ablation(reports[0]), _with_ablation(reports[1])
    text = text_of(*ablation_tables(two), scores_table(two), *pairwise_tables(three), *ablation_tables(three), width=80)
    assert_clean(text)
    assert "│ P_specialize │ 0.700 │" in text and "│ S[mul]       │ 0.700 │" in text
    assert "│ exclusive removed (E) │ add     │" in text
    iou = three["total"]["iou"]
    assert f"{num(iou[0][2])} ({num(three['total']['chance_iou'][0][2])})" in text
    by_k = rows_of(text_of(pairwise_tables(three)[3], width=80))
    total = three["total"]
    assert by_k == [[str(k), f"{v:,}", pct(v / total["numel"])] for k, v in enumerate(total["by_k"])]
    assert len(by_k) == 4  # k = 0..3 for three masks


def test_scores_table_of_a_group_report_fits_80_columns(group_report):
    text = text_of(scores_table(group_report), *ablation_tables(group_report)[1:], width=80)
    assert_clean(text)
    assert "│ P_specialize │ 0.600 ± 0.141 │" in text


@pytest.mark.parametrize("label", ["sst2[neg]", "a[/x]", "[bold]b"])
def test_task_names_and_file_names_are_printed_literally_not_as_markup(reports, label):
    report = _with_ablation(reports[1])
    report["masks"][0]["label"] = label
    report["masks"][0]["path"] = "/runs/run[neg].safetensors"
    report["ablation"]["tasks"][0] = label
    report["ablation"]["metrics"][1] = "acc[top1]"
    text = text_of(*compare_tables(report), baseline_table({"path": f"{label}.json", "moves": []}), width=200)
    assert f"A = {label} (run[neg].safetensors)" in text  # the overlap table's title
    assert f"┃ {label} ┃ ¬{label} ┃" in text.replace("  ", " ").replace("  ", " ")  # the paper table's header
    assert f"│ {label} (accuracy)" in text and "acc[top1]" in text
    assert f"Against the baseline {label}.json" in text
    three = pairwise_tables(report)[0]
    assert label in text_of(three, width=200).splitlines()[2]  # a pairwise matrix's header


def test_class_removal_names_the_class_with_the_largest_other_drop():
    report = {"ablation": {"class_removal": [
        {"mask": "no-cat", "removed": ["3"], "drops": {"3": 0.9, "5": 0.2, "7": 0.4, "8": None},
         "removed_drop": 0.9, "largest_other_drop": 0.4},
    ]}}  # fmt: skip
    text = text_of(class_removal_table(report), width=80)
    assert_clean(text)
    row = next(line for line in text.splitlines() if line.startswith("│ no-cat"))
    assert [c.strip() for c in row.strip("│").split("│")] == ["no-cat", "3", "0.900", "0.400", "7"]


def test_baseline_table_shows_the_largest_moves_up_to_its_limit():
    base = {
        "path": "old.json",
        "moves": [{"key": f"k{i}", "old": 0.5, "new": 0.5 + i / 100, "delta": i / 100} for i in range(20)],
    }
    text = text_of(baseline_table(base, limit=3), width=80)
    assert_clean(text)
    assert "│ k2     │    0.500 │ 0.520 │ +0.020 │" in text and "k3" not in text


def test_compare_tables_come_in_order_with_pass_and_fail_lines_last(group_report):
    report = copy.deepcopy(group_report)
    report["checks"] = [
        {"check": "a", "passed": True, "reason": "p_specialize = 0.6000, needs >= 0.5 (--min-specialize)"},
        {"check": "b", "passed": False, "reason": "density[add] = 0.3000, needs >= 0.4 (--min-density)"},
    ]
    out = compare_tables(report)
    assert out[0] == "Mean ± standard deviation over 2 runs (one mask file per task each)."
    assert out[-2:] == ["PASS p_specialize = 0.6000, needs >= 0.5 (--min-specialize)",
                        "FAIL density[add] = 0.3000, needs >= 0.4 (--min-density)"]  # fmt: skip
    titles = [t.title.split(":")[0].split(",")[0] for t in out[1:-2]]
    assert titles == ["Weight overlap per layer", "Task metric", "Task metric after removing weights (rows",
                      "Relative drop D", "Relative drop D", "Relative drop D", "Relative drop D",
                      "Scores (docs/metrics.md)"]  # fmt: skip


def test_compare_tables_without_an_ablation_is_the_overlap_alone(reports):
    assert len(compare_tables(reports[0])) == 1
    assert len(compare_tables(reports[1])) == 1 + 4  # pairwise IoU, IoMin, union share, by k


# ---- markdown --------------------------------------------------------------------------------------------


def _md_tables(md):
    """Every markdown table as a list of rows of cells (split at unescaped pipes)."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.replace("\\|", "\0").strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_table_escapes_pipes_and_aligns_numbers_right():
    md = table(["task", "n", "x"], [["a|b", 1, "two\nlines"]], right_from=1)
    assert md.splitlines() == ["| task | n | x |", "| --- | ---: | ---: |", "| a\\|b | 1 | two lines |"]


def test_markdown_of_a_report_with_checks_and_an_ablation(reports):
    report = _with_ablation(reports[1])
    report["masks"][2]["label"] = "div|mod"
    report["checks"] = [
        {"check": "iou[add,mul]", "value": 0.2, "threshold": 0.01, "kind": "max", "passed": False, "reason": ""},
        {"check": "density[add]", "value": float("nan"), "threshold": 0.1, "kind": "min", "passed": False, "reason": ""},
        {"check": "p_specialize", "value": 0.7, "threshold": 0.5, "kind": "min", "passed": True, "reason": ""},
    ]
    md = compare_markdown(report, title="CI")
    assert md.startswith("## CI\n\n**FAILED**: 1 of 3 checks hold.\n")
    assert "| ❌ | iou[add,mul] | 0.2000 | ≤ 0.01 |" in md
    assert "| ❌ | density[add] | n/a | ≥ 0.1 |" in md
    assert "| ✅ | p_specialize | 0.7000 | ≥ 0.5 |" in md
    assert "### Overlap per layer: A = mul, B = div|mod" in md
    assert "| P_specialize | 0.700 |" in md
    for rows in _md_tables(md):  # every row of a table has the header's number of cells
        assert len({len(r) for r in rows}) == 1, rows
        assert set(rows[1]) <= {"---", "---:"}
    assert md.count("### Overlap per layer") == 3  # every pair of three masks
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_markdown_of_a_passing_group_report_says_so_and_shows_mean_and_std(group_report):
    report = copy.deepcopy(group_report)
    report["checks"] = [{"check": "p", "value": 0.6, "threshold": 0.5, "kind": "min", "passed": True, "reason": ""}]
    md = compare_markdown(report)
    assert "**PASSED**: 1 of 1 checks hold." in md
    assert "Mean ± standard deviation over 2 runs" in md
    assert "| P_specialize | 0.600 ± 0.141 |" in md
    total = next(line for line in md.splitlines() if line.startswith("| **total** |"))
    assert f"| {num(report['total']['iou'][0][1])} ± 0.000 |" in total


# ---- train, inspect, tasks -------------------------------------------------------------------------------


def _param(name, shape, masked, reason="", dtype="float32", tied=()):
    return SimpleNamespace(name=name, shape=shape, dtype=dtype, numel=math.prod(shape), masked=masked, reason=reason, tied=tied)


def test_selection_table_fits_80_columns_with_totals():
    rows = [_param(QUERY, (8, 8), True, tied=("decoder.query.weight",)), _param("encoder.bias", (8,), False, "bias"),
            _param("embed.weight", (10, 8), False, "embedding")]  # fmt: skip
    text = text_of(selection_table(rows, title="ckpt[v2].pt (torch); parameters to mask"), width=80)
    assert_clean(text)
    assert text.startswith("ckpt[v2].pt (torch); parameters to mask")
    cells = rows_of(text)
    assert [c[0] for c in cells] == [QUERY, "encoder.bias", "embed.weight", "total"]  # folded where narrow, never cut
    assert [c[4] for c in cells] == ["yes; tied: decoder.query.weight", "no (bias)", "no (embedding)", "64 masked (42.1%)"]
    assert cells[3][3] == "152" and cells[0][1] == "8x8"


def test_metric_table_and_train_summary():
    text = text_of(metric_table("Metric", [("add", {"accuracy": 0.98765}, {"accuracy": 0.5}), ("mul", {"loss": 1.5}, None)]))
    assert "│ add  │ accuracy │   0.9877 │ 0.5000 │" in text
    assert "│ mul  │ loss     │   1.5000 │        │" in text
    task = SimpleNamespace(name="add", metric="accuracy", metric_range=(0.0, 1.0))
    result = SimpleNamespace(task=task, metric_full={"accuracy": 0.99}, metric_masked={"accuracy": 0.9}, final_task_loss=0.01234,
                             steps_run=500, density=lambda: {"total": 0.25})  # fmt: skip
    assert train_summary(result) == (
        "add: density 25.0%, task loss 0.0123 at step 500; accuracy 99.0% unmasked, 90.0% with the mask"
    )


def test_titles_with_paths_and_task_names_are_literal():
    summary = SimpleNamespace(path=Path("runs/[/v2]/m.safetensors"), metadata={"format": "maskprobe.mask/1", "seed": 3},
                              layers=[{"name": "l.weight", "role": "hidden", "shape": [4, 4], "kept": 4, "density": 0.25}],
                              kept=4, numel=16)  # fmt: skip
    text = text_of(*mask_tables(summary), width=80)
    assert " ".join(text.split()).startswith("runs/[/v2]/m.safetensors: maskprobe mask (maskprobe.mask/1)")
    assert rows_of(text.split("Density per tensor")[1])[-1] == ["total", "", "", "4 / 16", "25.0%"]
    result = SimpleNamespace(task=SimpleNamespace(name="add[/x]"), masks={"l.weight": torch.ones(2, 3, dtype=torch.bool)},
                             density=lambda: {"per_tensor": {"l.weight": 1.0}, "kept": 6, "numel": 6, "total": 1.0})  # fmt: skip
    text = text_of(mask_table(result), metric_table("ckpt[/x].pt with only m.safetensors kept", []), width=80)
    assert "Mask for task add[/x]" in text and "ckpt[/x].pt with only m.safetensors kept" in " ".join(text.split())
    assert rows_of(text)[0] == ["l.weight", "2x3", "6", "100.0%"]


def test_inspect_payloads_total_what_the_file_holds():
    summary = SimpleNamespace(path=Path("m.safetensors"), metadata={"format": "maskprobe.mask/1"}, layers=[], kept=30, numel=120)
    assert mask_payload(summary)["total"] == {"kept": 30, "numel": 120, "density": 0.25}
    empty = SimpleNamespace(path=Path("m.safetensors"), metadata={}, layers=[], kept=0, numel=0)
    assert mask_payload(empty)["total"]["density"] == 0.0
    rows = [_param("a.weight", (4, 4), True), _param("a.bias", (4,), False, "bias")]
    ckpt = SimpleNamespace(path=Path("c.pt"), format="torch", note="state dict", rows=rows)
    payload = checkpoint_payload(ckpt)
    assert payload["total"] == {"tensors": 2, "masked_tensors": 1, "numel": 20, "masked": 16}
    assert payload["parameters"][1]["reason"] == "bias" and payload["schema"] == "maskprobe.inspect/1"


def test_tasks_table_and_check_lines():
    rows = [{"name": "arith-add", "source": "sample_tasks", "metric": "accuracy", "higher_is_better": True,
             "metric_range": [0.0, 1.0], "arguments": {"hidden": ": str = '256,256'"}, "doc": "Addition.", "error": None},
            {"name": "broken", "source": "x.py", "metric": None, "higher_is_better": None, "metric_range": None,
             "arguments": {}, "doc": "", "error": "ImportError: no module named y"}]  # fmt: skip
    text = text_of(tasks_table(rows), width=120)
    assert "accuracy (higher is better) in [0, 1]" in text and "hidden: str = '256,256'" in text
    assert "broken: ImportError: no module named y" in text
    report = SimpleNamespace(task="arith-add", ok=False, passed=["loss is a scalar"], problems=["evaluate() gave no metric"],
                             skipped=["no checkpoint"])  # fmt: skip
    assert check_lines(report) == ["Checking arith-add", "  ok    loss is a scalar", "  FAIL  evaluate() gave no metric",
                                   "  SKIP  no checkpoint"]  # fmt: skip
    assert check_payload(report)["ok"] is False and check_payload(report)["schema"] == "maskprobe.task-check/1"
