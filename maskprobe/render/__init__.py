"""The CLI's rendering layer: the library returns data, and only this package turns it into text.

``render.compare`` (rich tables of a compare report), ``render.markdown`` (the same report as a CI job summary),
``render.plots`` (figures, optional matplotlib), ``render.train`` / ``render.inspect`` (the other commands'
tables and JSON payloads). This module holds the formatting every one of them shares.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..jsonable import jsonable  # the library's; re-exported here for the renderers


def num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


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


def dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, sort_keys=False)


def metric_text(value: float | None, metric_range: Sequence[float] | None) -> str:
    """A metric in percent when its range is [0, 1] (accuracy), else as a number (cosine, perplexity, loss)."""
    if metric_range is not None and list(metric_range) == [0.0, 1.0]:
        return pct(value)
    return num(value, 4)
