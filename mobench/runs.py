"""The run directory: the only place results live, and the only format the report reads.

    runs/<task>__<method>__<preset>__<hash8>/
      spec.json          the resolved RunSpec (hash8 = sha256 of its canonical JSON)
      env.json           library versions, git sha, device, where each model came from
      split.json         ids of the train/validation/test rows used
      guide/             the trained guide (method artifacts, safetensors + config)
      generations.jsonl  one line per (prompt_id, alpha_index)
      scores.jsonl       one line per (prompt_id, alpha_index, objective)
      metrics.json       per-alpha means, Pareto front, HV (+ reference point), MIP, CIs
      timing.json        wall time per phase, tokens/s, s per 512 tokens, memory, batch size
      status.json        state, counts, error

A sharded run (``--shard i/n``, or ``torchrun`` / ``accelerate launch``; see mobench/sharding.py)
writes its rows to ``generations.shard-i-of-n.jsonl`` and ``scores.shard-i-of-n.jsonl`` and its
progress to ``status.shard-i-of-n.json`` and ``timing.shard-i-of-n.json``; every other file is
shared. Reads merge all the files; once the run has shard files, a merged read refuses an
incomplete set and names the shards that have not finished.

Resume is by key, never by position: JSONL files are append-only, flushed per batch, and a torn
last line (a crash mid-write) is dropped on read. Derived JSON is written to a temporary file and
renamed, so a reader never sees half a file. Nothing finished is deleted by a later run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobench.config import RunSpec
from mobench.sharding import Shard, shard_of

GENERATIONS = "generations.jsonl"
SCORES = "scores.jsonl"
#: a shard's own records: generations.shard-0-of-4.jsonl, scores.shard-3-of-4.jsonl
SHARD_FILE = re.compile(r"^(generations|scores)\.shard-(\d+)-of-(\d+)\.jsonl$")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (e.g. it holds another spec)."""


class IncompleteShardsError(RunDirError):
    """A merged read of a sharded run whose shards have not all finished.

    Attributes:
        shards: indices of the unfinished shards; count: how many shards the run has.
    """

    def __init__(self, message: str, shards: list[int], count: int) -> None:
        super().__init__(message)
        self.shards = shards
        self.count = count


def write_json_atomic(path: Path, obj: Any, *, replace: bool = True) -> None:
    """Write JSON to a temp file in the same folder, then rename it over ``path``.

    With ``replace=False`` the temp file is hard-linked into place instead, which fails if
    ``path`` exists: the first of several processes creating the same file wins, the others
    leave its copy alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp creates 0600; results are meant to be shared like any file the user writes
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        if replace:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            Path(tmp).unlink()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a torn (unparseable) LAST line is skipped, any other bad line
    is an error, because it means the file was edited or corrupted, not interrupted."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                return  # interrupted mid-write: the next append rewrites it
            raise RunDirError(
                f"{path}: line {i + 1} is not valid JSON; the file is corrupted"
            ) from None


class RunDirectory:
    """One run's directory. Opening it checks (or writes) its spec.

    ``shard`` (None for a single-process run) selects the files this process appends to; reads
    always see every process's records.
    """

    def __init__(self, path: Path, spec: RunSpec, shard: Shard | None = None) -> None:
        self.path = Path(path)
        self.spec = spec
        self.shard = shard

    @classmethod
    def open(cls, path: Path, spec: RunSpec, shard: Shard | None = None) -> RunDirectory:
        """Open ``path`` for ``spec``: create it, or resume it if it holds the same spec.

        Several processes may open the same new directory at once (a sharded run): the spec is
        published with an exclusive link, so exactly one of them writes it and all compare it.

        Raises:
            RunDirError: the directory holds a run of a different spec, or shard files of a
                different shard count than ``shard``'s.
        """
        path = Path(path)
        spec_file = path / "spec.json"
        if not spec_file.exists():
            strangers = (
                [p for p in path.iterdir() if not p.name.startswith(".spec.json.")]
                if path.exists()
                else []
            )
            # re-check: another process of this run may have published the spec meanwhile
            if strangers and not spec_file.exists():
                raise RunDirError(
                    f"{path} exists and is not a mobench run directory; choose another --out"
                )
            write_json_atomic(spec_file, spec.to_json(), replace=False)
        stored = read_json(spec_file)
        if isinstance(stored, dict) and stored.get("schema_version") != spec.schema_version:
            raise RunDirError(
                f"{path} was made by a mobench with spec schema {stored.get('schema_version')} "
                f"(this one writes {spec.schema_version}: it records model identities); "
                "it cannot be resumed: choose another --out or omit it"
            )
        if stored != spec.to_json():
            diff = sorted(
                k
                for k in set(stored) | set(spec.to_json())
                if stored.get(k) != spec.to_json().get(k)
            )
            raise RunDirError(
                f"{path} holds a run of a different spec (differs in: {', '.join(diff)}); "
                "choose another --out or omit it to get the spec's own directory"
            )
        run = cls(path, spec, shard)
        if shard is not None:
            counts = {n for _, _, n in run.shard_files()} - {shard.count}
            if counts:
                raise RunDirError(
                    f"{path} already holds a run split into {min(counts)} shards; finish it with "
                    f"--shard i/{min(counts)} (or the same launcher size), or choose another --out"
                )
        return run

    def own(self, name: str) -> str:
        """The name of this process's copy of a per-process file (``generations.jsonl``,
        ``scores.jsonl``, ``status.json``, ``timing.json``): unchanged without a shard,
        ``generations.shard-0-of-2.jsonl`` etc. with one."""
        if self.shard is None:
            return name
        stem, dot, ext = name.partition(".")
        return f"{stem}.{self.shard.name}{dot}{ext}"

    def shard_files(self) -> list[tuple[str, int, int]]:
        """``(kind, index, count)`` of every shard record file present, kind ``generations``
        or ``scores``, in shard order."""
        if not self.path.exists():
            return []
        found = []
        for p in self.path.iterdir():
            m = SHARD_FILE.match(p.name)
            if m:
                found.append((m.group(1), int(m.group(2)), int(m.group(3))))
        return sorted(found, key=lambda f: (f[2], f[1], f[0]))

    def test_prompt_ids(self) -> list[str]:
        """The run's test prompts in test-list order (``split.json``, cut to ``test_limit``):
        the order shards are assigned by."""
        split = self.read("split.json")
        if split is None:
            raise RunDirError(f"{self.path} has no split.json; the run never started, run it first")
        ids = list(split["test"])
        return ids if self.spec.test_limit is None else ids[: self.spec.test_limit]

    # ------------------------------------------------------------------ append-only records

    def _append(self, name: str, records: Iterable[dict[str, Any]]) -> None:
        target = self.path / self.own(name)
        # A torn last line (no newline) would glue onto the next record: end it first.
        if target.exists() and target.stat().st_size > 0:
            with open(target, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:
                self._drop_torn_tail(target)
        with open(target, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _drop_torn_tail(target: Path) -> None:
        data = target.read_bytes()
        cut = data.rfind(b"\n") + 1
        with open(target, "r+b") as f:
            f.truncate(cut)

    def append_generations(self, records: Iterable[dict[str, Any]]) -> None:
        self._append(GENERATIONS, records)

    def append_scores(self, records: Iterable[dict[str, Any]]) -> None:
        self._append(SCORES, records)

    def _record_files(self, name: str) -> list[Path]:
        """The single-process file, then every shard's file, of one kind of record."""
        kind = name.partition(".")[0]
        shard_names = [
            f"{kind}.shard-{i}-of-{n}.jsonl" for k, i, n in self.shard_files() if k == kind
        ]
        return [self.path / name] + [self.path / s for s in shard_names]

    def generations(self, *, allow_partial: bool = False) -> dict[tuple[str, int], dict[str, Any]]:
        """Finished generations keyed by (prompt_id, alpha_index), merged over every process's
        file; the first record wins.

        Args:
            allow_partial: also return a sharded run's rows while shards are unfinished (resume
                uses this). A single-process run's rows are returned as they are either way.

        Raises:
            IncompleteShardsError: the run is sharded, a shard has not finished, and not
                ``allow_partial``; the message names the shards.
        """
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for path in self._record_files(GENERATIONS):
            for rec in read_jsonl(path):
                out.setdefault((rec["prompt_id"], int(rec["alpha_index"])), rec)
        if not allow_partial:
            self._check_shards("generations", out, ())
        return out

    def scores(self, *, allow_partial: bool = False) -> dict[tuple[str, int, str], dict[str, Any]]:
        """Finished scores keyed by (prompt_id, alpha_index, objective), merged like
        :meth:`generations` (same ``allow_partial`` and error)."""
        out: dict[tuple[str, int, str], dict[str, Any]] = {}
        for path in self._record_files(SCORES):
            for rec in read_jsonl(path):
                out.setdefault((rec["prompt_id"], int(rec["alpha_index"]), rec["objective"]), rec)
        if not allow_partial:
            self._check_shards("scores", out, self.spec.objectives)
        return out

    def _check_shards(self, kind: str, found: dict[Any, Any], objectives: tuple[str, ...]) -> None:
        """Raise if the run has shard files and a row of the run is missing from every file."""
        counts = sorted({n for _, _, n in self.shard_files()})
        if not counts:
            return
        if len(counts) > 1:
            raise RunDirError(
                f"{self.path} mixes shard files of {' and '.join(map(str, counts))} shards; "
                "move one set away"
            )
        count = counts[0]
        suffix = tuple((o,) for o in objectives) or ((),)
        unfinished: dict[int, int] = {}
        expected = 0
        for pos, pid in enumerate(self.test_prompt_ids()):
            for a in range(len(self.spec.alphas)):
                for extra in suffix:
                    expected += 1
                    if (pid, a, *extra) not in found:
                        owner = shard_of(pos, count)
                        unfinished[owner] = unfinished.get(owner, 0) + 1
        if unfinished:
            shards = sorted(unfinished)
            names = ", ".join(f"{i}/{count}" for i in shards)
            raise IncompleteShardsError(
                f"{self.path}: shard{'s' if len(shards) > 1 else ''} {names} "
                f"{'have' if len(shards) > 1 else 'has'} not finished "
                f"({sum(unfinished.values())} of {expected} {kind} missing); run "
                f"`mobench run ... --shard {shards[0]}/{count}` (or relaunch the same command) "
                "to complete the run",
                shards,
                count,
            )

    # -------------------------------------------------------------------------- derived files

    def write(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    def read(self, name: str, default: Any = None) -> Any:
        p = self.path / name
        return read_json(p) if p.exists() else default

    def set_status(self, state: str, **fields: Any) -> None:
        """Update this process's status file (``status.json``, or its shard's)."""
        name = self.own("status.json")
        status = self.read(name, {}) or {}
        status.update(fields)
        status["state"] = state
        if state != "failed":
            status.pop("error", None)
        self.write(name, status)

    @property
    def guide_dir(self) -> Path:
        return self.path / "guide"


def score_matrix(
    run: RunDirectory, prompt_ids: Sequence[str], spec: RunSpec
) -> tuple[np.ndarray, dict[str, str]]:
    """Scores as a (P, A, K) array in objective order, and each objective's scorer fingerprint.

    Raises:
        RunDirError: a score is missing, or one objective mixes scorers.
    """
    scores = run.scores()
    n_a, objectives = len(spec.alphas), spec.objectives
    out = np.full((len(prompt_ids), n_a, len(objectives)), np.nan)
    fingerprints: dict[str, set[str]] = {o: set() for o in objectives}
    for i, pid in enumerate(prompt_ids):
        for a in range(n_a):
            for k, obj in enumerate(objectives):
                rec = scores.get((pid, a, obj))
                if rec is None:
                    raise RunDirError(f"{run.path}: no {obj} score for prompt {pid}, alpha {a}")
                out[i, a, k] = rec["value"]
                fingerprints[obj].add(rec["scorer"])
    mixed = {o: f for o, f in fingerprints.items() if len(f) > 1}
    if mixed:
        raise RunDirError(f"{run.path}: scores from several scorers are mixed: {mixed}")
    return out, {o: next(iter(f)) for o, f in fingerprints.items() if f}
