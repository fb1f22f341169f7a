"""Fit a file's tensors to a module: wrapper prefixes stripped, names the module ties filled from the one stored,
names and shapes checked strictly, and the module cast to the file's dtype when all its floating tensors share one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError

__all__ = ["fit_state", "floating_dtypes", "load_fitted", "misfit", "one_dtype"]


def _strip_prefixes(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    if set(state) == expected:
        return state
    stripped = [
        {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
        for prefix in ("module.", "model.", "_orig_mod.", "model.module.", "module.model.", "net.")
    ]
    return max([state, *stripped], key=lambda s: len(set(s) & expected))  # the first with the most hits: state on a tie


def _tied_names(model: Any) -> list[list[str]]:
    """Groups of state-dict names that are one tensor in ``model`` (``lm_head.weight`` = ``wte.weight``)."""
    import itertools

    by_id: dict[int, list[str]] = {}
    named = itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    for name, t in named:
        by_id.setdefault(id(t), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _fill_tied(model: Any, state: dict[str, Any], source: str) -> dict[str, Any]:
    """``state`` with the names the file left out because they are tied to a name it holds (``save_pretrained``
    and ``safetensors.torch.save_model`` store a tied tensor once).

    Raises:
        CheckpointError: the file holds two names the module ties, with different values.
    """
    import torch

    for names in _tied_names(model):
        present = [n for n in names if n in state]
        for n in present[1:]:
            a, b = state[present[0]], state[n]
            if a.shape == b.shape and "meta" not in (a.device.type, b.device.type) and not torch.equal(a, b):
                raise CheckpointError(f"{source}: {present[0]} and {n} are one tensor in the architecture but differ in the file")
        for n in names:
            if present and n not in state:
                state[n] = state[present[0]]
    return state


def fit_state(model: Any, state: Mapping[str, Any], source: str = "checkpoint", *, extra_ok: bool = False) -> dict[str, Any]:
    """``state`` renamed to ``model``'s state-dict names: one wrapper prefix (``module.``, ``model.`` ...) stripped,
    names the module ties filled from the one the file holds. ``model`` may be on the meta device.

    Args:
        extra_ok: drop tensors the module has no name for instead of refusing them (Hugging Face folders, whose
            unused tensors transformers ignores).

    Raises:
        CheckpointError: one line listing missing, unexpected and mis-shaped names (or tied names that differ).
    """
    own = model.state_dict()
    state = _fill_tied(model, _strip_prefixes(dict(state), set(own)), source)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if extra_ok:
        state = {k: v for k, v in state.items() if k in own}
        unexpected = []
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or misshaped:
        raise misfit(f"{source} does not fit the architecture", missing=missing, unexpected=unexpected, misshaped=misshaped)
    return state


def misfit(what: str, **names: list[str]) -> CheckpointError:
    """``what: missing: a, b; mis-shaped: c (3, 3) vs model (16, 42)``, six names a list at most."""
    parts = []
    for label, items in names.items():
        if items:
            more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
            parts.append(f"{label.replace('misshaped', 'mis-shaped')}: {', '.join(items[:6])}{more}")
    return CheckpointError(f"{what}: " + "; ".join(parts))


def floating_dtypes(state: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v.dtype).removeprefix("torch.") for k, v in state.items() if v.is_floating_point()}


def one_dtype(dtypes: Mapping[str, str]) -> Any:
    """The torch dtype every floating tensor has, or None (none, or several)."""
    import torch

    found = set(dtypes.values())
    return getattr(torch, found.pop()) if len(found) == 1 else None


def load_fitted(model: Any, state: Mapping[str, Any]) -> Any:
    """Load a :func:`fit_state` result into ``model``, the module first cast to the file's dtype when all its
    floating tensors have one (else ``load_state_dict`` converts each to the architecture's dtype).

    Returns:
        the module (``model``, cast).
    """
    dtype = one_dtype(floating_dtypes(state))
    if dtype is not None:
        model = model.to(dtype)
    model.load_state_dict(state, strict=True)
    return model
