"""Which parameters get a mask (DESIGN §2).

Default: every floating-point parameter except biases and embeddings (parameters of ``nn.Embedding`` /
``nn.EmbeddingBag`` modules, and any parameter whose name contains ``embed``). Norm-layer gains and biases
count as weights and biases like any other: gains are masked, biases are not.

``include`` globs (``fnmatch`` on the parameter name, e.g. ``"layers.*.weight"``) replace the default rule:
when given, exactly the floating parameters that match one of them are candidates, biases and embeddings
included. ``exclude`` globs then remove matches. ``mask_biases=True`` keeps biases in the default rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from .config import Selection
from .errors import BadInputError


@dataclass
class SelectedParameter:
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    masked: bool
    reason: str = field(default="")


def _embedding_param_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding | nn.EmbeddingBag):
            for p_name, _ in mod.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatchcase(name, g) for g in globs)


def describe_named(
    named: Iterable[tuple[str, Any]], selection: Selection = Selection(), embeddings: set[str] = frozenset()
) -> list[SelectedParameter]:
    """Apply the selection rules to ``(name, tensor)`` pairs; ``embeddings`` names embedding parameters."""
    rows = []
    for name, p in named:
        short = name.rsplit(".", 1)[-1]
        if not p.is_floating_point():
            masked, reason = False, "not floating point"
        elif selection.include:
            masked = _matches(name, selection.include)
            reason = "" if masked else "not in --include"
        elif short == "bias" and not selection.mask_biases:
            masked, reason = False, "bias"
        elif name in embeddings or "embed" in name.lower():
            masked, reason = False, "embedding"
        else:
            masked, reason = True, ""
        if masked and _matches(name, selection.exclude):
            masked, reason = False, "--exclude"
        rows.append(SelectedParameter(name, tuple(p.shape), str(p.dtype).removeprefix("torch."), p.numel(), masked, reason))
    return rows


def describe_selection(model: nn.Module, selection: Selection = Selection()) -> list[SelectedParameter]:
    """Every parameter of ``model`` with whether it would be masked and why not."""
    return describe_named(model.named_parameters(), selection, _embedding_param_names(model))


def select_parameters(model: nn.Module, selection: Selection = Selection()) -> list[str]:
    """Names of the parameters to mask, in ``named_parameters()`` order.

    Raises:
        BadInputError: if nothing is selected.
    """
    rows = describe_selection(model, selection)
    # an --include that names an integer/bool tensor (e.g. int8-quantised weights) is a request the engine
    # cannot honour (the gate multiplies by a float mask); say so rather than silently skipping it
    unmaskable = [r for r in rows if r.reason == "not floating point" and _matches(r.name, selection.include)]
    if unmaskable:
        r = unmaskable[0]
        raise BadInputError(
            f"--include selects {r.name} of dtype {r.dtype}, which maskprobe cannot mask (only floating-point "
            "parameters can be gated); narrow --include or dequantise the checkpoint"
        )
    names = [r.name for r in rows if r.masked]
    if not names:
        raise BadInputError("the selection masks no parameter (check --include/--exclude/--mask-biases)")
    return names


def parse_globs(values: Sequence[str] | None) -> tuple[str, ...]:
    """Accept repeated flags and comma-separated lists alike."""
    out: list[str] = []
    for v in values or ():
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return tuple(out)
