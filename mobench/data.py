"""Preference data: the row type every task produces, file reading with row-level errors, splits.

A task turns its upstream format into :class:`PreferencePair` rows; everything downstream
(training, generation, scoring) sees only these. Reading is strict: a malformed row raises
:class:`DataError` naming the file, the row number and the problem, never a ``KeyError`` from
deep inside.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# A conversation in the chat format that ``tokenizer.apply_chat_template`` takes:
# [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]
Conversation = list[dict[str, str]]


class DataError(ValueError):
    """A data file or row that mobench cannot use; the message names where and what."""


#: a path inside the local data folder (``mobench run --data-dir DIR``), e.g.
#: ``data-dir:hh-rlhf/helpful-base/test.jsonl.gz``; presets that read real local data use it
DATA_DIR_PREFIX = "data-dir:"


def resolve_data_dir_refs(text: str, data_dir: str | Path | None) -> str:
    """Replace every ``data-dir:`` reference in ``text`` by the data folder's absolute path.

    The folder is ``data_dir``, else ``$MOBENCH_DATA_DIR``. Text without a reference is
    returned unchanged.

    Raises:
        DataError: ``text`` refers to the data folder but none is given, or it does not exist.
    """
    if DATA_DIR_PREFIX not in text:
        return text
    folder = data_dir if data_dir is not None else os.environ.get("MOBENCH_DATA_DIR")
    if folder is None:
        raise DataError(
            f"'{text}' reads files from a local data folder: pass --data-dir DIR (e.g. "
            "../shared/data, holding hh-rlhf/ and pku-saferlhf/) or set MOBENCH_DATA_DIR"
        )
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data folder {folder} does not exist; pass an existing --data-dir")
    return text.replace(DATA_DIR_PREFIX, f"{root}/")


@dataclass
class PreferencePair:
    """One prompt with two candidate responses and, per objective, which one is preferred.

    Attributes:
        id: stable row id (saved in ``split.json``; resume and sharding key on it).
        prompt: the conversation up to the response, ending with a user turn.
        responses: the two candidate final assistant turns.
        labels: objective name -> index (0 or 1) of the preferred response.
        meta: anything else the upstream row carried (kept for provenance, never used for math).
    """

    id: str
    prompt: Conversation
    responses: tuple[str, str]
    labels: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "responses": list(self.responses),
            "labels": self.labels,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PreferencePair:
        return cls(
            id=str(obj["id"]),
            prompt=list(obj["prompt"]),
            responses=(obj["responses"][0], obj["responses"][1]),
            labels={k: int(v) for k, v in obj["labels"].items()},
            meta=dict(obj.get("meta", {})),
        )


@dataclass
class Splits:
    """Train / validation / test rows of one task. Test prompts are the generation set."""

    train: list[PreferencePair]
    validation: list[PreferencePair]
    test: list[PreferencePair]
    #: how the rows were prepared (source, skipped rows, filters, relabelling); the pipeline
    #: writes it to the run's ``data.json``
    info: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> dict[str, list[str]]:
        return {
            "train": [r.id for r in self.train],
            "validation": [r.id for r in self.validation],
            "test": [r.id for r in self.test],
        }


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, record)`` from a .json, .jsonl, .jsonl.gz, .json.gz or .parquet file.

    Row numbers are 1-based (the line number for JSONL). A line that is not a JSON object raises
    :class:`DataError` with the file and row.
    """
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise DataError(f"{path}: no such file; pass an existing .json/.jsonl(.gz)/.parquet file")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq  # a datasets dependency; imported only when needed

        for i, rec in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, rec
        return
    opener = gzip.open if name.endswith(".gz") else open
    stem = name[:-3] if name.endswith(".gz") else name
    with opener(path, "rt", encoding="utf-8") as f:
        if stem.endswith(".jsonl"):
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {i}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise DataError(
                        f"{path}: row {i}: expected a JSON object, got {type(rec).__name__}"
                    )
                yield i, rec
        elif stem.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
            if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} wrappers
                lists = [v for v in data.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise DataError(
                        f"{path}: expected a JSON list of rows (or one list inside an object)"
                    )
                data = lists[0]
            for i, rec in enumerate(data, start=1):
                if not isinstance(rec, dict):
                    raise DataError(
                        f"{path}: row {i}: expected a JSON object, got {type(rec).__name__}"
                    )
                yield i, rec
        else:
            raise DataError(f"{path}: unknown file type; use .json, .jsonl, .jsonl.gz or .parquet")


def require_fields(path: str | Path, row: int, rec: dict[str, Any], fields: Sequence[str]) -> None:
    """Raise a :class:`DataError` naming the file, row and missing column(s)."""
    missing = [f for f in fields if f not in rec]
    if missing:
        raise DataError(
            f"{path}: row {row}: missing column(s) {', '.join(missing)}; "
            f"expected {', '.join(fields)} (found {', '.join(sorted(rec)) or 'none'})"
        )


def seeded_split(rows: Sequence[PreferencePair], sizes: tuple[int, int, int], seed: int) -> Splits:
    """Shuffle with ``seed`` and cut into (train, validation, test) of the given sizes.

    Sizes larger than the data are reduced in the order test, validation, train are kept:
    test first (the generation set), then validation, then whatever is left is train.
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    shuffled = [rows[i] for i in order]
    n_train, n_val, n_test = sizes
    n_test = min(n_test, len(shuffled))
    n_val = min(n_val, len(shuffled) - n_test)
    n_train = min(n_train, len(shuffled) - n_test - n_val)
    test = shuffled[:n_test]
    val = shuffled[n_test : n_test + n_val]
    train = shuffled[n_test + n_val : n_test + n_val + n_train]
    return Splits(train=train, validation=val, test=test)
