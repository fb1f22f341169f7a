"""``keep-outputs``: keep the model's own outputs on your text, with no labels at all.

The target is the frozen network's output without any mask (``model.unmasked(...)``, the same weights, no second
copy of the model); the loss pulls the masked network's output towards it. What is compared (``output=``):

* ``embedding`` (default): the sentence embedding, the mean over the real tokens of the last hidden state (what
  sentence-transformers' mean pooling gives, before any normalisation);
* ``logits``: the model's logits (per token for an LM, per example for a classifier);
* ``hidden:N``: hidden state ``N`` (0: the embedding layer's output, ``N``: after block ``N``), per token.

Loss (``loss=``): ``cosine`` (1 - cosine similarity, the default), ``kl`` (KL(unmasked || masked) of the softmax
of the logits; ``output=logits`` only) or ``mse``. Per-token outputs are averaged over the real tokens.
Metrics: ``cosine`` (primary: the mean cosine similarity to the unmasked output, in [-1, 1]; 1.0 on the unmasked
network), ``mse``, and for logits ``kl`` and ``agreement`` (how often the top logit is the same).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import BadInputError
from . import text
from .base import ArgError, TextTask

LOSSES = ("cosine", "kl", "mse")


class KeepOutputs(TextTask):
    """Keep the unmasked model's outputs (embedding, logits or a hidden state) on local text; no labels needed."""

    name = "keep-outputs"
    metric = "cosine"
    metric_range = (-1.0, 1.0)

    def __init__(
        self,
        data: Path | None = None,
        eval_data: Path | None = None,
        text_column: str = "text",
        output: str = "embedding",
        loss: str = "cosine",
        max_length: int = 128,
        holdout: int = 10,
        eval_size: int = 500,
        eval_batch_size: int = 32,
        tokenizer: Path | None = None,
    ):
        self._data_args(data, eval_data, text_column, max_length, holdout, eval_size, eval_batch_size, tokenizer)
        kind, _, layer = output.partition(":")
        if kind not in ("embedding", "logits", "hidden") or (kind == "hidden") != bool(layer):
            raise ArgError(f"output must be embedding, logits or hidden:N, got {output!r}")
        if kind == "hidden" and not layer.lstrip("-").isdigit():
            raise ArgError(f"output=hidden:N takes a layer number N, got {output!r}")
        if loss not in LOSSES:
            raise ArgError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if loss == "kl" and kind != "logits":
            raise ArgError("loss=kl compares probability distributions: it needs output=logits")
        self.output, self.kind, self.layer, self.loss_kind = output, kind, int(layer or 0), loss

    def _check_model(self, module: Any) -> None:
        if self.kind == "hidden" and not text.is_hf(module):
            raise BadInputError(f"{self.name}: output=hidden:N needs a Hugging Face model (output_hidden_states); "
                                f"{type(module).__name__} gives only its output")  # fmt: skip
        if self.kind == "logits" and text.is_hf(module) and getattr(module, "base_model", None) is module:
            raise BadInputError(f"{self.name}: {type(module).__name__} is a base model without a head: it has no logits; "
                                "use output=embedding or output=hidden:N")  # fmt: skip
        layers = getattr(getattr(module, "config", None), "num_hidden_layers", None)
        if self.kind == "hidden" and layers is not None and not -layers - 1 <= self.layer <= layers:
            raise BadInputError(f"{self.name}: output=hidden:{self.layer}: the model has hidden states 0..{layers}")

    def outputs(self, model: Any, batch: dict[str, Tensor], unmasked: bool = False) -> tuple[Tensor, Tensor | None]:
        """``(values, weights)``: per example (embedding; weights None) or per token (weights: the attention mask)."""
        hf = text.is_hf(getattr(model, "module", model))
        out = text.run(model, batch, hidden_states=hf and self.kind != "logits", unmasked=unmasked)
        mask = batch["attention_mask"]
        if self.kind == "logits" or not hf:  # a plain module gives only its output
            values = text.logits_of(out).float()
        else:
            values = out.hidden_states[self.layer if self.kind == "hidden" else -1].float()
        if self.kind == "embedding":
            if values.dim() == 3:
                w = mask.unsqueeze(-1).to(values.dtype)
                values = (values * w).sum(1) / w.sum(1).clamp(min=1.0)
            return values, None
        if values.dim() == 3 and values.shape[1] == mask.shape[1]:
            return values, mask.to(values.dtype)
        return values, None

    @staticmethod
    def _mean(per: Tensor, weights: Tensor | None) -> Tensor:
        if weights is None:
            return per.mean()
        return (per * weights).sum() / weights.sum().clamp(min=1.0)

    def _per_item(self, got: Tensor, want: Tensor) -> dict[str, Tensor]:
        """Per example (or per token) scores of the masked output ``got`` against the unmasked ``want``."""
        scores = {
            "cosine": F.cosine_similarity(got, want, dim=-1, eps=1e-8).clamp(-1.0, 1.0),
            "mse": (got - want).pow(2).mean(-1),
        }
        if self.kind == "logits":
            scores["kl"] = (F.softmax(want, -1) * (F.log_softmax(want, -1) - F.log_softmax(got, -1))).sum(-1)
            scores["agreement"] = (got.argmax(-1) == want.argmax(-1)).to(got.dtype)
        return scores

    def loss(self, model: Any, batch: dict[str, Tensor]) -> Tensor:
        want, weights = self.outputs(model, batch, unmasked=True)
        got, _ = self.outputs(model, batch)
        per = self._per_item(got, want.detach())
        value = 1.0 - per["cosine"] if self.loss_kind == "cosine" else per[self.loss_kind]
        return self._mean(value, weights)

    def evaluate(self, model: Any, batches: Iterable[Any]) -> dict[str, float]:
        self.ensure_setup(model)
        sums: dict[str, float] = {}
        count = 0.0
        for batch in batches:
            want, weights = self.outputs(model, batch, unmasked=True)
            got, _ = self.outputs(model, batch)
            n = float(weights.sum()) if weights is not None else float(got.shape[0] if got.dim() > 1 else 1)
            for key, per in self._per_item(got, want).items():
                sums[key] = sums.get(key, 0.0) + float(self._mean(per, weights)) * n
            count += n
        if not count:
            raise BadInputError(f"{self.name}: the evaluation set is empty")
        out = {k: v / count for k, v in sums.items()}
        out["cosine"] = min(1.0, max(-1.0, out["cosine"]))
        return out
