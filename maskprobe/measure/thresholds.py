"""Thresholds that turn ``compare`` into a CI gate, and the moves against a baseline report (docs/compare.md).

:class:`Thresholds` holds what the flags asked for; :meth:`Thresholds.apply` checks a finished
:class:`maskprobe.measure.compare.CompareReport` and writes ``checks``, ``passed`` and ``baseline`` into it. Every check is
a plain dict ``{check, value, threshold, kind, passed, reason}``; ``reason`` is the one line the CLI prints for a
violation. Thresholds are written ``VALUE`` (the total: every pair, every mask, or the mean score) or
``TASK=VALUE`` / ``TASK:TASK=VALUE`` (one task, one ordered pair).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from .compare import SCHEMA
from .groups import is_number


@dataclass(frozen=True)
class Thresholds:
    """The CI checks a ``compare`` run was asked for (each a list of ``VALUE`` / ``TASK=VALUE`` / ``A:B=VALUE``)."""

    min_specialize: Sequence[str] = ()
    max_reuse: Sequence[str] = ()
    max_iou: Sequence[str] = ()
    max_iomin: Sequence[str] = ()
    min_density: Sequence[str] = ()
    baseline: dict[str, Any] | None = None  # a previous report (load_baseline)
    baseline_path: str = ""
    max_regression: float | None = None

    def __post_init__(self) -> None:
        if self.max_regression is not None:
            if self.baseline is None:
                raise BadInputError("--max-regression needs --baseline OLD.json")
            if not math.isfinite(self.max_regression):
                raise BadInputError(f"--max-regression must be finite, got {self.max_regression}")
            for key in WORSE_WHEN:  # a check that cannot be evaluated is a usage error, never a pass
                _baseline_score(self.baseline, key, self.baseline_path)
        for key, specs in self._specs().items():  # malformed numbers fail before any long work; min_* name a mask, max_* a pair
            parse_thresholds("--" + key.replace("_", "-"), specs, None, 1 if key.startswith("min_") else 2)

    def _specs(self) -> dict[str, Sequence[str]]:
        """The threshold flags as :func:`evaluate_thresholds`' keyword arguments."""
        return {k: getattr(self, k) for k in ("min_specialize", "max_reuse", "max_iou", "max_iomin", "min_density")}

    @property
    def functional_flag(self) -> str | None:
        """The first flag given whose check needs the ablation (a checkpoint), or None."""
        if self.min_specialize:
            return "--min-specialize"
        if self.max_reuse:
            return "--max-reuse"
        return "--max-regression" if self.max_regression is not None else None

    def check_targets(self, tasks: Sequence[str], labels: Sequence[str], functional: bool) -> None:
        """Refuse, before any long work, a target that names no mask or no pair of two distinct masks, and a
        functional threshold when no ablation will run (``functional`` False).

        Raises:
            BadInputError: as :meth:`apply` would, after the work.
        """
        n = len(tasks)
        grid = [[None] * n for _ in range(n)]
        scores = {"p_specialize": None, "specialization": [None] * n, "p_reuse": None, "reuse": grid}
        stub = {
            "masks": [{"task": t, "label": lab, "density": None} for t, lab in zip(tasks, labels, strict=True)],
            "total": {"iou": grid, "iomin": grid},
            "scores": scores if functional else None,
        }
        evaluate_thresholds(stub, **self._specs())

    def apply(self, report: Any) -> list[dict[str, Any]]:
        """Check ``report`` (a CompareReport); adds ``checks``, ``passed`` and ``baseline`` to its data.

        Raises:
            BadInputError: malformed thresholds, or a functional threshold without an ablation.
        """
        data = report.data
        checks = evaluate_thresholds(data, **self._specs())
        if self.max_regression is not None and not data.get("scores"):
            raise BadInputError("--max-regression needs --checkpoint (it compares functional scores)")
        if self.baseline is not None:
            moved = compare_baseline(self.baseline, data, self.max_regression)
            checks += moved.pop("checks")
            data["baseline"] = {"path": self.baseline_path, **moved}
        data["checks"] = checks
        data["passed"] = all(c["passed"] for c in checks)
        return checks


@dataclass(frozen=True)
class Threshold:
    """One parsed threshold: ``target`` is () for the total, (task,) or (task_a, task_b)."""

    flag: str
    target: tuple[str, ...]
    value: float


def parse_thresholds(flag: str, specs: Sequence[str], tasks: Sequence[str] | None, arity: int) -> list[Threshold]:
    """Parse ``VALUE`` / ``TASK=VALUE`` / ``A:B=VALUE`` (``arity`` 1 or 2 says which form a target takes); task
    names are checked against ``tasks`` unless it is None.

    Raises:
        BadInputError: not a number, an unknown task, or a target of the wrong form.
    """
    out = []
    for spec in specs:
        target_text, sep, value_text = spec.rpartition("=")
        try:
            value = float(value_text)
        except ValueError:
            raise BadInputError(f"{flag} {spec!r}: expected VALUE or TASK=VALUE, and VALUE a number") from None
        if not math.isfinite(value):
            raise BadInputError(f"{flag} {spec!r}: the threshold must be finite")
        target: tuple[str, ...] = tuple(t.strip() for t in target_text.split(":")) if sep else ()
        if target and len(target) != arity:
            form = "TASK=VALUE" if arity == 1 else "TASK_A:TASK_B=VALUE"
            raise BadInputError(f"{flag} {spec!r}: a target here is written {form}")
        unknown = [t for t in target if tasks is not None and t not in tasks]
        if unknown:
            raise BadInputError(f"{flag} {spec!r}: no mask has task {unknown[0]!r} (tasks: {', '.join(tasks)})")
        out.append(Threshold(flag, target, value))
    return out


def _check(name: str, value: float, limit: float, kind: str, flag: str) -> dict[str, Any]:
    ok = value == value and (value >= limit if kind == "min" else value <= limit)
    sign = ">=" if kind == "min" else "<="
    shown = "n/a" if value != value else f"{value:.4f}"
    reason = f"{name} = {shown}, needs {sign} {limit:g} ({flag})"
    return {"check": name, "value": value, "threshold": limit, "kind": kind, "passed": bool(ok), "reason": reason}


def _labels(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Each mask's task and label (the label compare prints: the task, ``task#1``, ``task#2``... when shared)."""
    from .compare import mask_labels

    tasks = [m["task"] for m in report["masks"]]
    labels = [m.get("label") for m in report["masks"]]
    if not all(isinstance(x, str) and x for x in labels):
        labels = mask_labels(tasks)  # a report written before labels, or a hand-made one
    return tasks, labels  # type: ignore[return-value]


def evaluate_thresholds(
    report: dict[str, Any],
    *,
    min_specialize: Sequence[str] = (),
    max_reuse: Sequence[str] = (),
    max_iou: Sequence[str] = (),
    max_iomin: Sequence[str] = (),
    min_density: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every requested check on a compare report (:func:`maskprobe.render.compare_json`, or the mean report of
    a ``--group`` run), in the order given.

    A target names masks by label (``add#2``: that mask) or by task (``add``: every mask of that task); checks
    are named by label, as the tables are. A targeted pair must name two distinct masks.

    Raises:
        BadInputError: malformed thresholds, a target that names no mask or no pair of distinct masks, or a
            functional threshold without an ablation.
    """
    tasks, labels = _labels(report)
    known = list(dict.fromkeys([*labels, *tasks]))
    scores = report.get("scores")
    nan = float("nan")
    val = lambda x: nan if x is None else x  # noqa: E731  (JSON null = NaN: a failed metric never passes)
    hits = lambda name: [i for i in range(len(tasks)) if name in (labels[i], tasks[i])]  # noqa: E731

    def pairs(t: Threshold, ordered: bool) -> list[tuple[int, int]]:
        n = len(tasks)
        if not t.target:
            return [(i, j) for i in range(n) for j in range(n) if i != j and (ordered or i < j)]
        found = [(i, j) for i in hits(t.target[0]) for j in hits(t.target[1]) if i != j]
        if not ordered:
            found = list(dict.fromkeys((min(i, j), max(i, j)) for i, j in found))
        if not found:
            raise BadInputError(
                f"{t.flag} {':'.join(t.target)}={t.value:g}: names no pair of two distinct masks "
                f"(masks: {', '.join(labels)}); a pair is written A:B with two of them"
            )
        return found

    checks: list[dict[str, Any]] = []
    for flag, specs in (("--min-specialize", min_specialize), ("--max-reuse", max_reuse)):
        if specs and not scores:
            raise BadInputError(f"{flag} needs --checkpoint (it is a functional score)")
    for t in parse_thresholds("--min-specialize", min_specialize, known, 1):
        if not t.target:
            checks.append(_check("p_specialize", val(scores["p_specialize"]), t.value, "min", t.flag))  # type: ignore[index]
        for i in hits(t.target[0]) if t.target else []:
            s_i = val(scores["specialization"][i])  # type: ignore[index]
            checks.append(_check(f"specialization[{labels[i]}]", s_i, t.value, "min", t.flag))
    for t in parse_thresholds("--max-reuse", max_reuse, known, 2):
        if not t.target:
            checks.append(_check("p_reuse", val(scores["p_reuse"]), t.value, "max", t.flag))  # type: ignore[index]
        else:
            for i, j in pairs(t, ordered=True):
                r_ij = val(scores["reuse"][i][j])  # type: ignore[index]
                checks.append(_check(f"reuse[{labels[i]}->{labels[j]}]", r_ij, t.value, "max", t.flag))
    for flag, specs, key in (("--max-iou", max_iou, "iou"), ("--max-iomin", max_iomin, "iomin")):
        for t in parse_thresholds(flag, specs, known, 2):
            for i, j in pairs(t, ordered=False):
                checks.append(_check(f"{key}[{labels[i]},{labels[j]}]", val(report["total"][key][i][j]), t.value, "max", flag))
    for t in parse_thresholds("--min-density", min_density, known, 1):
        for i in hits(t.target[0]) if t.target else range(len(tasks)):
            checks.append(_check(f"density[{labels[i]}]", val(report["masks"][i]["density"]), t.value, "min", t.flag))
    return checks


# ---- baseline --------------------------------------------------------------------------------------------


MAX_BASELINE_BYTES = 1 << 30  # a compare JSON of a thousand masks is a few MB; more is not one


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A previous ``compare --format json`` output.

    Raises:
        BadInputError: missing, not JSON, or another schema.
    """
    from ..paths import input_kind

    path = Path(path)
    if input_kind(path, f"baseline not found: {path}") != "file":  # a FIFO would block forever, /dev/zero never end
        raise BadInputError(f"baseline {path} is a folder; give the JSON file 'compare --format json' wrote")
    if path.stat().st_size > MAX_BASELINE_BYTES:
        raise BadInputError(f"baseline {path} is {path.stat().st_size:,} bytes; a compare JSON is far smaller")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"baseline not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"baseline {path} is not a compare JSON ({type(exc).__name__}: {exc})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or schema.rpartition("/")[0] != SCHEMA.rpartition("/")[0]:
        raise BadInputError(
            f"baseline {path} has schema {schema!r}, expected {SCHEMA!r} (a 'maskprobe compare --format json' output)"
        )
    try:
        _flat(data)  # the parts the moves are read from, checked now rather than after the long work
    except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
        raise BadInputError(f"baseline {path} is not a well-formed compare JSON ({_shape_problem(exc)})") from None
    return data


def _shape_problem(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}".rstrip(": ")


def _baseline_score(baseline: dict[str, Any], key: str, path: str = "") -> float:
    """The baseline's ``scores[key]`` as a finite number.

    Raises:
        BadInputError: the baseline has none (made without --checkpoint), or it is not a finite number.
    """
    scores = baseline.get("scores")
    value = scores.get(key) if isinstance(scores, dict) else None
    where = f"baseline {path}" if path else "the baseline"
    if not isinstance(scores, dict):
        raise BadInputError(f"--max-regression: {where} has no scores (made without --checkpoint); it cannot gate {key}")
    if not is_number(value) or not math.isfinite(value):
        raise BadInputError(f"--max-regression: {where} has {key} = {value!r}, not a number; it cannot gate {key}")
    return float(value)


def _flat(report: dict[str, Any]) -> dict[str, float]:
    """The numbers worth tracking, keyed by mask labels (not positions) so reordered masks still match."""
    masks = report.get("masks", [])
    if not isinstance(masks, list) or not all(isinstance(m, dict) and isinstance(m["task"], str) for m in masks):
        raise TypeError("'masks' must be a list of objects with a string 'task'")
    _, labels = _labels({"masks": masks})
    out: dict[str, Any] = {f"density[{label}]": m.get("density") for m, label in zip(masks, labels, strict=True)}
    # each pair (i < j) keyed by its two labels sorted: the symmetric numbers match in any mask order
    pairs = [(",".join(sorted((a, b))), i, j) for i, a in enumerate(labels) for j, b in enumerate(labels) if i < j]
    for section in ("total", "hidden"):
        c = report.get(section)
        for key in ("iou", "iomin", "excess_iou") if c else ():
            out.update({f"{section}.{key}[{p}]": c[key][i][j] for p, i, j in pairs})
    for layer in report.get("layers") or []:
        if not isinstance(layer["name"], str):
            raise TypeError(f"a layer's 'name' must be a string, got {layer['name']!r}")
        out.update({f"layer.iou[{layer['name']}][{p}]": layer["iou"][i][j] for p, i, j in pairs})
    s = report.get("scores")
    if s:
        out["p_specialize"] = s.get("p_specialize")
        out["p_reuse"] = s.get("p_reuse")
        spec = s.get("specialization") or []
        out.update({f"specialization[{t}]": spec[i] for i, t in enumerate(labels[: len(spec)])})
    return {k: v for k, v in out.items() if is_number(v)}


# scores where a move in this direction is a regression of modularity
WORSE_WHEN = {"p_specialize": "down", "p_reuse": "up"}


def compare_baseline(old: dict[str, Any], new: dict[str, Any], max_regression: float | None = None) -> dict[str, Any]:
    """What moved between two compare reports, largest moves first, and the regression checks.

    Returns:
        ``{"path", "moves": [{key, old, new, delta}], "checks": [...]}``; a regression check per score of
        :data:`WORSE_WHEN` present in both when ``max_regression`` is given.
    """
    a, b = _flat(old), _flat(new)
    moves = [{"key": k, "old": a[k], "new": b[k], "delta": b[k] - a[k]} for k in b if k in a]
    moves.sort(key=lambda m: -abs(m["delta"]))
    checks = []
    if max_regression is not None:
        for key, worse in WORSE_WHEN.items():
            was = _baseline_score(old, key)  # a check that cannot be evaluated is a usage error, never skipped
            now = b.get(key, float("nan"))  # a score this run could not compute: NaN, which never passes
            loss = (was - now) if worse == "down" else (now - was)
            c = _check(f"regression:{key}", loss, max_regression, "max", "--max-regression")
            moved = f"{now - was:+.4f} ({was:.4f} -> {now:.4f})"
            c["reason"] = f"{key} moved {moved}, allowed {max_regression:g} (--max-regression)"
            checks.append(c)
    return {"moves": moves, "checks": checks, "only_in_baseline": sorted(set(a) - set(b)), "only_here": sorted(set(b) - set(a))}
