"""What the preference tasks share: preparing rows into splits (METHODS §7, §12.8).

:class:`PreferenceTask` turns the rows a task reads into train / validation / test splits:

1. ``part`` (option): keep one half of a fixed 50/50 partition of the rows by their first user
   turn, so that a scorer trained on one half never saw a conversation of the other;
2. ``shuffle_responses`` (option): a seeded random response order per pair, for files whose
   order carries the label (HH: chosen first; the PKU safety-pairs file: safe first);
3. the seeded split (sizes from the preset; the ids land in the run's ``split.json``);
4. ``train_max_chars`` (option): PARM's training filter, dropping training pairs whose prompt
   plus longer response exceed this many characters (1024 in PARM, METHODS §7.1);
5. ``relabel`` (option): PARM relabelling of the training and validation pairs with the
   preset's scorers, one objective at a time (higher score wins, ties go to index 1). Test
   labels are never used (test prompts are only generated for), so they are not relabelled.

Every score used for relabelling is cached on disk per scorer (``<cache>/scores/``), keyed by
a hash of the scorer and of the (prompt, response) text, so a re-run, another method, another
seed or a longer ``--limit`` never scores a response twice, and a run whose scores are all
cached loads no scorer at all. What was done is returned in ``Splits.info`` (the run's
``data.json``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from mobench.tasks.formats import relabel, shuffle_pair_order

from mobench.config import ConfigError
from mobench.data import Conversation, PreferencePair, Splits, seeded_split
from mobench.interfaces import Scorer, Task

if TYPE_CHECKING:
    from mobench.config import RunSpec

log = logging.getLogger("mobench")

#: the data options every preference task understands, with their defaults
PREFERENCE_OPTIONS: dict[str, Any] = {
    "relabel": "missing",
    "train_max_chars": None,
    "shuffle_responses": False,
    "part": None,
}

#: one line per option, for ``mobench run --dry-run`` and the README
OPTION_HELP = {
    "relabel": "all: every training/validation label is recomputed by the preset's scorers "
    "(PARM); missing: only labels the data lacks; none: keep the data's labels",
    "train_max_chars": "drop training pairs whose prompt + longer response exceed this many "
    "characters (PARM: 1024); null keeps all",
    "shuffle_responses": "seeded random response order per pair (for files whose order "
    "carries the label)",
    "part": "task | scorer | null: keep one half of a fixed 50/50 partition by first user turn "
    "(mobench-trained scorers train on 'scorer', the task evaluates on 'task')",
}

RELABEL_MODES = ("all", "missing", "none")
PARTS = ("task", "scorer")
#: responses scored per call while relabelling (the cache is appended after each chunk)
RELABEL_CHUNK = 256


def first_user_turn(prompt: Conversation) -> str:
    for turn in prompt:
        if turn["role"] == "user":
            return turn["content"]
    raise ValueError("a prompt must contain a user turn")


def partition_of(pair: PreferencePair) -> str:
    """ "task" or "scorer": a fixed half of the rows, decided by a hash of the first user turn
    (independent of seeds and row order; the same opening line always lands in the same half)."""
    digest = hashlib.sha256(first_user_turn(pair.prompt).encode("utf-8")).digest()
    return PARTS[digest[0] % 2]


def select_part(rows: Sequence[PreferencePair], part: str | None) -> list[PreferencePair]:
    """The rows of one half of the partition (all rows when ``part`` is None)."""
    if part is None:
        return list(rows)
    if part not in PARTS:
        raise ConfigError(f"task option part={part!r}; use task, scorer or null")
    return [p for p in rows if partition_of(p) == part]


def seeded_response_order(rows: Sequence[PreferencePair], seed: int) -> list[PreferencePair]:
    """Each pair's responses in a random order drawn from (seed, pair id): independent of the
    row order, so adding or removing rows never reshuffles the others."""
    out = []
    for p in rows:
        key = int.from_bytes(hashlib.sha256(p.id.encode("utf-8")).digest()[:8], "little")
        out.append(shuffle_pair_order(p, np.random.default_rng([seed, key])))
    return out


def pair_chars(pair: PreferencePair) -> int:
    """Characters of the prompt plus its longer response (PARM's filter length)."""
    prompt = sum(len(t["content"]) for t in pair.prompt)
    return prompt + max(len(r) for r in pair.responses)


# ----------------------------------------------------------------------------- score cache


def response_key(prompt: Conversation, response: str) -> str:
    """A stable hash of one (prompt, response) text pair."""
    text = json.dumps([prompt, response], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def score_cache_dir() -> Path:
    """``$MOBENCH_SCORE_CACHE``, else ``<mobench cache>/scores``."""
    env = os.environ.get("MOBENCH_SCORE_CACHE")
    if env:
        return Path(env)
    from mobench.models import cache_dir

    return cache_dir() / "scores"


class ScoreCache:
    """Append-only JSONL of scores of one scorer: ``{"k": response_key, "s": score, "fp": ...}``.

    A torn last line (an interrupted append) is ignored on read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scores: dict[str, float] = {}
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            for i, line in enumerate(lines):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:
                        break
                    raise ValueError(
                        f"{path}: line {i + 1} is corrupted; delete the file"
                    ) from None
                self.scores[rec["k"]] = float(rec["s"])

    def add(self, keys: Sequence[str], scores: Sequence[float], fingerprint: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for k, s in zip(keys, scores, strict=True):
                f.write(json.dumps({"k": k, "s": float(s), "fp": fingerprint}) + "\n")
                self.scores[k] = float(s)


def relabel_cached(
    pairs: Sequence[PreferencePair],
    objective: str,
    scorer_key: str,
    get_scorer: Callable[[], Scorer],
    device: str = "cpu",
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """PARM relabelling of ``pairs`` for one objective, scores read from / added to the cache.

    ``get_scorer`` is only called when some response has no cached score. Scores are computed
    on one CPU thread, as the run's own scoring (:func:`mobench.models.scoring_threads`): a
    label decided by a near-tie must not depend on the machine's thread count.
    """
    from mobench.models import scoring_threads

    cache = ScoreCache(score_cache_dir() / f"{scorer_key}.jsonl")
    todo: dict[str, tuple[Conversation, str]] = {}
    for p in pairs:
        for r in p.responses:
            k = response_key(p.prompt, r)
            if k not in cache.scores:
                todo.setdefault(k, (p.prompt, r))
    fingerprint = None
    if todo:
        scorer = get_scorer()
        fingerprint = scorer.fingerprint
        items = list(todo.items())
        log.info("relabel %s: scoring %d responses with %s", objective, len(items), fingerprint)
        for start in range(0, len(items), RELABEL_CHUNK):
            chunk = items[start : start + RELABEL_CHUNK]
            with scoring_threads(device):
                values = scorer.score([v[0] for _, v in chunk], [v[1] for _, v in chunk])
            cache.add([k for k, _ in chunk], list(values), fingerprint)

    def lookup(prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        return np.asarray(
            [cache.scores[response_key(p, r)] for p, r in zip(prompts, responses, strict=True)]
        )

    out = relabel(pairs, objective, lookup, ties="index1")
    previous = [p.labels.get(objective) for p in pairs]
    kept = [a == b.labels[objective] for a, b in zip(previous, out, strict=True) if a is not None]
    info = {
        "pairs": len(out),
        "newly_scored_responses": len(todo),
        "scorer_cache": str(cache.path),
        "had_label": len(kept),
        # how often the scorer agrees with the label the data had (human or upstream)
        "agreement_with_data_label": (sum(kept) / len(kept)) if kept else None,
    }
    if fingerprint:
        info["scorer"] = fingerprint
    return out, info


# ------------------------------------------------------------------------------- the task


class PreferenceTask(Task):
    """A task whose data are preference pairs, prepared as the module docstring says.

    Subclasses implement :meth:`read_rows` (the source -> rows, plus facts for ``data.json``)
    and list the data string's ``?KEY`` names in ``source_options``.
    """

    default_options: ClassVar[dict[str, Any]] = dict(PREFERENCE_OPTIONS)
    source_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._scorers: dict[str, Scorer] = {}

    @abstractmethod
    def read_rows(self, spec: RunSpec) -> tuple[list[PreferencePair], dict[str, Any]]:
        """All rows of the spec's data source, and facts about reading them."""

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if options.get("relabel") not in RELABEL_MODES:
            raise ConfigError(
                f"task option relabel={options.get('relabel')!r}; "
                f"use one of {', '.join(RELABEL_MODES)}"
            )
        limit = options.get("train_max_chars")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ConfigError(
                f"task option train_max_chars={limit!r}; use a positive integer or null"
            )
        if not isinstance(options.get("shuffle_responses"), bool):
            raise ConfigError("task option shuffle_responses must be true or false")
        if options.get("part") not in (None, *PARTS):
            raise ConfigError(f"task option part={options.get('part')!r}; use task, scorer or null")

    def load(self, spec: RunSpec) -> Splits:
        opts = {**self.default_options, **spec.task_options}
        self.check_options(opts)
        rows, info = self.read_rows(spec)
        info["rows_read"] = len(rows)
        rows = select_part(rows, opts["part"])
        if opts["part"] is not None:
            info["part"] = {"kept": opts["part"], "rows": len(rows)}
        if opts["shuffle_responses"]:
            rows = seeded_response_order(rows, spec.split_seed)
        splits = seeded_split(rows, spec.split_sizes, spec.split_seed)
        train = splits.train
        if opts["train_max_chars"] is not None:
            limit = int(opts["train_max_chars"])
            kept = [p for p in train if pair_chars(p) <= limit]
            info["train_max_chars"] = {"limit": limit, "dropped": len(train) - len(kept)}
            train = kept
        validation = splits.validation
        mode = opts["relabel"]
        relabel_info: dict[str, Any] = {"mode": mode}
        if mode != "none":
            for objective in self.objectives:
                for name in ("train", "validation"):
                    rows = train if name == "train" else validation
                    idx = [
                        i for i, p in enumerate(rows) if mode == "all" or objective not in p.labels
                    ]
                    if not idx:
                        continue
                    new, stats = relabel_cached(
                        [rows[i] for i in idx],
                        objective,
                        self.scorer_key(spec, objective),
                        functools.partial(self.scorer, spec, objective),
                        spec.device,
                    )
                    for i, p in zip(idx, new, strict=True):
                        rows[i] = p
                    relabel_info.setdefault(objective, {})[name] = stats
        for name, part in (("train", train), ("validation", validation)):
            missing = {o: sum(o not in p.labels for p in part) for o in self.objectives}
            if any(missing.values()):
                relabel_info.setdefault("unlabelled", {})[name] = missing
        info["relabel"] = relabel_info
        info["sizes"] = {
            "train": len(train),
            "validation": len(validation),
            "test": len(splits.test),
        }
        if self._scorers:
            info["scorers"] = {
                o: {"fingerprint": s.fingerprint, **s.info} for o, s in self._scorers.items()
            }
        return Splits(train=train, validation=validation, test=splits.test, info=info)

    # ------------------------------------------------------------------------------ scorers

    def scorer_key(self, spec: RunSpec, objective: str) -> str:
        from mobench.tasks.scorers import scorer_cache_key

        return scorer_cache_key(spec.scorers[objective], objective, spec.scorer_dtype)

    def scorer(self, spec: RunSpec, objective: str) -> Scorer:
        """The objective's scorer, built once per task instance (relabelling and scoring share
        it)."""
        from mobench.tasks.scorers import build_scorer

        if objective not in self._scorers:
            if objective not in spec.scorers:
                raise ConfigError(
                    f"the preset names no scorer for objective '{objective}'; add it to scorers"
                )
            self._scorers[objective] = build_scorer(
                spec.scorers[objective], objective, device=spec.device, dtype=spec.scorer_dtype
            )
        return self._scorers[objective]

    def scorers(self, spec: RunSpec, device: str) -> dict[str, Scorer]:
        return {obj: self.scorer(spec, obj) for obj in self.objectives}

    # ------------------------------------------------------------------------------ dry run

    def describe_data(self, spec: RunSpec) -> dict[str, Any]:
        opts = {**self.default_options, **spec.task_options}
        n_train, n_val, n_test = spec.split_sizes
        to_label = n_train + n_val
        relabel_note = {
            "all": f"every label of up to {to_label} train+validation pairs is recomputed: "
            f"up to {2 * to_label} responses x {len(self.objectives)} scorers "
            "(cached scores are reused)",
            "missing": "labels the data lacks are computed by the scorers (cached scores reused)",
            "none": "the data's labels are used as they are",
        }[opts["relabel"]]
        return {
            "source": spec.data,
            "split_sizes": {"train": n_train, "validation": n_val, "test": n_test},
            "split_seed": spec.split_seed,
            "options": opts,
            "relabel": relabel_note,
        }
