"""``compare --format markdown``: the compare report as GitHub-flavoured markdown, e.g. for a CI job summary
(``maskprobe compare ... --format markdown >> "$GITHUB_STEP_SUMMARY"``). Built from the same report dict as the
JSON and the tables, so they never disagree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import at as _at
from . import num as _n
from . import pct as _pct
from . import plus_minus as _pm
from . import signed as _sign


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right_from: int = 1) -> str:
    align = ["---" if k < right_from else "---:" for k in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def layer_row(c: dict[str, Any], i: int, j: int, sd: dict[str, Any] | None = None) -> list[str]:
    """One row of the per-layer table for the pair (i, j); ``sd`` the matching std entry of a group report."""
    empty = not c["counts"][i] or not c["counts"][j]
    pair = (
        ["empty"] * 5
        if empty
        else [_pm(c["iou"][i][j], _at(sd, "iou", i, j)), _n(c["chance_iou"][i][j]),
              _pm(c["iomin"][i][j], _at(sd, "iomin", i, j)), _n(c["chance_iomin"][i][j]),
              _pm(c["excess_iou"][i][j], _at(sd, "excess_iou", i, j), _sign)]
    )  # fmt: skip
    dens = [_pm(c["density"][k], _at(sd, "density", k), _pct) for k in (i, j)]
    return [c["name"], "" if c.get("role") == "total" else c.get("role", ""), *dens, *pair]


LAYER_HEADER = ["layer", "role", "density A", "density B", "IoU", "chance", "IoMin", "chance", "IoU − chance"]


def layer_rows(report: dict[str, Any], i: int, j: int) -> list[list[str]]:
    """Per-layer rows, then the hidden-layer and overall totals (bold)."""
    std = report.get("std")
    rows = [layer_row(c, i, j, _at(std, "layers", k)) for k, c in enumerate(report["layers"])]
    for key, label in (("hidden", "**hidden layers**"), ("total", "**total**")):
        if report.get(key):
            rows.append([label, *layer_row(report[key], i, j, _at(std, key))[1:]])
    return rows


def compare_markdown(report: dict[str, Any], title: str = "maskprobe compare") -> str:
    """Markdown for a ``compare`` report (:meth:`maskprobe.measure.compare.CompareReport.to_dict`)."""
    masks = report["masks"]
    tasks = [m.get("label", m["task"]) for m in masks]
    out = [f"## {title}"]
    checks = report.get("checks") or []
    if checks:
        failed = [c for c in checks if not c["passed"]]
        out.append(f"**{'FAILED' if failed else 'PASSED'}**: {len(checks) - len(failed)} of {len(checks)} checks hold.")
        bound = {"min": "≥", "max": "≤"}
        mark = {True: "✅", False: "❌"}
        rows = [[mark[c["passed"]], c["check"], _n(c["value"], 4), f"{bound[c['kind']]} {c['threshold']:g}"] for c in checks]
        out.append(table(["", "check", "value", "threshold"], rows, right_from=2))
    rows = [[m["path"].rsplit("/", 1)[-1], m.get("label", m["task"]), f"{m['kept']:,} / {m['numel']:,}", _pct(m["density"])]
            for m in masks]  # fmt: skip
    out.append(table(["mask", "task", "kept", "density"], rows, right_from=2))
    n = len(tasks)
    if report.get("runs"):
        out.append(f"Mean ± standard deviation over {len(report['runs'])} runs (one mask file per task each).")
    for i in range(n):
        for j in range(i + 1, n):
            out.append(f"### Overlap per layer: A = {tasks[i]}, B = {tasks[j]}")
            out.append(table(LAYER_HEADER, layer_rows(report, i, j), right_from=2))
    if n > 2:
        t = report["total"]
        for key, label in (("iou", "IoU"), ("iomin", "IoMin")):
            out.append(f"### Total {label}, pairwise (chance in brackets)")
            cell = lambda i, j, k=key: "—" if i == j else f"{_n(t[k][i][j])} ({_n(t['chance_' + k][i][j])})"  # noqa: E731
            rows = [[tasks[i], *[cell(i, j) for j in range(n)]] for i in range(n)]
            out.append(table(["", *tasks], rows))
        out.append("### Each mask against the union of the others")
        out.append(table(["task", "density", "share in others' union"],
                         [[tasks[k], _pct(t["density"][k]), _pct(t["share_of_others"][k])] for k in range(n)]))  # fmt: skip
        out.append(table(["k", "weights kept by exactly k masks"], [[k, f"{v:,}"] for k, v in enumerate(t["by_k"])]))
    if report.get("ablation"):
        ab, s = report["ablation"], report["scores"]
        out.append("### Relative drops D (rows: whose weights are removed; columns: task evaluated)")
        removals = {
            "exclusive": "exclusive weights E removed",
            "control_exclusive": "random removal of |E| per layer (control)",
            "inverted": "whole mask M removed",
            "control": "random removal of |M| per layer (control)",
        }
        for kind, label in removals.items():
            rows = [[tasks[i], *[_n(v) for v in row]] for i, row in enumerate(ab["drops"][kind])]
            out += [f"*{label}*", table(["removed \\ task", *tasks], rows)]
        sd = _at(report.get("std"), "scores")
        rows = [[f"S[{t}]", _pm(s["specialization"][k], _at(sd, "specialization", k))] for k, t in enumerate(tasks)]
        labels = {"p_specialize": "P_specialize", "p_specialize_control": "P_specialize, control", "p_reuse": "P_reuse"}
        rows += [[label, _pm(s[key], _at(sd, key))] for key, label in labels.items()]
        out.append(table(["score", "value"], rows))
        if ab.get("class_removal"):
            out.append("### Class removal (relative drop against the control mask)")
            out.append(table(["mask", "removed", "drop of removed", "largest other drop"],
                             [[r["mask"], ", ".join(r["removed"]), _n(r["removed_drop"]), _n(r["largest_other_drop"])]
                              for r in ab["class_removal"]], right_from=2))  # fmt: skip
    base = report.get("baseline")
    if base:
        out.append(f"### Against the baseline {base.get('path', '')}")
        rows = [[m["key"], _n(m["old"]), _n(m["new"]), _sign(m["delta"])] for m in base["moves"][:15]]
        out.append(table(["number", "baseline", "now", "change"], rows))
    return "\n\n".join(out) + "\n"
