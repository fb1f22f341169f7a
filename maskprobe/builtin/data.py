"""Local data files for the built-in tasks: read a file into columns, split it into train and eval by a fixed rule.

Formats, told apart by the path (docs/builtin-tasks.md):

* ``.txt`` (any other suffix too): one example per non-blank line in column ``text``; with ``whole=True`` the whole
  file is one record (running text, cut into token chunks by the task);
* ``.jsonl`` / ``.ndjson``: one JSON object per line; ``.json``: a JSON array of objects (or JSON lines);
* ``.csv`` / ``.tsv``: a header row naming the columns (CSV: quoted fields may hold commas and newlines; TSV: no
  quoting, a field ends at the next tab);
* ``.parquet`` (read with ``pyarrow``) and a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a
  ``DatasetDict``: its ``train`` split, or its only split, trains; its ``validation``, ``test``, ``eval`` or
  ``dev`` split evaluates), through the optional ``datasets`` library (``pip install 'maskprobe[data]'``).

Text is UTF-8 (a byte-order mark is skipped).

Nothing here knows about tokens or models; every error a user can make with a file is one BadInputError line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError, one_line

JSON_LINES = (".jsonl", ".ndjson")
EVAL_SPLITS = ("validation", "test", "eval", "dev")


@dataclass
class Records:
    """The columns of one data file (column name -> values, all of one length).

    Attributes:
        source: the path, for messages.
        columns: column name -> list of values (in file order).
        eval: a split the source itself holds for evaluation (a DatasetDict's ``validation``/``test``), or None.
    """

    source: str
    columns: dict[str, list[Any]]
    eval: Records | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def column(self, name: str, what: str = "text") -> list[Any]:
        """The values of column ``name``; a one-line error naming the columns there are when it is missing."""
        if name not in self.columns:
            have = ", ".join(self.columns) or "none"
            raise BadInputError(
                f"{self.source} has no column {name!r} (columns: {have}); choose the {what} column with "
                f"--task-arg {what}_column=NAME"
            )
        return self.columns[name]


def read_records(path: str | Path, *, whole: bool = False) -> Records:
    """Read ``path`` (see the module docstring) into columns.

    Args:
        whole: a text file as one record (running text) instead of one record per line.

    Raises:
        BadInputError: the file is missing, empty, malformed, or needs ``datasets`` that is not installed.
    """
    from ..paths import input_kind

    p = Path(path).expanduser()
    # a FIFO would block open() forever and /dev/zero never ends: only a regular file or a folder is read
    if input_kind(p, f"data file not found: {p}") == "dir":
        records = _read_hf_folder(p)
    else:
        suffix = p.suffix.lower()
        if suffix in JSON_LINES or suffix == ".json":
            records = _read_json(p)
        elif suffix in (".csv", ".tsv"):
            records = _read_csv(p, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".parquet":
            records = _read_parquet(p)
        else:
            records = _read_text(p, whole)
    if len(records) == 0:
        raise BadInputError(f"{p} holds no examples")
    return records


def _text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")  # Excel writes a byte-order mark before the first column's name
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {p}: {exc.strerror or exc}") from None


def _read_text(p: Path, whole: bool) -> Records:
    text = _text(p)
    if whole:
        return Records(str(p), {"text": [text] if text.strip() else []})
    return Records(str(p), {"text": [line.strip() for line in text.splitlines() if line.strip()]})


def _read_json(p: Path) -> Records:
    text = _text(p)
    rows: list[Any]
    if p.suffix.lower() == ".json" and text.lstrip()[:1] == "[":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{p}, line {n}: not a JSON object ({exc.msg})") from None
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise BadInputError(f"{p}, record {n}: a JSON object with named fields is needed, got {type(row).__name__}")
    names = dict.fromkeys(n for row in rows for n in row)  # every field of any row, in order of appearance
    return Records(str(p), {n: [row.get(n) for row in rows] for n in names})


def _read_csv(p: Path, delimiter: str) -> Records:
    text = _text(p)
    tsv = delimiter == "\t"
    # CSV: a quoted field may span lines, so the reader gets the text, not its lines; TSV files (GLUE's, ...) hold raw
    # quotes inside the text, so a tab alone ends a field there
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
        rows = [dict(r) for r in reader]
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise BadInputError(f"{p} is not valid {'TSV' if tsv else 'CSV'} ({exc})") from None
    if not header:
        return Records(str(p), {})
    twice = sorted({n for n in header if header.count(n) > 1})
    if twice:  # csv.DictReader keeps the last of two equal names: the task would silently read another column
        raise BadInputError(f"{p}: the header names column {twice[0]!r} twice; give every column its own name")
    return Records(str(p), {name: [r.get(name) for r in rows] for name in header})


def _read_parquet(p: Path) -> Records:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInputError(f"reading {p} needs pyarrow: pip install 'maskprobe[data]'") from None
    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends: a damaged or non-parquet file
        raise BadInputError(f"{p} is not a readable parquet file ({one_line(exc)})") from None
    return Records(str(p), {name: list(values) for name, values in table.to_pydict().items()})


def _from_dataset(ds: Any, source: str) -> Records:
    return Records(source, {name: list(ds[name]) for name in ds.column_names})


def _read_hf_folder(p: Path) -> Records:
    if not any((p / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
        raise BadInputError(f"{p} is a folder but not a Hugging Face datasets folder (save_to_disk): give a data file")
    try:
        import datasets
    except ImportError:
        raise BadInputError(f"reading {p} needs the datasets library: pip install 'maskprobe[data]'") from None
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:  # a damaged folder: datasets' own words, on one line
        raise BadInputError(f"{p}: datasets could not load it ({one_line(exc)})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" not in ds and len(splits) != 1:
            raise BadInputError(f"{p} has the splits {', '.join(splits)} but no 'train' split to train on")
        train = "train" if "train" in ds else splits[0]
        evals = [s for s in EVAL_SPLITS if s in ds and s != train]
        records = _from_dataset(ds[train], f"{p} [{train}]")
        if evals:
            records.eval = _from_dataset(ds[evals[0]], f"{p} [{evals[0]}]")
        return records
    return _from_dataset(ds, str(p))


def holdout_split(n: int, every: int) -> tuple[list[int], list[int]]:
    """``(train, eval)`` indices of ``n`` examples: every ``every``-th one (the ``every``-th, ``2*every``-th, ...)
    is held out for evaluation, the rest train; ``every <= 1`` or too few examples: one held out at least.

    Raises:
        BadInputError: fewer than two examples (nothing would be left on one side).
    """
    if n < 2:
        raise BadInputError(f"{n} example{'s' if n != 1 else ''}: at least 2 are needed to hold one out for evaluation "
                            "(or give --task-arg eval_data=FILE)")  # fmt: skip
    every = max(2, min(int(every), n))
    held = [i for i in range(n) if i % every == every - 1]
    train = [i for i in range(n) if i % every != every - 1]
    return train, held
