"""The CLI's rendering layer: the library returns data, and only this package turns it into text.

``render.compare`` (rich tables of a compare report), ``render.markdown`` (the same report as a CI job summary),
``render.plots`` (figures, optional matplotlib), ``render.train`` / ``render.inspect`` (the other commands'
tables and JSON payloads). This module holds the formatting every one of them shares.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..jsonable import jsonable  # the library's; re-exported here for the renderers


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def signed(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:+.3f}"


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def plus_minus(x: Any, sd: Any, fmt: Callable[[Any], str] = num) -> str:
    """``mean ± std`` when a std is known (a ``--group`` report), else the value alone."""
    return fmt(x) if sd is None else f"{fmt(x)} ± {fmt(sd)}"


def at(tree: Any, *path: Any) -> Any:
    """``tree[p0][p1]...``, or None where ``tree`` (a ``std`` report) is absent."""
    for key in path:
        if tree is None:
            return None
        tree = tree[key]
    return tree


def add_row(table: Table, *cells: Any) -> None:
    """``add_row`` with every string taken literally (task names and paths may hold [brackets])."""
    table.add_row(*[escape(c) if isinstance(c, str) else c for c in cells])


def layer_column(table: Table, header: str = "parameter") -> None:
    """A column of parameter names: never cut, folded onto a second line where the terminal is too narrow
    (``encoder.layer.0.attention.self.query.weight`` and ``...key.weight`` must stay apart)."""
    table.add_column(header, overflow="fold", no_wrap=False, min_width=min(24, len(header) + 4))


def table(title: str, *columns: str, right_from: int = 1, layers: str | None = None, no_wrap: bool = False,
          **style: Any) -> Table:  # fmt: skip
    """A table titled ``title`` (left-aligned): a first column of tensor names headed ``layers`` when given
    (:func:`layer_column`), then ``columns``, right-justified (numbers) from the ``right_from``-th on, each cell on
    one line with ``no_wrap``."""
    t = Table(title=title, title_justify="left", **style)
    if layers is not None:
        layer_column(t, layers)
    for k, col in enumerate(columns):
        t.add_column(col, justify="left" if k < right_from else "right", no_wrap=no_wrap)
    return t


def common_prefix(names: Sequence[str]) -> str:
    """The dotted prefix every name shares, ending in a dot (``bert.encoder.``); "" for fewer than two names or
    none shared. A whole name is never a prefix (``a.b`` and ``a.b.c`` share ``a.``)."""
    if len(names) < 2:
        return ""
    split = [n.split(".")[:-1] for n in names]
    k = 0
    while all(len(p) > k and p[k] == split[0][k] for p in split):
        k += 1
    return ".".join(split[0][:k]) + "." if k else ""


def names_fit(table: Table, width: int | None) -> Any:
    """``table`` as it is when it fits ``width`` columns with its first column (parameter names) unbroken;
    otherwise the same rows with each name on a line of its own above its numbers, so that no name is folded into
    fragments at 80 columns (``encoder.laye / r.0.attentio / ...``). ``width`` None: the table unchanged."""
    if width is None:
        return table
    from rich.console import Console
    from rich.measure import Measurement

    probe = Console(width=10_000, file=io.StringIO())
    if Measurement.get(probe, probe.options, table).maximum <= width:
        return table
    return names_on_own_lines(table)


def names_on_own_lines(table: Table) -> Any:
    """A table's rows as text: the first column's cell on its own line, the other cells in aligned columns under
    it (two spaces apart, each justified as in the table); sections as blank lines."""
    from rich.console import Group
    from rich.text import Text

    def plain(x: Any) -> str:
        return x.plain if isinstance(x, Text) else str(x)

    cols = [[plain(c) for c in col.cells] for col in table.columns[1:]]
    heads = [plain(col.header) for col in table.columns[1:]]
    names = [plain(c) for c in table.columns[0].cells]
    widths = [max([len(h), *map(len, cells)]) for h, cells in zip(heads, cols, strict=True)]

    def line(cells: Sequence[str]) -> str:
        justify = [col.justify for col in table.columns[1:]]
        parts = [c.ljust(w) if j == "left" else c.rjust(w) for c, w, j in zip(cells, widths, justify, strict=True)]
        return ("  " + "  ".join(parts)).rstrip()

    out: list[Any] = []
    if table.title:
        out.append(Text.from_markup(str(table.title)) if isinstance(table.title, str) else table.title)
    out.append(Text(line(heads), style="bold"))
    for k, name in enumerate(names):
        out.append(Text(name))
        out.append(Text(line([c[k] for c in cols])))
        if table.rows[k].end_section and k < len(names) - 1:
            out.append(Text(""))
    return Group(*out)


def dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, sort_keys=False)


def metric_text(value: float | None, metric_range: Sequence[float] | None) -> str:
    """A metric in percent when its range is [0, 1] (accuracy), else as a number (cosine, perplexity, loss)."""
    if metric_range is not None and list(metric_range) == [0.0, 1.0]:
        return pct(value)
    return num(value, 4)
