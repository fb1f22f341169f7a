"""``text-mlm``: keep a masked language model filling in masked tokens of your text.

Masking follows BERT (Devlin et al. 2019): each real token (not ``[CLS]``/``[SEP]``/padding) is chosen with
probability ``mask_prob`` (0.15); a chosen token becomes ``[MASK]`` 80 % of the time, a random token 10 %, stays
10 %; the loss is the cross-entropy of the original token at the chosen positions. Every example with a real
token gets at least one chosen position (short lines would otherwise often have none). Train batches are masked
with the engine's seeded generator; the evaluation set is masked once per call from the fixed evaluation seed,
example by example, so it is the same set of masked positions on every call and at every batch size.
Metrics: ``accuracy`` (masked-token accuracy, primary), ``loss`` (mean cross-entropy at the chosen positions).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BadInputError
from . import text
from .base import ArgError, TextTask

IGNORE = -100


class TextMLM(TextTask):
    """Masked-LM loss (BERT's 80/10/10 rule, seeded) on local text, one example per line / record."""

    name = "text-mlm"
    metric = "accuracy"

    def __init__(
        self,
        data: Path | None = None,
        eval_data: Path | None = None,
        text_column: str = "text",
        mask_prob: float = 0.15,
        max_length: int = 128,
        holdout: int = 10,
        eval_size: int = 500,
        eval_batch_size: int = 32,
        tokenizer: Path | None = None,
    ):
        self._data_args(data, eval_data, text_column, max_length, holdout, eval_size, eval_batch_size, tokenizer)
        if not 0.0 < mask_prob < 1.0:
            raise ArgError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.mask_prob = mask_prob

    def _check_model(self, module: Any) -> None:
        if getattr(self.tok, "mask_token_id", None) is None:
            raise BadInputError(f"{self.name}: the tokenizer has no mask token; text-mlm needs a masked-LM tokenizer "
                                "(e.g. BERT's [MASK])")  # fmt: skip
        out = getattr(module, "get_output_embeddings", None)
        if text.is_hf(module) and callable(out) and out() is None:
            raise BadInputError(f"{self.name}: {type(module).__name__} has no language-modelling head; text-mlm needs a "
                                "masked LM, e.g. BertForMaskedLM (or use keep-outputs: it keeps a bare encoder's "
                                "hidden states)")  # fmt: skip
        config = getattr(module, "config", None)
        self.vocab = min(len(self.tok), int(getattr(config, "vocab_size", 0) or len(self.tok)))
        self.special = {int(i) for i in getattr(self.tok, "all_special_ids", [])}

    def mask(self, ids: list[int], generator: torch.Generator) -> tuple[list[int], list[int]]:
        """``(inputs, labels)`` of one example by the BERT rule (labels: the original id where chosen, else -100)."""
        n = len(ids)
        real = torch.tensor([i not in self.special for i in ids], dtype=torch.bool)
        draw = torch.rand(n, generator=generator)
        how = torch.rand(n, generator=generator)
        random_ids = torch.randint(0, self.vocab, (n,), generator=generator)
        chosen = (draw < self.mask_prob) & real
        if real.any() and not chosen.any():
            chosen[int(torch.where(real, draw, torch.full_like(draw, 2.0)).argmin())] = True
        inputs = torch.tensor(ids, dtype=torch.long)
        labels = torch.where(chosen, inputs, torch.full_like(inputs, IGNORE))
        inputs = torch.where(chosen & (how < 0.8), torch.full_like(inputs, int(self.tok.mask_token_id)), inputs)
        inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)
        return inputs.tolist(), labels.tolist()

    def _extend(self, batch: dict[str, Tensor], split: str, indices: list[int], generator: Any) -> dict:
        if split == "eval":  # one draw per example in example order, from the fixed evaluation seed
            if getattr(self, "_eval_masked", None) is None or self._eval_seed != generator.initial_seed():
                self._eval_seed = generator.initial_seed()
                gen = torch.Generator().manual_seed(self._eval_seed)
                self._eval_masked = [self.mask(ids, gen) for ids in self.ids["eval"]]
            pairs = [self._eval_masked[i] for i in indices]
        else:
            pairs = [self.mask(self.ids["train"][i], generator) for i in indices]
        batch["input_ids"] = text.collate([p[0] for p in pairs], self.pad)["input_ids"]
        labels = torch.full_like(batch["input_ids"], IGNORE)
        for row, (_, lab) in enumerate(pairs):
            labels[row, : len(lab)] = torch.as_tensor(lab, dtype=torch.long)
        batch["labels"] = labels
        return batch

    def _scores(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        logits = text.logits_of(text.run(model, batch)).float()
        labels = batch["labels"]
        keep = labels != IGNORE
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                              reduction="none").view_as(labels)  # fmt: skip
        return nll, keep, logits.argmax(-1) == labels

    def loss(self, model: Any, batch: dict[str, Tensor]) -> Tensor:
        nll, keep, _ = self._scores(model, batch)
        return (nll * keep).sum() / keep.sum().clamp(min=1)

    def evaluate(self, model: Any, batches: Iterable[Any]) -> dict[str, float]:
        self.ensure_setup(model)
        total, right, nll_sum = text.token_totals(self._scores(model, batch) for batch in batches)
        return {
            "accuracy": right / total if total else float("nan"),
            "loss": nll_sum / total if total else float("nan"),
            "masked_tokens": float(total),
        }
