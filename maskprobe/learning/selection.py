"""Which parameters get a mask (DESIGN §2, docs/method.md "What is masked").

Default: every floating-point parameter except biases and embeddings. Each tensor is judged by the modules
that own it, under all of its names:

* a **bias** is the attribute ``bias`` of any module (``nn.Linear``, convolutions, Hugging Face ``Conv1D``,
  norms ...), ``bias_ih_l*``/``bias_hh_l*`` (and ``_reverse``) of ``nn.LSTM``/``nn.GRU``/``nn.RNN``,
  ``bias_ih``/``bias_hh`` of their cells, and ``in_proj_bias``/``bias_k``/``bias_v`` of
  ``nn.MultiheadAttention``;
* an **embedding** is a parameter of an ``nn.Embedding``/``nn.EmbeddingBag``, or one whose name contains
  ``embed``;
* a **norm** parameter belongs to ``nn.LayerNorm``/``GroupNorm``/``BatchNorm*``/``InstanceNorm*``/``RMSNorm`` or
  to any module whose class name ends in ``Norm`` (``LlamaRMSNorm``, ``T5LayerNorm`` ...). Norm gains are
  masked only with ``mask_norms=True`` (``--mask-norms``); norm biases are biases.

A **tied** tensor (one tensor used in two places, e.g. ``lm_head.weight`` = ``wte.weight``) is one row, named by
its first name in ``named_parameters()``, with the other names in ``tied``; it is an embedding (or a bias, or a
norm) if any of its names is, so the decision does not depend on module order, and globs match any of its names.

``include`` globs (``fnmatch`` on the parameter name, e.g. ``"layers.*.weight"``) replace the default rule:
when given, exactly the floating parameters that match one of them are candidates, biases, norms and embeddings
included. ``exclude`` globs then remove matches. ``mask_biases=True`` keeps biases in the default rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from ..config import Selection
from ..errors import BadInputError

__all__ = ["SelectedParameter", "Selection", "describe_named", "describe_selection", "parse_globs", "select_parameters"]


@dataclass
class SelectedParameter:
    """One parameter tensor and the selection's verdict.

    Attributes:
        name: its first name in ``named_parameters()`` (the mask file's tensor name).
        shape, numel: of the tensor.
        dtype: as stored in the checkpoint (``"float16"``); ``"float16→float32"`` where the module holds it in
            another dtype (a file of mixed dtypes, loaded into the architecture's own).
        masked: whether it gets a mask; ``reason`` says why not (``bias``, ``embedding``, ``norm``,
            ``not floating point``, ``not in --include``, ``--exclude``).
        tied: its other names (the same tensor used elsewhere), in ``named_parameters(remove_duplicate=False)`` order.
        kind: what it is, judged as the selection judges it: ``norm``, ``bias``, ``embedding``, ``weight`` (2-D or
            more) or ``vector`` (any other 1-D or scalar parameter); ``train``'s summary counts by it.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    masked: bool
    reason: str = field(default="")
    tied: tuple[str, ...] = ()
    kind: str = ""


_RNN_BIAS = re.compile(r"bias_(ih|hh)(_l\d+)?(_reverse)?")
_MHA_BIASES = frozenset({"in_proj_bias", "bias_k", "bias_v"})
_NORMS: tuple[type, ...] = tuple(
    c
    for c in (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm, getattr(nn, "RMSNorm", None))
    if c is not None
)
_NORM_CLASS = re.compile(r".*Norm(\dd)?")  # LayerNorm, LlamaRMSNorm, FrozenBatchNorm2d
_NORM_NAME = re.compile(r".*norm.*|(ln|bn)_?[a-z]?\d*")  # a module path component, lower case: ln_f, bn1, layernorm


@dataclass(frozen=True)
class _Role:
    bias: bool = False
    embedding: bool = False
    norm: bool = False

    def __or__(self, other: _Role) -> _Role:
        return _Role(self.bias or other.bias, self.embedding or other.embedding, self.norm or other.norm)


def _role_by_name(name: str) -> _Role:
    """What a parameter is by its name alone (weights-only files without an architecture; TorchScript)."""
    owner, _, attr = name.rpartition(".")
    comp = owner.rpartition(".")[2].lower()
    bias = attr == "bias" or bool(_RNN_BIAS.fullmatch(attr)) or attr in _MHA_BIASES
    return _Role(bias, "embed" in name.lower(), bool(owner) and bool(_NORM_NAME.fullmatch(comp)))


def _role(owner: nn.Module, name: str) -> _Role:
    """What the parameter ``name`` (attribute ``name.rpartition('.')[2]`` of ``owner``) is, by its owner's type."""
    if isinstance(owner, torch.jit.ScriptModule):  # compiled: the original class is only known by name
        by_name = _role_by_name(name)
        return by_name | _Role(norm=bool(_NORM_CLASS.fullmatch(getattr(owner, "original_name", ""))))
    attr = name.rpartition(".")[2]
    if isinstance(owner, nn.RNNBase | nn.RNNCellBase):
        bias = bool(_RNN_BIAS.fullmatch(attr))
    elif isinstance(owner, nn.MultiheadAttention):
        bias = attr in _MHA_BIASES
    else:
        bias = attr == "bias"
    embedding = isinstance(owner, nn.Embedding | nn.EmbeddingBag) or "embed" in name.lower()
    norm = isinstance(owner, _NORMS) or bool(_NORM_CLASS.fullmatch(type(owner).__name__))
    return _Role(bias, embedding, norm)


def _matches(names: Iterable[str], globs: Iterable[str]) -> bool:
    globs = tuple(globs)
    return any(fnmatchcase(n, g) for n in names for g in globs)


def _dtype(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _row(name: str, t: Any, role: _Role, tied: tuple[str, ...], selection: Selection, dtype: str) -> SelectedParameter:
    names = (name, *tied)
    if not t.is_floating_point():
        masked, reason = False, "not floating point"
    elif selection.include:
        masked = _matches(names, selection.include)
        reason = "" if masked else "not in --include"
    elif role.norm and not selection.mask_norms:
        masked, reason = False, "norm"
    elif role.bias and not selection.mask_biases:
        masked, reason = False, "bias"
    elif role.embedding:
        masked, reason = False, "embedding"
    else:
        masked, reason = True, ""
    if masked and _matches(names, selection.exclude):
        masked, reason = False, "--exclude"
    kind = next(k for k, yes in (("norm", role.norm), ("bias", role.bias), ("embedding", role.embedding),
                                 ("weight", t.dim() >= 2), ("vector", True)) if yes)  # fmt: skip
    return SelectedParameter(name, tuple(t.shape), dtype, t.numel(), masked, reason, tied, kind)


def describe_named(named: Iterable[tuple[str, Any]], selection: Selection = Selection()) -> list[SelectedParameter]:
    """Apply the selection to ``(name, tensor)`` pairs of a weights-only file, judged by names alone (no module):
    ``bias``/``bias_ih_l0``/``in_proj_bias`` ... are biases, names containing ``embed`` embeddings, parameters
    of a module named like a norm (``ln_f``, ``bn1``, ``...norm...``) norms. Tensors sharing storage (a
    ``torch.save`` file keeps ties) are one row with ``tied`` names."""
    groups: dict[tuple, list[tuple[str, Any]]] = {}
    for name, t in named:
        shared = t.numel() and t.device.type != "meta"
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype) if shared else (name,)
        groups.setdefault(key, []).append((name, t))
    rows = []
    for members in groups.values():
        (name, t), names = members[0], [n for n, _ in members]
        role = _Role()
        for n in names:
            role = role | _role_by_name(n)
        rows.append(_row(name, t, role, tuple(names[1:]), selection, _dtype(t)))
    return rows


def describe_selection(
    model: nn.Module, selection: Selection = Selection(), *, stored_dtypes: Mapping[str, str] | None = None
) -> list[SelectedParameter]:
    """Every parameter tensor of ``model`` (tied ones once), in ``named_parameters()`` order, with whether it would
    be masked and why not.

    Args:
        stored_dtypes: ``{name: dtype}`` as the checkpoint stores them (:attr:`Checkpoint.dtypes`); the rows show
            ``stored→module`` where the module's dtype differs.
    """
    params: dict[int, Any] = {}
    names: dict[int, list[str]] = {}
    roles: dict[int, _Role] = {}
    # named_parameters(remove_duplicate=False)'s order, with each parameter's owning module
    for prefix, owner in model.named_modules(remove_duplicate=False):
        for attr, p in owner.named_parameters(recurse=False):
            name = f"{prefix}.{attr}" if prefix else attr
            params[id(p)] = p
            names.setdefault(id(p), []).append(name)
            roles[id(p)] = roles.get(id(p), _Role()) | _role(owner, name)
    rows = []
    for key, p in params.items():
        first, *tied = names[key]
        dtype = _dtype(p)
        stored = (stored_dtypes or {}).get(first, dtype)
        rows.append(_row(first, p, roles[key], tuple(tied), selection, stored if stored == dtype else f"{stored}→{dtype}"))
    return rows


def select_parameters(model: nn.Module, selection: Selection = Selection()) -> list[str]:
    """Names of the parameters to mask, in ``named_parameters()`` order (a tied tensor under its first name).

    Raises:
        BadInputError: if nothing is selected, or ``include`` names a non-floating tensor.
    """
    rows = describe_selection(model, selection)
    # an --include that names an integer/bool tensor (e.g. int8-quantised weights) is a request the engine
    # cannot honour (the gate multiplies by a float mask); say so rather than silently skipping it
    unmaskable = [r for r in rows if r.reason == "not floating point" and _matches((r.name, *r.tied), selection.include)]
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
