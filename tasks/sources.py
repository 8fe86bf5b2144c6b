"""Data source strings: where a task's preference rows come from.

A preset's ``data`` (or ``--data``) is one string::

    SOURCE[@REVISION][?KEY=VALUE[&KEY=VALUE...]]

``SOURCE`` is one of

* a hub data set id ``ORG/NAME`` (read with ``datasets.load_dataset``; ``@REVISION`` pins a
  branch, tag or commit, e.g. ``PKU-Alignment/PKU-SafeRLHF@v0``),
* a local file (.json/.jsonl/.jsonl.gz/.parquet) or folder,
* ``builtin:NAME``: a small file shipped in ``mobench/tasks/data``,
* ``data-dir:RELPATH``: a path inside ``mobench run --data-dir DIR``; the pipeline replaces the
  prefix by the folder before the spec is hashed (:func:`mobench.data.resolve_data_dir_refs`).

The ``?KEY=VALUE`` part says WHICH rows of the source to read; each task lists the keys it
knows (``split``, ``config``, ``subsets``). How the rows are then prepared (relabelling, filters)
is a task option, not part of the source (see :mod:`mobench.tasks.preference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mobench.data import DATA_DIR_PREFIX, DataError

#: files that ship with mobench (the tiny presets' samples)
BUILTIN_DIR = Path(__file__).parent / "data"

SourceKind = Literal["hub", "local", "builtin"]


@dataclass(frozen=True)
class DataSource:
    """A parsed data string.

    Attributes:
        text: the string as given.
        kind: "hub", "local" or "builtin".
        location: hub id, or the local path (a builtin's path inside the package).
        revision: hub revision (None = the default branch); only for hub sources.
        options: the ``?KEY=VALUE`` pairs, values as strings.
    """

    text: str
    kind: SourceKind
    location: str
    revision: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The local path (local and builtin sources)."""
        if self.kind == "hub":
            raise ValueError(f"{self.text} is a hub data set, not a local path")
        return Path(self.location)

    def option_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated option as a tuple (``default`` when absent)."""
        raw = self.options.get(key)
        if raw is None:
            return default
        items = tuple(v.strip() for v in raw.split(",") if v.strip())
        if not items:
            raise DataError(f"data '{self.text}': option {key}= is empty; give a comma list")
        return items


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or Path(text).suffix.lower() in {
        ".json",
        ".jsonl",
        ".gz",
        ".parquet",
    }


def parse_data_string(text: str, allowed_options: tuple[str, ...]) -> DataSource:
    """Parse a data string (see the module docstring).

    Args:
        text: the data string.
        allowed_options: the ``?KEY`` names the task understands.

    Raises:
        DataError: an unresolved ``data-dir:`` reference, an unknown option, a missing builtin,
            or a string that is neither an existing path nor a hub id.
    """
    base, _, query = text.partition("?")
    options: dict[str, str] = {}
    if query:
        for item in query.split("&"):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise DataError(f"data '{text}': cannot read option '{item}'; write ?key=value&...")
            options[key.strip()] = value.strip()
    unknown = sorted(set(options) - set(allowed_options))
    if unknown:
        known = ", ".join(allowed_options) or "none"
        raise DataError(f"data '{text}': unknown option(s) {', '.join(unknown)}; known: {known}")
    if base.startswith(DATA_DIR_PREFIX):
        raise DataError(
            f"data '{text}' is a path inside the data folder: pass --data-dir DIR (e.g. "
            "../shared/data) or set MOBENCH_DATA_DIR"
        )
    if base.startswith("builtin:"):
        name = base.removeprefix("builtin:")
        path = BUILTIN_DIR / name
        if not name or not path.exists():
            known = ", ".join(sorted(p.name for p in BUILTIN_DIR.iterdir() if p.suffix != ".py"))
            raise DataError(f"no built-in data set '{name}'; known: {known}")
        return DataSource(text, "builtin", str(path), None, options)
    path = Path(base).expanduser()
    if path.exists() or _looks_like_path(base):
        if not path.exists():
            raise DataError(f"data file or folder {base} does not exist")
        return DataSource(text, "local", str(path), None, options)
    hub_id, _, revision = base.partition("@")
    if hub_id.count("/") != 1 or not all(hub_id.split("/")):
        raise DataError(
            f"data '{text}' is neither an existing file or folder nor a hub id ORG/NAME[@REVISION]"
        )
    return DataSource(text, "hub", hub_id, revision or None, options)


def load_hub_rows(
    source: DataSource, *, split: str, name: str | None = None, data_dir: str | None = None
) -> list[dict[str, object]]:
    """Rows of a hub data set split, as plain dicts (``datasets`` is imported only here)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(
            source.location, name=name, data_dir=data_dir, split=split, revision=source.revision
        )
    except Exception as err:  # offline, unknown id, unknown split: one line with the fix
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"cannot load hub data set {source.location}"
            f"{'@' + source.revision if source.revision else ''} (split {split}"
            f"{', ' + data_dir if data_dir else ''}): {first}; without hub access use a local "
            "copy (--data FILE or --data-dir DIR)"
        ) from None
    return [dict(rec) for rec in ds]
