"""Built-in tasks: language modelling, masked LM, classification and "keep the model's own outputs" on local data
files, configured with ``--task-arg`` alone (no Python). Registered as entry points (``text-lm``, ``text-mlm``,
``text-classify``, ``keep-outputs``); docs/builtin-tasks.md.

One concept per file: data.py (reading files, the held-out split), text.py (tokens, padding, the seeded streams,
calling the model), base.py (what the tasks share), lm.py, mlm.py, classify.py, keep.py (one task each).
"""

from __future__ import annotations

import importlib
from typing import Any

_TASKS = {"TextLM": "lm", "TextMLM": "mlm", "TextClassify": "classify", "KeepOutputs": "keep"}

__all__ = sorted(_TASKS)


def __getattr__(name: str) -> Any:
    if name in _TASKS:
        return getattr(importlib.import_module(f".{_TASKS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
