"""SCAN (Lake & Baroni, ICML 2018), generated from its published grammar: no download.

The grammar (their Fig. 6)::

    C -> S and S | S after S | S
    S -> V twice | V thrice | V
    V -> D opposite DIR | D around DIR | D | U        (D's primitive part: U or "turn"; DIR: left | right)
    D -> U left | U right | turn left | turn right
    U -> walk | look | run | jump

and its semantics: ``[[U]]`` is the action (``walk`` -> ``I_WALK``), ``[[turn]]`` is nothing; ``[[x left]]`` =
``I_TURN_LEFT [[x]]``; ``[[x opposite left]]`` = ``I_TURN_LEFT I_TURN_LEFT [[x]]``; ``[[x around left]]`` =
``(I_TURN_LEFT [[x]])`` four times; ``twice``/``thrice`` repeat; ``[[a and b]]`` = ``[[a]] [[b]]``;
``[[a after b]]`` = ``[[b]] [[a]]``. This gives the 20,910 distinct commands of the published ``tasks.txt``,
with action sequences of 1..48 actions.

Splits, by the published rules (each command appears once in its set):

* ``simple``: a seeded random 80/20 split of all commands (16,728 train / 4,182 test). The published
  ``simple_split`` files are one such random split; this is another one (``split_seed`` picks it).
* ``jump`` (add primitive "jump"): train = every command without the word "jump", plus the bare command
  ``jump``; test = every other command containing "jump" (13,204 / 7,706).
* ``turn_left`` (add primitive "turn left"): the same rule for the two-word primitive "turn left" (the
  commands with ``turn opposite left`` or ``turn around left`` stay in train): 19,702 / 1,208.
* ``length``: train = commands whose action sequence has at most 22 actions, test = the rest (24..48 actions;
  no command has 23): 16,990 / 3,920.

The published add-primitive training files are longer than their distinct commands (14,670 lines for the
jump split): the bare primitive is repeated there, so that a model trained on them sees it more often. This
module keeps every command once; the task's train stream draws uniformly from the split's train set.

Vocabularies (fixed): input ``<pad> <eos>`` + the 13 words; output ``<eos>`` + the 6 actions (the 7 classes a
decoder predicts) + ``<sos>`` (decoder input only). Encoded tensors: ``src`` (N, 10) int64, the words then
``<eos>``, padded with ``<pad>`` = 0; ``tgt`` (N, 49) int64, the actions then ``<eos>`` = 0, padded with -1.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

PRIMITIVES = ("walk", "look", "run", "jump")
DIRECTIONS = ("left", "right")
IN_WORDS = (*PRIMITIVES, "turn", *DIRECTIONS, "opposite", "around", "twice", "thrice", "and", "after")
IN_TOKENS = ("<pad>", "<eos>", *IN_WORDS)
ACTIONS = ("I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT")
OUT_TOKENS = ("<eos>", *ACTIONS, "<sos>")
N_CLASSES = len(OUT_TOKENS) - 1  # what the decoder predicts: <eos> and the actions (not <sos>)
SRC_PAD, SRC_EOS = 0, 1
TGT_EOS, TGT_SOS, TGT_PAD = 0, len(OUT_TOKENS) - 1, -1
MAX_WORDS, MAX_ACTIONS = 9, 48
N_COMMANDS = 20910
SPLITS = ("simple", "jump", "turn_left", "length")
LENGTH_CUTOFF = 22  # the length split's train set: at most this many actions

_IN_ID = {w: i for i, w in enumerate(IN_TOKENS)}
_OUT_ID = {a: i for i, a in enumerate(OUT_TOKENS)}
_TURN = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}


def _verbs() -> list[tuple[str, list[str]]]:
    """Every V with its actions, in the grammar's order."""
    out: list[tuple[str, list[str]]] = []
    for x in (*PRIMITIVES, "turn"):
        act = [] if x == "turn" else [f"I_{x.upper()}"]
        for d in DIRECTIONS:
            out.append((f"{x} opposite {d}", [_TURN[d], _TURN[d], *act]))
            out.append((f"{x} around {d}", [_TURN[d], *act] * 4))
    for x in (*PRIMITIVES, "turn"):
        act = [] if x == "turn" else [f"I_{x.upper()}"]
        for d in DIRECTIONS:
            out.append((f"{x} {d}", [_TURN[d], *act]))
    out += [(u, [f"I_{u.upper()}"]) for u in PRIMITIVES]
    return out


def _sentences() -> list[tuple[str, list[str]]]:
    """Every S: V, V twice, V thrice."""
    return [(f"{v}{suffix}", acts * n) for v, acts in _verbs() for suffix, n in (("", 1), (" twice", 2), (" thrice", 3))]


@lru_cache(maxsize=1)
def commands() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """All 20,910 SCAN commands ``(command, actions)``, in a fixed order: S, then S and S, then S after S."""
    s = _sentences()
    out = [(c, tuple(a)) for c, a in s]
    out += [(f"{c1} and {c2}", (*a1, *a2)) for c1, a1 in s for c2, a2 in s]
    out += [(f"{c1} after {c2}", (*a2, *a1)) for c1, a1 in s for c2, a2 in s]
    return tuple(out)


def interpret(command: str) -> tuple[str, ...]:
    """The action sequence of one command (a lookup in :func:`commands`); KeyError if not a SCAN command."""
    return _table()[command]


@lru_cache(maxsize=1)
def _table() -> dict[str, tuple[str, ...]]:
    return dict(commands())


@lru_cache(maxsize=1)
def encoded() -> tuple[Tensor, Tensor]:
    """``(src, tgt)`` of every command, in :func:`commands` order (see the module docstring for the layout)."""
    cmds = commands()
    src = torch.full((len(cmds), MAX_WORDS + 1), SRC_PAD, dtype=torch.int64)
    tgt = torch.full((len(cmds), MAX_ACTIONS + 1), TGT_PAD, dtype=torch.int64)
    for i, (c, acts) in enumerate(cmds):
        words = [_IN_ID[w] for w in c.split()] + [SRC_EOS]
        src[i, : len(words)] = torch.tensor(words)
        out = [_OUT_ID[a] for a in acts] + [TGT_EOS]
        tgt[i, : len(out)] = torch.tensor(out)
    return src, tgt


def _has_phrase(command: str, phrase: str) -> bool:
    return f" {phrase} " in f" {command} "


@lru_cache(maxsize=16)
def split_indices(split: str, split_seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(train, test)``: int64 indices into :func:`commands` of one split (sorted; ``split_seed``: ``simple`` only)."""
    cmds = commands()
    n = len(cmds)
    if split == "simple":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        n_test = round(0.2 * n)
        return perm[n_test:].sort().values, perm[:n_test].sort().values
    if split in ("jump", "turn_left"):
        phrase = split.replace("_", " ")
        is_test = [_has_phrase(c, phrase) and c != phrase for c, _ in cmds]
    elif split == "length":
        is_test = [len(a) > LENGTH_CUTOFF for _, a in cmds]
    else:
        raise ValueError(f"unknown SCAN split {split!r} (known: {', '.join(SPLITS)})")
    mask = torch.tensor(is_test)
    idx = torch.arange(n)
    return idx[~mask], idx[mask]


def batch(indices: Tensor) -> tuple[Tensor, Tensor]:
    """``(src, tgt)`` of the commands at ``indices``, trimmed to the longest input and output among them."""
    src, tgt = encoded()
    s, t = src[indices], tgt[indices]
    n_src = int((s != SRC_PAD).sum(1).max()) if len(indices) else 1
    n_tgt = int((t != TGT_PAD).sum(1).max()) if len(indices) else 1
    return s[:, :n_src].contiguous(), t[:, :n_tgt].contiguous()


def decode_actions(tokens: Tensor) -> list[str]:
    """Predicted or target token ids (B, T) -> one action string per row, up to its first ``<eos>``."""
    out = []
    for row in tokens.tolist():
        acts = []
        for t in row:
            if t == TGT_EOS or t < 0:
                break
            acts.append(OUT_TOKENS[t])
        out.append(" ".join(acts))
    return out
