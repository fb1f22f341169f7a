"""Models and a task for the checkpoint tests (``--model``/``--task`` load them as ``file.py:name``).

* ``fnn``: the arithmetic tasks' FNN (42 -> hidden -> 20), for ``--model`` with ``--model-arg hidden=...``;
* ``quantised_fnn``: the same with an extra int8 parameter ``q`` (what the engine cannot mask);
* ``tiny_gpt2``: a 1-layer GPT-2 built from a small config (nothing downloaded);
* ``TinyLMTask``: next-token prediction on counting sequences, a loss that fits ``tiny_gpt2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from maskprobe import Task
from sample_tasks.arithmetic import IN_FEATURES, OUT_FEATURES, build_fnn, parse_hidden

VOCAB, SEQ = 32, 8


def fnn(hidden: str = "16,16") -> nn.Module:
    return build_fnn(IN_FEATURES, parse_hidden(hidden), OUT_FEATURES)


class QuantisedFNN(nn.Sequential):
    """An FNN that also carries an int8 tensor as a (frozen) parameter, as quantised checkpoints do."""

    def __init__(self, hidden: str = "16,16"):
        super().__init__(*fnn(hidden))
        self.q = nn.Parameter(torch.arange(20, dtype=torch.int8), requires_grad=False)


def quantised_fnn(hidden: str = "16,16") -> nn.Module:
    return QuantisedFNN(hidden)


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, n_inner=32, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


class TinyLMTask(Task):
    """Predict the next token of ``s, s+1, s+2, ...`` (mod the vocabulary); metric: next-token accuracy."""

    name = "tiny-lm"

    def __init__(self, eval_size: int = 64):
        self.eval_size = int(eval_size)

    def _sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        start = torch.randint(0, VOCAB, (n, 1), generator=generator)
        return (start + torch.arange(SEQ)) % VOCAB

    def batches(self, split: str, batch_size: int, generator: Any) -> Iterator[Any]:
        if split == "train":
            while True:
                yield self._sample(batch_size, generator)
        left = self.eval_size
        while left > 0:
            n = min(batch_size, left)
            left -= n
            yield self._sample(n, generator)

    def loss(self, model: Any, batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, labels=batch).loss

    def evaluate(self, model: Any, batches: Any) -> dict[str, float]:
        hits = total = 0
        for x in batches:
            pred = model(input_ids=x).logits[:, :-1].argmax(-1)
            hits += int((pred == x[:, 1:]).sum())
            total += pred.numel()
        return {"accuracy": hits / total}
