"""Rich tables of a compare report (the JSON document of :class:`maskprobe.measure.compare.CompareReport`).

Every number comes from the report dict, the same one ``--json`` prints and ``--format markdown``, the plots
and the thresholds read. A ``--group`` report (``std`` beside every number) shows ``mean ± std``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from . import add_row, at, common_prefix, metric_text, names_fit, num, pct, plus_minus, shape_str, signed, table

ROLE_RANK = {"input": 0, "hidden": 1, "output": 2}
REMOVALS = {
    "kept": "only mask kept",
    "inverted": "mask removed (¬M)",
    "exclusive": "exclusive removed (E)",
    "control": "random, |M| per layer",
    "control_exclusive": "random, |E| per layer",
}


def _count(x: Any) -> str:
    return "n/a" if x is None else f"{round(x):,}"


WIDE = 130  # columns the full overlap table needs; narrower terminals get the compact one


def overlap_table(report: dict[str, Any], i: int = 0, j: int = 1, width: int | None = None) -> Any:
    """Per-layer overlap of masks i and j: input layer, hidden layers, output layer, then the hidden-layer total
    and the total, so that trivially disjoint I/O layers cannot hide in the total. ``width`` below :data:`WIDE`
    (an 80-column terminal): the compact form, each ratio with its chance level in one cell and no counts.

    Tensor names are never folded into fragments: where the table would not fit ``width`` with whole names, the
    prefix all names share is said once in the title and cut from each name, and if that is not enough either,
    each name stands on its own line above its numbers (:func:`maskprobe.render.names_fit`)."""
    build = _compact_overlap_table if width is not None and width < WIDE else _full_overlap_table
    t = build(report, i, j, "")
    fitted = names_fit(t, width)
    prefix = common_prefix([c["name"] for c in report["layers"]])
    if fitted is t or not prefix:
        return fitted
    return names_fit(build(report, i, j, prefix), width)


def _prefix_note(prefix: str) -> str:
    return f"; names after {escape(prefix)}" if prefix else ""


def _file(mask: dict[str, Any]) -> str:
    return str(mask["path"]).rsplit("/", 1)[-1]


def _overlap_rows(report: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """``(entry, std)`` of every layer, input layers first and output layers last, then of the hidden-layer total
    and the total (role ``total``)."""
    std = report.get("std")
    indexed = sorted(enumerate(report["layers"]), key=lambda kc: ROLE_RANK.get(kc[1]["role"], 1))
    rows = [(c, at(std, "layers", k)) for k, c in indexed]
    return rows + [(report[key], at(std, key)) for key in ("hidden", "total") if report.get(key)]


def _by_role(t: Table, rows: list[list[str]]) -> Table:
    """``rows`` added to ``t``, a section line wherever the role (the second cell) changes."""
    for k, row in enumerate(rows):
        if k and row[1] != rows[k - 1][1]:
            t.add_section()
        add_row(t, *row)
    return t


def _head(c: dict[str, Any], prefix: str, role_width: int | None = None) -> list[str]:
    """A row's name (after ``prefix``) and role; a total's name whole and its role blank."""
    if c["role"] == "total":
        return [c["name"], ""]
    return [c["name"][len(prefix) :] if prefix and c["name"].startswith(prefix) else c["name"], c["role"][:role_width]]


def _full_overlap_table(report: dict[str, Any], i: int, j: int, prefix: str) -> Table:
    a, b = report["masks"][i], report["masks"][j]
    title = (
        f"Weight overlap per layer: A = {escape(a['label'])} ({escape(_file(a))}), B = {escape(b['label'])} "
        f"({escape(_file(b))}); chance = independent random masks of the same per-layer densities" + _prefix_note(prefix)
    )
    cols = ("role", "shape", "|A|", "|B|", "|A∩B|", "IoU", "chance", "IoMin", "chance", "IoU-chance", "shared A→B")
    return _by_role(table(title, *cols, layers="layer"), [_overlap_cells(c, i, j, sd, prefix) for c, sd in _overlap_rows(report)])


def _compact_overlap_table(report: dict[str, Any], i: int, j: int, prefix: str) -> Table:
    a, b = report["masks"][i], report["masks"][j]

    def named(m: dict[str, Any]) -> str:  # task#1, task#2 (one task's runs of a sweep): their files tell them apart
        return escape(m["label"]) + (f" ({escape(_file(m))})" if m["label"] != m["task"] else "")

    title = (
        f"Weight overlap per layer: A = {named(a)}, B = {named(b)}; (chance) = random masks of the same per-layer densities"
        + _prefix_note(prefix)
    )
    t = table(title, "role", "A", "B", "IoU (chance)", "IoMin (chance)", "A→B", layers="layer", no_wrap=True)
    return _by_role(t, [_compact_cells(c, i, j, sd, prefix) for c, sd in _overlap_rows(report)])


def _compact_cells(c: dict[str, Any], i: int, j: int, sd: Any, prefix: str) -> list[str]:
    head = [*_head(c, prefix, 3), *(plus_minus(c["density"][k], at(sd, "density", k), pct) for k in (i, j))]
    if not c["counts"][i] or not c["counts"][j]:
        return [*head, "empty", "empty", "empty"]
    return [*head,
            f"{plus_minus(c['iou'][i][j], at(sd, 'iou', i, j))} ({num(c['chance_iou'][i][j])})",
            f"{plus_minus(c['iomin'][i][j], at(sd, 'iomin', i, j))} ({num(c['chance_iomin'][i][j])})",
            plus_minus(c["shared"][i][j], at(sd, "shared", i, j))]  # fmt: skip


def _overlap_cells(c: dict[str, Any], i: int, j: int, sd: Any, prefix: str = "") -> list[str]:
    head = [*_head(c, prefix), shape_str(c["shape"])]
    sizes = [f"{_count(c['counts'][k])} ({plus_minus(c['density'][k], at(sd, 'density', k), pct)})" for k in (i, j)]
    if not c["counts"][i] or not c["counts"][j]:
        return [*head, *sizes, f"{_count(c['intersection'][i][j])}", *["empty"] * 6]
    return [
        *head,
        *sizes,
        _count(c["intersection"][i][j]),
        plus_minus(c["iou"][i][j], at(sd, "iou", i, j)),
        num(c["chance_iou"][i][j]),
        plus_minus(c["iomin"][i][j], at(sd, "iomin", i, j)),
        num(c["chance_iomin"][i][j]),
        plus_minus(c["excess_iou"][i][j], at(sd, "excess_iou", i, j), signed),
        plus_minus(c["shared"][i][j], at(sd, "shared", i, j)),
    ]


def matrix_table(title: str, labels: Sequence[str], cells: Sequence[Sequence[str]], corner: str = "") -> Table:
    t = table(title, corner, *map(escape, labels))
    for lab, row in zip(labels, cells, strict=True):
        add_row(t, lab, *row)
    return t


def pairwise_tables(report: dict[str, Any]) -> list[Table]:
    """Three or more masks: total IoU and IoMin per pair, each mask's share of the others' union, and how many
    weights exactly k masks keep."""
    c, sd = report["total"], at(report.get("std"), "total")
    labels = [m["label"] for m in report["masks"]]
    n = len(labels)
    out = []
    for key, label in (("iou", "IoU"), ("iomin", "IoMin")):
        cells = [
            [
                "—" if r == s else f"{plus_minus(c[key][r][s], at(sd, key, r, s))} ({num(c['chance_' + key][r][s])})"
                for s in range(n)
            ]
            for r in range(n)
        ]
        out.append(matrix_table(f"Total {label}, pairwise (chance in brackets)", labels, cells))
    t = table("Each mask against the union of the others", "mask", "kept", "density", "share in others' union")
    for k, lab in enumerate(labels):
        add_row(t, lab, _count(c["counts"][k]), plus_minus(c["density"][k], at(sd, "density", k), pct),
                plus_minus(c["share_of_others"][k], at(sd, "share_of_others", k), pct))  # fmt: skip
    out.append(t)
    t2 = table("Weights kept by exactly k masks", "k", "weights", "fraction")
    for k, v in enumerate(c["by_k"]):
        add_row(t2, str(k), _count(v), pct(v / c["numel"] if c["numel"] and v is not None else None))
    out.append(t2)
    return out


def _metric_fmt(report: dict[str, Any]) -> Any:
    """Task j's metric as :func:`~maskprobe.render.metric_text` writes it (a report without ranges: all in [0, 1])."""
    ab = report["ablation"]
    ranges = ab.get("metric_ranges") or [[0.0, 1.0]] * len(ab["tasks"])
    return lambda j, v: metric_text(v, ranges[j])


def paper_table(report: dict[str, Any]) -> Table:
    """The paper's table: each task's metric on the full network, with only mask i kept (``i``), and with mask i
    removed (``¬i``)."""
    ab, sd = report["ablation"], at(report.get("std"), "ablation")
    labels = [m["label"] for m in report["masks"]]
    fmt = _metric_fmt(report)
    heads = [head for lab in labels for head in (escape(lab), f"¬{escape(lab)}")]
    t = table("Task metric: full network, only mask i kept (i), mask i removed (¬i)", "task", "Full", *heads)
    for j, task in enumerate(ab["tasks"]):
        cells = [plus_minus(ab["full"][j], at(sd, "full", j), lambda v, j=j: fmt(j, v))]
        for i in range(len(labels)):
            for kind in ("kept", "inverted"):
                cells.append(plus_minus(ab[kind][i][j], at(sd, kind, i, j), lambda v, j=j: fmt(j, v)))
        add_row(t, f"{task} ({ab['metrics'][j]})", *cells)
    return t


def ablation_tables(report: dict[str, Any]) -> list[Table]:
    """Every removal's metric, then the four drop matrices."""
    ab, sd = report["ablation"], at(report.get("std"), "ablation")
    labels = [m["label"] for m in report["masks"]]
    fmt = _metric_fmt(report)
    heads = [escape(f"{name}\n{metric}") for name, metric in zip(ab["tasks"], ab["metrics"], strict=True)]
    t = table("Task metric after removing weights (rows: whose weights; columns: task evaluated)", "removal", "mask of",
              *heads, right_from=2)  # fmt: skip
    cell = lambda kind, i, j: plus_minus(ab[kind][i][j], at(sd, kind, i, j), lambda v: fmt(j, v))  # noqa: E731
    add_row(
        t,
        "none (full network)",
        "",
        *[plus_minus(v, at(sd, "full", j), lambda v, j=j: fmt(j, v)) for j, v in enumerate(ab["full"])],
    )
    t.add_section()
    for kind, label in REMOVALS.items():
        for i in range(len(labels)):
            add_row(t, label if i == 0 else "", labels[i], *[cell(kind, i, j) for j in range(len(ab["tasks"]))])
        t.add_section()
    out = [t]
    for kind, title in (
        ("exclusive", "Relative drop D, exclusive removal"),
        ("control_exclusive", "Relative drop D, random removal of |E| (control)"),
        ("inverted", "Relative drop D, whole-mask removal"),
        ("control", "Relative drop D, random removal of |M| (control)"),
    ):
        d, dsd = ab["drops"][kind], at(sd, "drops", kind)
        cells = [[plus_minus(v, at(dsd, i, j)) for j, v in enumerate(row)] for i, row in enumerate(d)]
        out.append(matrix_table(title, labels, cells, corner="removed \\ task"))
    return out


def scores_table(report: dict[str, Any]) -> Table:
    s, sd = report["scores"], at(report.get("std"), "scores")
    t = table("Scores (docs/metrics.md)", "score", "value")
    t.add_column("meaning")
    for i, m in enumerate(report["masks"]):
        add_row(t, f"S[{m['label']}]", plus_minus(s["specialization"][i], at(sd, "specialization", i)),
                "drop of own task minus largest other drop, exclusive weights removed")  # fmt: skip
    rows = (
        ("P_specialize", "p_specialize", "mean S_i; 1 = removing a task's exclusive weights breaks only that task"),
        ("  control", "p_specialize_control", "the same with random removals of |E_i| per layer"),
        ("P_reuse", "p_reuse", "mean over i≠j of max(0, Dinv[i][j] - Dctrl[i][j])"),
    )
    for label, key, meaning in rows:
        add_row(t, label, plus_minus(s[key], at(sd, key)), meaning)
    return t


def class_removal_table(report: dict[str, Any]) -> Table:
    """Per removal mask: the removed classes' relative drop against the control mask, beside the largest drop of any
    other class (the paper's class-removal reading)."""
    t = table("Class removal: relative drop of each class's accuracy, mask kept vs the control mask kept", "mask", "removed",
              "drop of removed", "largest other drop", right_from=2)  # fmt: skip
    t.add_column("class with it")
    for row in report["ablation"]["class_removal"]:
        others = {k: v for k, v in row["drops"].items() if k not in row["removed"] and v is not None}
        worst = max(others, key=others.get) if others else "-"
        add_row(t, row["mask"], ", ".join(row["removed"]), num(row["removed_drop"]), num(row["largest_other_drop"]), worst)
    return t


def baseline_table(base: dict[str, Any], limit: int = 15) -> Table:
    t = table(
        f"Against the baseline {escape(str(base.get('path', '')))}: the largest moves", "number", "baseline", "now", "change"
    )
    for m in base["moves"][:limit]:
        add_row(t, m["key"], num(m["old"]), num(m["new"]), signed(m["delta"]))
    return t


def compare_tables(report: dict[str, Any], width: int | None = None) -> list[Any]:
    """Everything ``maskprobe compare`` prints as tables, in order (checks as PASS/FAIL lines last); ``width``: the
    terminal's columns (narrow ones get the compact overlap table)."""
    out: list[Any] = []
    if report.get("runs"):
        out.append(f"Mean ± standard deviation over {len(report['runs'])} runs (one mask file per task each).")
    out.append(overlap_table(report, 0, 1, width))
    if len(report["masks"]) > 2:
        out += pairwise_tables(report)
    if report.get("ablation"):
        out.append(paper_table(report))
        out += ablation_tables(report)
        out.append(scores_table(report))
        if report["ablation"].get("class_removal"):
            out.append(class_removal_table(report))
    if report.get("baseline"):
        out.append(baseline_table(report["baseline"]))
    out += [f"{'PASS' if c['passed'] else 'FAIL'} {c['reason']}" for c in report.get("checks", [])]
    return out
