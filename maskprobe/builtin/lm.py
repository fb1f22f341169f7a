"""``text-lm``: keep a causal language model predicting the next token of your text.

``maskprobe train ./gpt2-folder --task text-lm --task-arg data=legal.txt``. Loss: the mean next-token
cross-entropy over the real (non-padding) tokens of the batch. Metrics: ``accuracy`` (next-token accuracy, the
primary metric, in [0, 1]), ``loss`` (mean negative log-likelihood per predicted token, nats) and ``perplexity``
(``exp(loss)``), all over every predicted token of the evaluation set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import BadInputError
from . import text
from .base import ArgError, TextTask
from .data import Records


class TextLM(TextTask):
    """Causal-LM next-token loss on local text (one example per line / record, or ``chunk=N`` tokens of running
    text: the file's text, records joined by the end-of-text token, cut into N-token examples)."""

    name = "text-lm"
    metric = "accuracy"

    def __init__(
        self,
        data: Path | None = None,
        eval_data: Path | None = None,
        text_column: str = "text",
        chunk: int = 0,
        max_length: int = 128,
        holdout: int = 10,
        eval_size: int = 500,
        eval_batch_size: int = 16,
        tokenizer: Path | None = None,
    ):
        self._data_args(data, eval_data, text_column, max_length, holdout, eval_size, eval_batch_size, tokenizer)
        if chunk < 0 or chunk == 1:
            raise ArgError(f"chunk must be 0 (one example per line) or >= 2 tokens, got {chunk}")
        self.chunk = chunk
        self.whole_text = chunk > 0

    def _check_model(self, module: Any) -> None:
        # transformers' own test of a causal LM head: False for BertModel (no head) and BertForMaskedLM (not causal)
        can_generate = getattr(module, "can_generate", None)
        if text.is_hf(module) and callable(can_generate) and not can_generate():
            raise BadInputError(
                f"{self.name}: {type(module).__name__} is not a causal language model (no next-token head); text-lm "
                "needs e.g. GPT2LMHeadModel or ...ForCausalLM (text-mlm for a masked LM, keep-outputs for any model)"
            )
        if self.chunk and self.positions and self.chunk > self.positions:
            raise BadInputError(f"{self.name}: chunk={self.chunk} is longer than the model's {self.positions} positions")

    def _examples(self, records: Records) -> list[Any]:
        if self.chunk:
            return text.chunks(self.tok, self._texts(records), self.chunk)
        return [ids for ids in super()._examples(records) if len(ids) >= 2]

    def _why_empty(self) -> str:
        return " (an example needs at least 2 tokens)"

    def token_nll(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(nll, keep, hit)`` per predicted position: the negative log-likelihood of the next token, whether the
        position is a real token (not padding), whether the top prediction is right."""
        logits = text.logits_of(text.run(model, batch))[:, :-1].float()
        target = batch["input_ids"][:, 1:]
        keep = batch["attention_mask"][:, 1:].bool()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none").view_as(target)
        return nll, keep, logits.argmax(-1) == target

    def loss(self, model: Any, batch: dict[str, Tensor]) -> Tensor:
        nll, keep, _ = self.token_nll(model, batch)
        return (nll * keep).sum() / keep.sum().clamp(min=1)

    def evaluate(self, model: Any, batches: Iterable[Any]) -> dict[str, float]:
        self.ensure_setup(model)
        total, right, nll_sum = text.token_totals(self.token_nll(model, batch) for batch in batches)
        mean = nll_sum / total if total else float("nan")
        return {
            "accuracy": right / total if total else float("nan"),
            "loss": mean,
            "perplexity": math.exp(mean) if mean < 700 else float("inf"),
            "tokens": float(total),
        }
