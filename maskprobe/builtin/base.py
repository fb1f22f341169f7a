"""What every built-in text task shares: its data arguments, the tokenizer, the train/eval split and the streams.

A subclass says how records become examples (:meth:`TextTask._examples`: token ids, plus labels of its own) and
what a batch carries beyond ``input_ids``/``attention_mask``/``index`` (:meth:`TextTask._extend`); the rest is
here, once. The data is read and tokenized in :meth:`setup`, which maskprobe calls with the checkpoint before any
``batches()``; a task whose ``evaluate`` is called without it (a notebook's ``evaluate_task``) sets itself up
from the model it is given.

The split, in this order: ``eval_data=FILE`` evaluates on that file (and trains on all of ``data``); a
``datasets`` folder with a ``validation``/``test`` split evaluates on it; otherwise every ``holdout``-th example
of ``data`` (the 10th, 20th, ... by default) is held out for evaluation and the others train. ``eval_size``
caps the evaluation at the first that many held-out examples (0: all).

File arguments (``data``, ``eval_data``, ``tokenizer``) are annotated ``Path``: ``--task-arg`` stores them as absolute
paths in the mask file, so ``compare --checkpoint`` rebuilds the task from any working directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError, CheckpointError
from ..tasks.contract import Task, TaskContext
from . import text
from .data import Records, holdout_split, read_records

SPLITS = ("train", "eval")


class ArgError(TypeError):
    """A bad ``--task-arg`` value found in ``__init__``: maskprobe.tasks.load_task reports a TypeError of a task's
    ``__init__`` as bad input (exit 2, one line), any other exception as a broken plugin."""


class TextTask(Task):
    """Base of the built-in tasks (not registered itself). Subclasses call :meth:`_data_args` in ``__init__``."""

    whole_text = False  # read a .txt file as one running text (text-lm with chunk=N)

    def _data_args(self, data: str | Path | None, eval_data: str | Path | None, text_column: str, max_length: int,
                   holdout: int, eval_size: int, eval_batch_size: int, tokenizer: str | Path | None) -> None:  # fmt: skip
        if not data:
            raise ArgError(f"{self.name} needs --task-arg data=FILE (.txt, .jsonl, .csv, .tsv, .parquet or a datasets folder)")
        for key, value, low in (("max_length", max_length, 2), ("holdout", holdout, 2), ("eval_size", eval_size, 0),
                                ("eval_batch_size", eval_batch_size, 1)):  # fmt: skip
            if value < low:
                raise ArgError(f"{key} must be >= {low}, got {value}")
        self.data, self.eval_data, self.text_column = str(data), str(eval_data or ""), text_column
        self.max_length, self.holdout, self.eval_size, self.eval_batch_size = max_length, holdout, eval_size, eval_batch_size
        self.tokenizer_path = str(tokenizer or "")
        self._ready = False

    # ------------------------------------------------------------------ setup: tokenizer, data, examples

    def setup(self, context: TaskContext) -> None:
        self.context = context
        self.tok = self._tokenizer(context)
        config = getattr(context.module, "config", None)
        if getattr(config, "is_encoder_decoder", False):
            raise BadInputError(f"{self.name}: {type(context.module).__name__} is an encoder-decoder model; the built-in "
                                "tasks run decoder-only and encoder-only models (a plugin can: docs/plugins.md)")  # fmt: skip
        # the model's own padding id where it has one: decoder-only classifiers find an example's last token by it
        pad = getattr(config, "pad_token_id", None)
        self.pad = int(pad) if isinstance(pad, int) else text.pad_id(self.tok)
        self.positions = text.position_limit(context.module)
        self._check_model(context.module)
        self.ids: dict[str, list[list[int]]] = {}
        try:
            self._split_data()
        except BadInputError as exc:  # data.py's messages do not know the task: every line names it
            message = str(exc)
            if message.startswith(f"{self.name}: "):
                raise
            raise BadInputError(f"{self.name}: {message}") from None
        self._ready = True

    @property
    def token_limit(self) -> int:
        """Tokens per example: ``max_length``, at most the model's position embeddings (set up first)."""
        return min(self.max_length, self.positions) if self.positions else self.max_length

    def _tokenizer(self, context: TaskContext) -> Any:
        from ..loading.hf_folder import hf_tokenizer

        try:
            if self.tokenizer_path:
                folder = Path(self.tokenizer_path).expanduser()
                if folder.is_file():
                    raise BadInputError(
                        f"{self.name}: tokenizer={folder} is a file; give the folder that holds it (tokenizer.json, "
                        "tokenizer_config.json, ...)"
                    )
                if not folder.is_dir():
                    raise BadInputError(f"{self.name}: tokenizer folder not found: {folder}")
                return hf_tokenizer(folder)
            if context.path is None or not context.path.is_dir():
                folder = getattr(context.module, "name_or_path", "") or ""
                if folder and Path(folder).is_dir():  # a module loaded by from_pretrained knows its folder
                    return hf_tokenizer(folder)
            return context.tokenizer()
        except CheckpointError as exc:
            raise BadInputError(f"{self.name}: {exc}; give a tokenizer folder with --task-arg tokenizer=DIR") from None

    def _check_model(self, module: Any) -> None:
        """Refuse a checkpoint the task cannot run on (default: any is fine)."""

    def _read(self, path: str) -> Records:
        return read_records(path, whole=self.whole_text)

    def _split_data(self) -> None:
        records = self._read(self.data)
        evals = self._read(self.eval_data) if self.eval_data else records.eval
        train = self._examples(records)
        if evals is not None:
            held = self._examples(evals)
            source = evals.source
        else:
            train_idx, eval_idx = holdout_split(len(train), self.holdout)
            train, held = [train[i] for i in train_idx], [train[i] for i in eval_idx]
            source = f"{records.source} (every {min(self.holdout, max(2, len(train) + len(held)))}th example)"
        if self.eval_size:
            held = held[: self.eval_size]
        self._store("train", train, records.source)
        self._store("eval", held, source)

    def _store(self, split: str, examples: list[Any], source: str) -> None:
        """Keep ``examples`` (each ``(ids, extra)`` or ids) of ``split``, refusing an empty split."""
        examples = self._filter(split, examples, source)
        if not examples:
            raise BadInputError(f"{self.name}: no {split} example left from {source}{self._why_empty()}")
        self.ids[split] = [e[0] if isinstance(e, tuple) else e for e in examples]
        self._keep(split, [e[1] if isinstance(e, tuple) else None for e in examples])

    def _examples(self, records: Records) -> list[Any]:
        """Each record's example: token ids, or ``(ids, extra)`` (a label); subclasses override."""
        return text.encode(self.tok, self._texts(records), self.token_limit)

    def _texts(self, records: Records) -> list[str]:
        values = records.column(self.text_column, "text")
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            what = "empty" if values[bad] is None else f"{type(values[bad]).__name__}, not text"
            raise BadInputError(f"{records.source}, record {bad + 1}: column {self.text_column!r} is {what}")
        return list(values)

    def _filter(self, split: str, examples: list[Any], source: str) -> list[Any]:
        """The examples of ``split`` the task keeps (``source`` names the data in messages); default: all."""
        return examples

    def _keep(self, split: str, extra: list[Any]) -> None:
        """Store the per-example extras (labels) of ``split``; default: nothing."""

    def _why_empty(self) -> str:
        return ""

    # ------------------------------------------------------------------ batches

    def batches(self, split: str, batch_size: int, generator: Any) -> Iterator[Any]:
        # a generator: nothing runs before the first batch is asked for, so evaluate() may set the task up first
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if not self._ready:
            raise BadInputError(f"{self.name}: setup() was not called: the task reads and tokenizes its data with the "
                                "checkpoint's tokenizer first")  # fmt: skip
        examples = self.ids[split]

        def make(indices: list[int]) -> dict[str, torch.Tensor]:
            batch = text.collate([examples[i] for i in indices], self.pad)
            batch["index"] = torch.as_tensor(indices, dtype=torch.long)
            return self._extend(batch, split, indices, generator)

        if split == "train":
            yield from text.train_stream(len(examples), batch_size, generator, make)
        else:
            yield from text.eval_stream(len(examples), min(batch_size, self.eval_batch_size), make)

    def _extend(self, batch: dict[str, torch.Tensor], split: str, indices: list[int], generator: Any) -> dict:
        return batch

    def ensure_setup(self, model: Any) -> None:
        """Set up from the model being evaluated when no one called :meth:`setup` (e.g. a notebook)."""
        if not self._ready:
            module = getattr(model, "module", model)
            folder = getattr(module, "name_or_path", "") or ""
            self.setup(TaskContext(module, Path(folder) if folder else None, ""))
