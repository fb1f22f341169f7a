"""Layer order and input/output roles of the masked tensors (docs/metrics.md, "Input and output layers").

``compare`` reports the input and output layers apart from the hidden ones, because trivially unshared I/O
weights (one task reads other input units) can dominate a total. The roles are decided once, at train time,
from the module itself (:func:`model_layout`), and recorded in the mask file's ``layers`` metadata, so every
command sees the same order and roles with or without the checkpoint. ``--io-layer GLOB`` or
``--io-layer none`` replaces them (:func:`with_io`).

The rule on a module, over the masked tensors in ``named_parameters()`` order:

* the *input layer* is the module of the first masked tensor with two or more dimensions, unless an embedding
  (``nn.Embedding``, or a name containing ``embed``) comes before it — then the embedding is the input layer,
  and it is not masked — or that module sits inside a repeated block (a numbered block such as
  ``encoder.layer.0.attention.self.query``: layer 0's query is not "the input layer" of a transformer). For
  an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` only its first layer's input weights (``*_ih_l0``) are the input layer;
* the *output layer* is the module of the last masked tensor with two or more dimensions (a head such as
  ``lm_head`` or ``classifier``), unless it sits inside a repeated block or is a recurrent module;
* every other masked tensor is *hidden*.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

ROLES = ("input", "hidden", "output")
NO_IO = ("none",)  # --io-layer none: every tensor is hidden


@dataclass(frozen=True)
class Layout:
    """The masked tensors in model order with their roles; ``source`` says where they came from."""

    names: tuple[str, ...]
    roles: Mapping[str, str]
    source: str  # "model", "mask file", "names" (no model: natural order), "--io-layer"

    def to_list(self) -> list[dict[str, str]]:
        """The ``layers`` metadata of a mask file: ``[{"name", "role"}]`` in model order."""
        return [{"name": n, "role": self.roles[n]} for n in self.names]

    def io_tensors(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if self.roles[n] != "hidden")


def natural_order(names: Sequence[str]) -> list[str]:
    """Names sorted with their numbers compared as numbers (``layers.2`` before ``layers.10``): the model's
    order for the usual ``layers.N`` naming, when nothing better is known."""
    return sorted(names, key=lambda s: [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t])


def _module(name: str) -> str:
    return name.rpartition(".")[0]


def _in_block(module: str) -> bool:
    """``encoder.layer.3.attention`` is inside block 3; ``8`` (an ``nn.Sequential`` element) and ``head`` are not."""
    return any(p.isdigit() for p in module.split(".")[:-1])


def model_layout(module: Any, names: Sequence[str]) -> Layout:
    """Order and roles of the masked ``names`` of ``module`` (see the module docstring for the rule)."""
    from torch import nn

    chosen = set(names)
    params = list(module.named_parameters())  # tied tensors once, under their first name
    order = [n for n, _ in params if n in chosen]
    order += [n for n in names if n not in set(order)]  # names the module does not list (kept, hidden)
    shapes = {n: tuple(p.shape) for n, p in params}
    modules = dict(module.named_modules())
    embeddings = {
        f"{m}.{p}" if m else p
        for m, mod in modules.items()
        if isinstance(mod, nn.Embedding | nn.EmbeddingBag)
        for p, _ in mod.named_parameters(recurse=False)
    }
    roles = dict.fromkeys(order, "hidden")
    weights = [n for n in order if len(shapes.get(n, ())) >= 2]
    if len(weights) < 2:
        return Layout(tuple(order), roles, "model")
    first, last = weights[0], weights[-1]
    before_first = [n for n, _ in params[: [n for n, _ in params].index(first)]] if first in shapes else []
    embedded = any(n in embeddings or "embed" in n.lower() for n in before_first)

    def recurrent(mod_name: str) -> bool:
        return isinstance(modules.get(mod_name), nn.RNNBase)

    if not embedded and not _in_block(_module(first)):
        mod = _module(first)
        for n in order:
            if _module(n) == mod and (not recurrent(mod) or re.search(r"_ih_l0(_reverse)?$", n)):
                roles[n] = "input"
    mod = _module(last)
    if mod != _module(first) and not _in_block(mod) and not recurrent(mod):
        for n in order:
            if _module(n) == mod:
                roles[n] = "output"
    return Layout(tuple(order), roles, "model")


def names_layout(names: Sequence[str], shapes: Mapping[str, Sequence[int]], order: Sequence[str] | None = None) -> Layout:
    """Without a model: ``order`` (or :func:`natural_order`), the module of the first and last tensor with two or more
    dimensions as input and output layer (masks written before roles were recorded)."""
    rank = {n: i for i, n in enumerate(order or ())}
    ordered = sorted(natural_order(names), key=lambda n: rank.get(n, len(rank)))  # stable: natural order within a rank
    roles = dict.fromkeys(ordered, "hidden")
    weights = [n for n in ordered if len(shapes.get(n, ())) >= 2]
    if len(weights) >= 2:
        first, last = _module(weights[0]), _module(weights[-1])
        for n in ordered:
            roles[n] = "input" if _module(n) == first else "output" if _module(n) == last else roles[n]
    return Layout(tuple(ordered), roles, "names")


def recorded_layout(metadata: Mapping[str, Any], names: Sequence[str]) -> Layout | None:
    """The layout a mask file recorded at train time (its ``layers`` metadata), if it covers exactly ``names``."""
    rows = metadata.get("layers")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("role") in ROLES for r in rows):
        return None
    order = [str(r.get("name")) for r in rows]
    if sorted(order) != sorted(names):
        return None
    return Layout(tuple(order), {str(r["name"]): r["role"] for r in rows}, "mask file")


def with_io(layout: Layout, io: Sequence[str] | None) -> Layout:
    """``io`` globs name the input/output tensors: matches before the first non-matching tensor are input, the
    others output; ``["none"]`` makes every tensor hidden; None or empty keeps ``layout``."""
    if not io:
        return layout
    if tuple(io) == NO_IO:
        return Layout(layout.names, dict.fromkeys(layout.names, "hidden"), "--io-layer")
    roles, seen_hidden = {}, False
    for n in layout.names:
        if any(fnmatchcase(n, g) for g in io):
            roles[n] = "output" if seen_hidden else "input"
        else:
            roles[n] = "hidden"
            seen_hidden = True
    return Layout(layout.names, roles, "--io-layer")
