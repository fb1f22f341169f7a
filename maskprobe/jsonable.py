"""JSON-able copies of the library's result documents (a compare report, a training payload): JSON has no NaN."""

from __future__ import annotations

import math
from typing import Any


def jsonable(obj: Any) -> Any:
    """Make NaN/inf ``null`` (JSON has no NaN), tuples lists, paths strings; dict keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return obj
