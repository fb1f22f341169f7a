"""``text-classify``: keep a sequence classifier right on a text column and a label column of your data.

Class subsets make the paper's class removal (its §4) for any classifier: ``classes=c`` trains on class ``c``
alone, ``exclude_classes=c`` on every class but ``c`` (several: ``c,d``); the task then says which classes its
data leaves out (``classes_removed``), and ``compare`` prints the class-removal table for such masks beside a
control mask trained on every class. A subset filters the training data only: the evaluation set keeps every
class, ``accuracy`` (primary) is over the task's classes, and ``accuracy_class_<label>`` is reported for every
label of the evaluation set (``accuracy_removed``: over the left-out classes, when there are any).

A subset renames the task (and its mask file): ``text-classify-without-<classes>`` / ``text-classify-only-<classes>``
(several joined by ``+``; characters other than letters, digits and ``. _ + -`` become ``_``).

Labels map to the model's output units by the checkpoint's ``config.label2id`` when every training label is one of
its names, else as class indices when every one is an integer (``0``, ``1``, ... below ``config.num_labels``); the
evaluation labels must follow the same rule.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BadInputError
from . import text
from .base import ArgError, TextTask
from .data import Records


class TextClassify(TextTask):
    """Sequence classification on local data with a text column and a label column; class subsets."""

    name = "text-classify"
    metric = "accuracy"

    def __init__(
        self,
        data: Path | None = None,
        eval_data: Path | None = None,
        text_column: str = "text",
        label_column: str = "label",
        classes: list[str] | None = None,
        exclude_classes: list[str] | None = None,
        max_length: int = 128,
        holdout: int = 10,
        eval_size: int = 500,
        eval_batch_size: int = 32,
        tokenizer: Path | None = None,
    ):
        self._data_args(data, eval_data, text_column, max_length, holdout, eval_size, eval_batch_size, tokenizer)
        if classes and exclude_classes:
            raise ArgError("give classes= (train on these only) or exclude_classes= (train on all but these), not both")
        self.label_column = label_column
        self.label_names: dict[str, list[str]] = {}  # per split: each example's label, and its output unit
        self.targets: dict[str, list[int]] = {}
        self.only = [str(c) for c in classes or []]
        self.excluded = [str(c) for c in exclude_classes or []]
        for flag, given in (("classes", self.only), ("exclude_classes", self.excluded)):
            twice = sorted({c for c in given if given.count(c) > 1})
            if twice:  # the mask would be named ...-only-animal+animal
                raise ArgError(f"{flag}= names {twice[0]!r} twice")
        self.classes_removed: tuple[str, ...] = tuple(self.excluded)  # the complement of classes= once labels are known
        if self.excluded or self.only:  # the mask of a class subset is named after it (compare's tables, file names)
            kind, subset = ("without", self.excluded) if self.excluded else ("only", self.only)
            self.name = f"text-classify-{kind}-" + re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(subset))

    def _check_model(self, module: Any) -> None:
        if text.is_hf(module) and "SequenceClassification" not in type(module).__name__:
            raise BadInputError(f"{self.name}: {type(module).__name__} is not a sequence classifier; text-classify needs "
                                "e.g. BertForSequenceClassification (or use keep-outputs)")  # fmt: skip
        config = getattr(module, "config", None)
        self.num_labels = int(getattr(config, "num_labels", 0) or 0)
        self.label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
        self.by_name: bool | None = None  # labels are label2id names (True) or class indices (False): the train data says

    def _examples(self, records: Records) -> list[Any]:
        values = records.column(self.label_column, "label")
        missing = next((n for n, v in enumerate(values, 1) if v is None or v == ""), None)
        if missing is not None:
            raise BadInputError(f"{records.source}, record {missing}: no value in the label column {self.label_column!r}")
        labels = [str(v) for v in values]
        ids = text.encode(self.tok, self._texts(records), self.token_limit)
        return [(i, lab) for i, lab in zip(ids, labels, strict=True) if i]

    def _is_index(self, label: str) -> bool:
        return label.isdigit() and (not self.num_labels or int(label) < self.num_labels)

    def _label_index(self, label: str) -> int:
        return self.label2id[label] if self.by_name else int(label)

    def _check_labels(self, labels: list[str], source: str) -> None:
        """Decide (train) or check (eval) how labels map to output units; one line naming a label that fits neither."""
        if self.by_name is None:
            self.by_name = all(lab in self.label2id for lab in labels)
            if not self.by_name and not all(self._is_index(lab) for lab in labels):
                self.by_name = any(lab in self.label2id for lab in labels)  # judge by the rule most of the data follows
        fits = (lambda lab: lab in self.label2id) if self.by_name else self._is_index
        bad = next((lab for lab in labels if not fits(lab)), None)
        if bad is not None:
            names = ", ".join(self.label2id) or "none"
            indices = f"0..{self.num_labels - 1}" if self.num_labels else "0, 1, ..."
            raise BadInputError(f"{source}: label {bad!r} is not one of the model's labels ({names} in config.label2id; "
                                f"or class indices {indices}, all labels alike)")  # fmt: skip

    def _filter(self, split: str, examples: list[Any], source: str) -> list[Any]:
        labels = sorted({lab for _, lab in examples})
        self._check_labels(labels, source)
        if split == "train":
            self.labels = labels
            for c in [*self.only, *self.excluded]:
                if c not in labels:
                    raise BadInputError(f"class {c!r} is not a label of {source} (labels: {', '.join(labels)})")
            if self.only:
                self.classes_removed = tuple(lab for lab in labels if lab not in self.only)
            if self.excluded and not [lab for lab in labels if lab not in self.excluded]:
                raise BadInputError(
                    f"exclude_classes={','.join(self.excluded)} leaves out every label of {source} "
                    f"({', '.join(labels)}): no class is left to train on"
                )
            return [e for e in examples if self.in_task(e[1])]
        return examples

    def in_task(self, label: str) -> bool:
        """Whether ``label`` is one of the task's classes (``classes=`` / ``exclude_classes=``)."""
        return (label in self.only) if self.only else (label not in self.excluded)

    def _why_empty(self) -> str:
        if self.only:
            return f" in the task's classes (classes={','.join(self.only)})"
        return f" in the task's classes (all but exclude_classes={','.join(self.excluded)})" if self.excluded else ""

    def _keep(self, split: str, extra: list[Any]) -> None:
        self.label_names[split] = extra
        self.targets[split] = [self._label_index(lab) for lab in extra]

    def _extend(self, batch: dict[str, Tensor], split: str, indices: list[int], generator: Any) -> dict:
        batch["labels"] = torch.as_tensor([self.targets[split][i] for i in indices], dtype=torch.long)
        return batch

    def _logits(self, model: Any, batch: dict[str, Tensor]) -> Tensor:
        logits = text.logits_of(text.run(model, batch)).float()
        if logits.dim() != 2:
            raise TypeError(f"a sequence classifier returns (batch, classes) logits, got shape {tuple(logits.shape)}")
        return logits

    def loss(self, model: Any, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(self._logits(model, batch), batch["labels"])

    def evaluate(self, model: Any, batches: Iterable[Any]) -> dict[str, float]:
        self.ensure_setup(model)
        names = self.label_names["eval"]
        right: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for batch in batches:
            hits = (self._logits(model, batch).argmax(-1) == batch["labels"]).tolist()
            for i, hit in zip(batch["index"].tolist(), hits, strict=True):
                seen[names[i]] += 1
                right[names[i]] += int(hit)

        def acc(labels: list[str]) -> float:
            n = sum(seen[lab] for lab in labels)
            return sum(right[lab] for lab in labels) / n if n else float("nan")

        mine = [lab for lab in seen if self.in_task(lab)]
        out = {"accuracy": acc(mine), "accuracy_all": acc(list(seen))}
        removed = [lab for lab in seen if not self.in_task(lab)]
        if removed:
            out["accuracy_removed"] = acc(removed)
        out.update({f"accuracy_class_{lab}": acc([lab]) for lab in sorted(seen)})
        return out
