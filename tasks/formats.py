"""Parsers for the upstream preference-data schemas: Anthropic HH-RLHF and PKU-SafeRLHF.

Pure Python (plus numpy); no torch. Every function here turns upstream rows into
:class:`~mobench.data.PreferencePair` rows or works on those rows:

* HH-RLHF (``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}``):
  :func:`parse_hh_dialogue`, :func:`hh_record_to_pair`, :func:`load_hh_file`,
  :func:`truncate_at_new_turn`, :func:`render_hh_query`.
* PKU-SafeRLHF, both the v0 ("10K") and the v1 schema: :func:`detect_pku_schema`,
  :func:`pku_record_to_pair`, :func:`load_pku_file`.
* mobench's own pair format (``{"prompt": [turns] | str, "responses": [a, b], "labels":
  {objective: 0 | 1}}``, optional ``id``): :func:`load_pair_file`.
* Shared: :func:`shuffle_pair_order` (random response order, labels flipped with it) and
  :func:`relabel` (PARM-style relabelling with a scorer, METHODS §7.1: higher score wins,
  ties go to index 1).

Errors are :class:`~mobench.data.DataError` with a single-line message that names the file,
the row, the problem and, where there is one, the fix.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from mobench.data import Conversation, DataError, PreferencePair, iter_records, require_fields

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# HH-RLHF
# --------------------------------------------------------------------------------------------

#: The upstream HH-RLHF subsets that hold preference pairs, and the objective each one labels.
HH_SUBSET_OBJECTIVES: dict[str, str] = {
    "harmless-base": "harmless",
    "helpful-base": "helpful",
    "helpful-online": "helpful",
    "helpful-rejection-sampled": "helpful",
}

#: the most rows of an HH file that may be skipped as known upstream defects (about 1 % of
#: upstream rows are; more means the file is not what mobench thinks it is)
HH_MAX_SKIP_RATE = 0.05


class HHDefect(DataError):
    """A known defect of upstream HH-RLHF rows (about 1 %): turns that do not alternate,
    chosen and rejected with different prefixes or without a final Assistant turn, identical
    responses. Only these are skipped (and counted); any other problem stops the load."""


_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_SPEAKERS = {"user": "Human", "assistant": "Assistant"}
# A turn marker is "\n\nHuman:" / "\n\nAssistant:". "Human:" elsewhere (no blank line before it)
# is part of the text; upstream assistant turns sometimes contain it.
_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
# A generated response continues the dialogue when a line starts with "Human:" / "Assistant:".
_NEW_TURN = re.compile(r"^[ \t]*(?:Human|Assistant):", re.MULTILINE)


def _snippet(text: str, n: int = 60) -> str:
    """A short, single-line quotation of ``text`` for error messages."""
    s = text if len(text) <= n else text[:n] + "..."
    return repr(s)


def _strip_one_space(s: str) -> str:
    return s[1:] if s.startswith(" ") else s


def parse_hh_dialogue(text: str) -> Conversation:
    """Split an HH-RLHF dialogue string into chat turns.

    ``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` becomes
    ``[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]``.

    Turns start at the markers ``"\\n\\nHuman:"`` and ``"\\n\\nAssistant:"``; ``"Human:"`` that is
    not preceded by a blank line stays part of the turn's text. One leading space of each turn's
    content is removed; the rest is kept verbatim (so an empty final turn gives ``""``). A text
    that starts with ``"Human:"`` without the leading blank line is accepted too.

    Raises:
        DataError: the text is not a string, has no turns, has text before the first turn, does
            not start with a Human turn, or does not alternate Human/Assistant. The message has no
            file or row; callers that know them prefix it.
    """
    if not isinstance(text, str):
        raise DataError(f"expected a dialogue string, got {type(text).__name__}")
    stripped = text.lstrip()
    if stripped.startswith(("Human:", "Assistant:")) and not text.startswith("\n\n"):
        text = "\n\n" + stripped
    matches = list(_HH_MARKER.finditer(text))
    if not matches:
        raise DataError(
            f"empty dialogue: no '\\n\\nHuman:' / '\\n\\nAssistant:' turn markers in "
            f"{_snippet(text)}; HH dialogues look like '\\n\\nHuman: ...\\n\\nAssistant: ...'"
        )
    lead = text[: matches[0].start()]
    if lead.strip():
        raise DataError(
            f"text before the first turn marker: {_snippet(lead)}; "
            "an HH dialogue must start with '\\n\\nHuman:'"
        )
    conv: Conversation = []
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        speaker = m.group(1)
        role = _HH_ROLES[speaker]
        if k == 0 and role != "user":
            raise DataError(
                "dialogue starts with an Assistant turn; an HH dialogue must start with "
                "'\\n\\nHuman:'"
            )
        if conv and conv[-1]["role"] == role:
            raise HHDefect(
                f"turns do not alternate: turn {k + 1} is a second {speaker} turn in a row "
                f"(starting {_snippet(_strip_one_space(text[m.end() : end]), 40)}); "
                "HH dialogues must alternate Human/Assistant"
            )
        conv.append({"role": role, "content": _strip_one_space(text[m.end() : end])})
    return conv


def infer_hh_subset(path: str | Path) -> str | None:
    """The HH-RLHF subset a file belongs to, from its parent folder (or its name), else None."""
    p = Path(path)
    if p.parent.name in HH_SUBSET_OBJECTIVES:
        return p.parent.name
    name = p.name.lower()
    for subset in sorted(HH_SUBSET_OBJECTIVES, key=len, reverse=True):
        if name.startswith(subset):
            return subset
    return None


def hh_record_to_pair(
    rec: dict[str, Any],
    row: int,
    path: str | Path,
    objective: str,
    *,
    subset: str | None = None,
) -> PreferencePair:
    """Turn one HH-RLHF row ``{"chosen": ..., "rejected": ...}`` into a :class:`PreferencePair`.

    The prompt is the dialogue shared by chosen and rejected, up to and including the last Human
    turn; the responses are the two final Assistant turns, chosen first: ``responses[0]`` is the
    chosen one and ``labels == {objective: 0}``. Shuffle the order with
    :func:`shuffle_pair_order` before training on it. The id is ``f"{subset}:{row}"``.

    Args:
        rec: the upstream row.
        row: its 1-based row number in ``path`` (part of the id and of every error).
        path: the file it came from (for errors, and to infer ``subset``).
        objective: the objective the subset's human labels judge ("helpful" / "harmless").
        subset: the HH subset name; inferred from ``path``'s folder when omitted, else "hh".

    Raises:
        DataError: naming the file, the row and the problem (missing column, unparsable
            dialogue, differing prefixes, identical responses, ...).
    """
    if subset is None:
        subset = infer_hh_subset(path) or "hh"
    where = f"{path}: row {row}"
    require_fields(path, row, rec, ("chosen", "rejected"))
    convs: dict[str, Conversation] = {}
    for key in ("chosen", "rejected"):
        try:
            conv = parse_hh_dialogue(rec[key])
        except DataError as e:
            raise type(e)(f"{where}: {key}: {e} (fix the row)") from None
        if conv[-1]["role"] != "assistant":
            raise HHDefect(
                f"{where}: {key}: the dialogue ends with a Human turn "
                f"({_snippet(conv[-1]['content'], 40)}); it must end with the Assistant response "
                "(fix the row, or load with skip_malformed=True to skip such rows)"
            )
        convs[key] = conv
    chosen, rejected = convs["chosen"], convs["rejected"]
    if chosen[:-1] != rejected[:-1]:
        if len(chosen) != len(rejected):
            detail = f"chosen has {len(chosen)} turns, rejected {len(rejected)}"
        else:
            k = next(i for i, (a, b) in enumerate(zip(chosen, rejected, strict=True)) if a != b)
            detail = f"they first differ at turn {k + 1} of {len(chosen)}"
        raise HHDefect(
            f"{where}: chosen and rejected have different dialogue prefixes ({detail}); "
            "HH pairs must differ only in the final Assistant turn "
            "(fix the row, or load with skip_malformed=True to skip such rows)"
        )
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise HHDefect(
            f"{where}: chosen and rejected are identical, so the pair carries no preference "
            "(drop the row, or load with skip_malformed=True to skip such rows)"
        )
    return PreferencePair(
        id=f"{subset}:{row}",
        prompt=chosen[:-1],
        responses=(chosen[-1]["content"], rejected[-1]["content"]),
        labels={objective: 0},
        meta={"source": "hh-rlhf", "subset": subset, "row": row, "chosen_index": 0},
    )


def load_hh_file(
    path: str | Path,
    subset: str | None = None,
    skip_malformed: bool = False,
    *,
    objective: str | None = None,
    max_skip_rate: float = HH_MAX_SKIP_RATE,
) -> tuple[list[PreferencePair], int]:
    """Load an HH-RLHF file (.jsonl.gz upstream; .json/.jsonl/.parquet work too).

    Args:
        path: the file; upstream, its parent folder names the subset
            (``harmless-base/test.jsonl.gz``).
        subset: one of :data:`HH_SUBSET_OBJECTIVES`; inferred from ``path`` when omitted.
        skip_malformed: skip rows with a known upstream defect (:class:`HHDefect`) instead of
            raising; they are counted, returned and logged. Every other problem (a file in
            another schema, missing columns, unparsable dialogues) still raises, and so does a
            skip rate above ``max_skip_rate``.
        objective: the label's objective; defaults to the subset's (see
            :data:`HH_SUBSET_OBJECTIVES`). Needed for a subset name mobench does not know.
        max_skip_rate: the largest fraction of rows that may be skipped.

    Returns:
        ``(pairs, n_skipped)``.

    Raises:
        DataError: naming the file (and row) and the problem.
    """
    if subset is None:
        subset = infer_hh_subset(path)
        if subset is None:
            raise DataError(
                f"{path}: cannot tell the HH-RLHF subset from the path; put the file in a folder "
                f"named after it ({', '.join(HH_SUBSET_OBJECTIVES)}) or pass subset="
            )
    if objective is None:
        objective = HH_SUBSET_OBJECTIVES.get(subset)
        if objective is None:
            raise DataError(
                f"{path}: unknown HH-RLHF subset {subset!r}; use one of "
                f"{', '.join(HH_SUBSET_OBJECTIVES)} or pass objective="
            )
    pairs: list[PreferencePair] = []
    skipped: list[str] = []
    for row, rec in iter_records(path):
        if not pairs and not skipped:  # the first row: is this an HH file at all?
            check_hh_schema(rec, row, path)
        try:
            pairs.append(hh_record_to_pair(rec, row, path, objective, subset=subset))
        except HHDefect as e:
            if not skip_malformed:
                raise
            skipped.append(str(e))
    total = len(skipped) + len(pairs)
    if skipped:
        first = re.sub(r" \((fix|drop) the row[^)]*\)$", "", skipped[0])
        first = first.removeprefix(f"{path}: ")
        if len(skipped) > max(1.0, max_skip_rate * total):  # one bad row of a small sample
            raise DataError(
                f"{path}: {len(skipped)} of {total} rows are not usable HH pairs, more than the "
                f"{max_skip_rate:.0%} upstream files have (first: {first}); check the file"
            )
        log.warning(
            "%s: skipped %d of %d rows that are not usable HH pairs (first: %s)",
            path,
            len(skipped),
            total,
            first,
        )
    return pairs, len(skipped)


def check_hh_schema(rec: dict[str, Any], row: int, path: str | Path) -> None:
    """A file in another schema fails on its first row, with what was found instead."""
    if "chosen" not in rec and "rejected" not in rec:  # one of them: a missing column
        raise DataError(
            f"{path}: row {row}: not an HH-RLHF row (found columns "
            f"{', '.join(sorted(rec)) or 'none'}; expected chosen, rejected); pass an HH-RLHF "
            "file, or a mobench pair file with prompt/responses/labels"
        )


def truncate_at_new_turn(text: str) -> str:
    """Cut a generated response where it starts a new dialogue turn, then strip it.

    A new turn is ``"Human:"`` or ``"Assistant:"`` at the start of a line (so ``"\\n\\nHuman:"``,
    ``"\\nHuman:"`` and a leading ``"Human:"`` all count); "Human:" inside a sentence does not.
    """
    m = _NEW_TURN.search(text)
    return (text[: m.start()] if m else text).strip()


def render_hh_query(conv: Conversation) -> str:
    """Render a prompt conversation in the HH string format the MOD/RiC GPT-2 reward models see.

    ``"\\n\\nHuman: {u1}\\n\\nAssistant: {a1}...\\n\\nHuman: {un}\\n\\nAssistant:"``. The
    conversation must alternate user/assistant turns and end with a user turn.
    """
    if not conv:
        raise ValueError("render_hh_query: empty conversation; it must end with a user turn")
    parts: list[str] = []
    for k, turn in enumerate(conv):
        role = turn.get("role")
        if role not in _HH_SPEAKERS:
            raise ValueError(
                f"render_hh_query: turn {k + 1} has role {role!r}; the HH format has only "
                "user and assistant turns"
            )
        if k and conv[k - 1]["role"] == role:
            raise ValueError(f"render_hh_query: turns {k} and {k + 1} are both {role} turns")
        parts.append(f"\n\n{_HH_SPEAKERS[role]}: {turn['content']}")
    if conv[-1]["role"] != "user":
        raise ValueError("render_hh_query: the conversation must end with a user turn")
    return "".join(parts) + "\n\nAssistant:"


# --------------------------------------------------------------------------------------------
# PKU-SafeRLHF
# --------------------------------------------------------------------------------------------

PKU_V0_FIELDS: tuple[str, ...] = (
    "prompt",
    "response_0",
    "response_1",
    "is_response_0_safe",
    "is_response_1_safe",
    "better_response_id",
    "safer_response_id",
)
PKU_V1_EXTRA_FIELDS: tuple[str, ...] = (
    "response_0_harm_category",
    "response_1_harm_category",
    "response_0_severity_level",
    "response_1_severity_level",
    "response_0_source",
    "response_1_source",
)
PKU_V1_FIELDS: tuple[str, ...] = PKU_V0_FIELDS + PKU_V1_EXTRA_FIELDS
# Fields used per response, moved into meta["response_meta"] = [{...}, {...}].
_PKU_PER_RESPONSE = {
    "is_response_{i}_safe": "is_safe",
    "response_{i}_harm_category": "harm_category",
    "response_{i}_severity_level": "severity_level",
    "response_{i}_source": "source",
    "response_{i}_sha256": "sha256",
}


def detect_pku_schema(rec: dict[str, Any]) -> Literal["v0", "v1"]:
    """``"v1"`` when the row has any of the v1-only per-response columns (harm category,
    severity level, source), else ``"v0"`` (the original / "10K" schema)."""
    return "v1" if any(f in rec for f in PKU_V1_EXTRA_FIELDS) else "v0"


def _pku_label(value: Any, column: str, where: str, nullable: bool) -> int | None:
    """Validate a 0/1 label column (ints, integral floats; None/NaN only if ``nullable``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if nullable:
            return None
        raise DataError(f"{where}: {column} is null; it must be 0 or 1 (the preferred response)")
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        fix = "0 or 1" + (" (or null when unknown)" if nullable else "")
        raise DataError(
            f"{where}: {column} is {value!r}; it must be {fix}: the index of the preferred response"
        )
    return int(value)


def pku_record_to_pair(rec: dict[str, Any], row: int, path: str | Path) -> PreferencePair:
    """Turn one PKU-SafeRLHF row (v0 or v1 schema) into a :class:`PreferencePair`.

    The prompt is ``[{"role": "user", "content": prompt}]``; the responses keep their upstream
    order; ``labels = {"helpful": better_response_id, "harmless": safer_response_id}``. A null
    ``better_response_id`` (the helpfulness label is unknown) leaves "helpful" out of ``labels``
    and lists it in ``meta["missing_labels"]``; :func:`relabel` fills it in. Per-response columns
    (safety flags, v1 harm category / severity / source) go to ``meta["response_meta"]``, other
    unknown columns to ``meta["extra"]``. The id is the row's ``id`` column when there is one,
    else ``f"pku:{row}"``.
    """
    where = f"{path}: row {row}"
    schema = detect_pku_schema(rec)
    required = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id")
    require_fields(path, row, rec, required + (PKU_V1_EXTRA_FIELDS if schema == "v1" else ()))
    prompt = rec["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(
            f"{where}: prompt is {_snippet(prompt) if isinstance(prompt, str) else repr(prompt)}; "
            "it must be a non-empty string"
        )
    responses: list[str] = []
    for i in (0, 1):
        r = rec[f"response_{i}"]
        if not isinstance(r, str) or not r.strip():
            shown = _snippet(r) if isinstance(r, str) else f"{type(r).__name__} {r!r}"[:80]
            raise DataError(
                f"{where}: response_{i} is {shown}; both responses must be non-empty strings "
                "(drop or fix the row)"
            )
        responses.append(r)
    better = _pku_label(rec["better_response_id"], "better_response_id", where, nullable=True)
    safer = _pku_label(rec["safer_response_id"], "safer_response_id", where, nullable=False)
    for i in (0, 1):
        flag = rec.get(f"is_response_{i}_safe")
        if flag is not None and not isinstance(flag, bool):
            raise DataError(f"{where}: is_response_{i}_safe is {flag!r}; it must be true or false")
    assert safer is not None  # not nullable
    labels: dict[str, int] = {"harmless": safer}
    meta: dict[str, Any] = {"source": "pku-saferlhf", "schema": schema, "row": row}
    if better is None:
        meta["missing_labels"] = ["helpful"]
        meta["missing_labels_note"] = (
            "better_response_id is null: the helpful label must come from relabel()"
        )
    else:
        labels = {"helpful": better, "harmless": safer}
    used = {"id", *required}
    response_meta: list[dict[str, Any]] = [{}, {}]
    for pattern, key in _PKU_PER_RESPONSE.items():
        for i in (0, 1):
            col = pattern.format(i=i)
            if col in rec:
                response_meta[i][key] = rec[col]
                used.add(col)
    meta["response_meta"] = response_meta
    extra = {k: v for k, v in rec.items() if k not in used}
    if extra:
        meta["extra"] = extra
    if "id" in rec and rec["id"] is not None and str(rec["id"]).strip():
        pair_id = str(rec["id"])
    else:
        pair_id = f"pku:{row}"
    return PreferencePair(
        id=pair_id,
        prompt=[{"role": "user", "content": prompt}],
        responses=(responses[0], responses[1]),
        labels=labels,
        meta=meta,
    )


def load_pku_file(path: str | Path) -> list[PreferencePair]:
    """Load a PKU-SafeRLHF file (.json/.jsonl/.jsonl.gz/.parquet, v0 or v1 rows).

    Strict: the first malformed row raises :class:`DataError`; so do duplicate ids.
    """
    pairs: list[PreferencePair] = []
    seen: dict[str, int] = {}
    for row, rec in iter_records(path):
        pair = pku_record_to_pair(rec, row, path)
        if pair.id in seen:
            raise DataError(
                f"{path}: row {row}: id {pair.id!r} already used by row {seen[pair.id]}; "
                "ids must be unique (fix or drop the id column)"
            )
        seen[pair.id] = row
        pairs.append(pair)
    return pairs


# --------------------------------------------------------------------------------------------
# mobench's own pair format
# --------------------------------------------------------------------------------------------


def _pair_prompt(value: Any, where: str) -> Conversation:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: prompt is empty; give the user's message")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: prompt must be a string or a non-empty list of turns")
    conv: Conversation = []
    for k, turn in enumerate(value):
        expected = "user" if k % 2 == 0 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != expected:
            raise DataError(
                f"{where}: prompt turn {k + 1} must be {{'role': '{expected}', 'content': ...}}; "
                "turns alternate user/assistant, starting with user"
            )
        if not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: prompt turn {k + 1} has no text content")
        conv.append({"role": expected, "content": turn["content"]})
    if conv[-1]["role"] != "user":
        raise DataError(f"{where}: the prompt must end with a user turn")
    return conv


def load_pair_file(path: str | Path, objectives: Sequence[str]) -> list[PreferencePair]:
    """Load mobench's own pair format: one object per row with ``prompt`` (a string or a list of
    ``{"role", "content"}`` turns ending with the user), ``responses`` (two strings), ``labels``
    (objective -> index of the preferred response; objectives may be left out) and an
    optional unique ``id`` (default ``pairs:ROW``).

    Raises:
        DataError: naming the file, the row and the problem.
    """
    pairs: list[PreferencePair] = []
    seen: dict[str, int] = {}
    for row, rec in iter_records(path):
        where = f"{path}: row {row}"
        require_fields(path, row, rec, ("prompt", "responses", "labels"))
        responses = rec["responses"]
        if (
            not isinstance(responses, list)
            or len(responses) != 2
            or not all(isinstance(r, str) and r.strip() for r in responses)
        ):
            raise DataError(f"{where}: responses must be a list of two non-empty strings")
        labels = rec["labels"]
        if not isinstance(labels, dict):
            raise DataError(f"{where}: labels must be an object {{objective: 0 or 1}}")
        unknown = sorted(set(labels) - set(objectives))
        if unknown:
            raise DataError(
                f"{where}: labels for unknown objective(s) {', '.join(unknown)}; this task's "
                f"objectives are {', '.join(objectives)}"
            )
        for objective, value in labels.items():
            if isinstance(value, bool) or value not in (0, 1):
                raise DataError(f"{where}: labels.{objective} is {value!r}; it must be 0 or 1")
        pair_id = str(rec["id"]) if rec.get("id") not in (None, "") else f"pairs:{row}"
        if pair_id in seen:
            raise DataError(f"{where}: id {pair_id!r} already used by row {seen[pair_id]}")
        seen[pair_id] = row
        pairs.append(
            PreferencePair(
                id=pair_id,
                prompt=_pair_prompt(rec["prompt"], where),
                responses=(responses[0], responses[1]),
                labels={k: int(v) for k, v in labels.items()},
                meta={"source": "mobench-pairs", "row": row},
            )
        )
    return pairs


# --------------------------------------------------------------------------------------------
# Shared: response order and relabelling
# --------------------------------------------------------------------------------------------


class _Random(Protocol):
    def random(self) -> float: ...


def swap_pair(pair: PreferencePair) -> PreferencePair:
    """A copy of ``pair`` with the two responses swapped and every label flipped with them
    (per-response metadata in ``meta["response_meta"]`` is swapped too)."""
    meta = copy.deepcopy(pair.meta)
    rm = meta.get("response_meta")
    if isinstance(rm, list) and len(rm) == 2:
        meta["response_meta"] = [rm[1], rm[0]]
    meta["swapped"] = not bool(meta.get("swapped", False))
    if isinstance(meta.get("chosen_index"), int):
        meta["chosen_index"] = 1 - meta["chosen_index"]
    return PreferencePair(
        id=pair.id,
        prompt=copy.deepcopy(pair.prompt),
        responses=(pair.responses[1], pair.responses[0]),
        labels={k: 1 - v for k, v in pair.labels.items()},
        meta=meta,
    )


def shuffle_pair_order(pair: PreferencePair, rng: _Random) -> PreferencePair:
    """With probability 1/2 (drawn from ``rng``: a ``numpy.random.Generator`` or
    ``random.Random``), swap the responses and flip every label; always return a new pair.

    Use it on files whose response order carries the label (HH: chosen first; the 5135-row
    PKU safety-pairs file: safe response first), with a seeded ``rng``.
    """
    if rng.random() < 0.5:
        return swap_pair(pair)
    return PreferencePair(
        id=pair.id,
        prompt=copy.deepcopy(pair.prompt),
        responses=pair.responses,
        labels=dict(pair.labels),
        meta=copy.deepcopy(pair.meta),
    )


ScoreFn = Callable[[Sequence[Conversation], Sequence[str]], Any]


def relabel(
    pairs: Sequence[PreferencePair],
    objective: str,
    score_fn: ScoreFn,
    ties: Literal["index1", "index0", "error"] = "index1",
    batch_size: int | None = None,
) -> list[PreferencePair]:
    """PARM relabelling (METHODS §7.1): set ``objective``'s label to the higher-scored response.

    ``score_fn(prompts, responses)`` returns one "higher is better" score per (prompt, response);
    for a cost model pass ``-cost`` (then the safer response wins). Each pair's two responses
    are scored; the label becomes the index of the higher score, and a tie goes to index 1, as in
    PARM (``ties="index0"`` gives it to index 0, ``ties="error"`` raises). Other objectives'
    labels stay. New pairs are returned; each records in ``meta["relabel"][objective]`` the two
    scores and the label it replaced (None when it had none).

    Args:
        batch_size: pairs per ``score_fn`` call (each call gets 2 x batch_size rows: all
            ``responses[0]`` then all ``responses[1]``); None scores everything in one call.
    """
    if ties not in ("index1", "index0", "error"):
        raise ValueError(f"relabel: ties={ties!r}; use 'index1' (PARM), 'index0' or 'error'")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"relabel: batch_size={batch_size}; it must be >= 1 or None")
    n = len(pairs)
    step = n if batch_size is None else batch_size
    s0 = np.empty(n, dtype=np.float64)
    s1 = np.empty(n, dtype=np.float64)
    for start in range(0, n, max(step, 1)):
        chunk = pairs[start : start + step]
        prompts = [p.prompt for p in chunk] * 2
        responses = [p.responses[0] for p in chunk] + [p.responses[1] for p in chunk]
        scores = np.asarray(score_fn(prompts, responses), dtype=np.float64).reshape(-1)
        if scores.shape != (2 * len(chunk),):
            raise ValueError(
                f"relabel: score_fn returned {scores.size} scores for {2 * len(chunk)} "
                "(prompt, response) rows; it must return one score per row"
            )
        if not np.all(np.isfinite(scores)):
            bad = int(np.flatnonzero(~np.isfinite(scores))[0]) % len(chunk) + start
            raise ValueError(
                f"relabel: score_fn returned a non-finite score for pair {pairs[bad].id!r} "
                f"({objective}); check the scorer's inputs"
            )
        s0[start : start + len(chunk)] = scores[: len(chunk)]
        s1[start : start + len(chunk)] = scores[len(chunk) :]
    out: list[PreferencePair] = []
    for k, p in enumerate(pairs):
        a, b = float(s0[k]), float(s1[k])
        if a == b:
            if ties == "error":
                raise ValueError(
                    f"relabel: pair {p.id!r} has tied {objective} scores ({a}); "
                    "use ties='index1' (PARM) or 'index0'"
                )
            label = 1 if ties == "index1" else 0
        else:
            label = 1 if b > a else 0
        meta = copy.deepcopy(p.meta)
        meta.setdefault("relabel", {})[objective] = {
            "scores": [a, b],
            "previous": p.labels.get(objective),
        }
        missing = meta.get("missing_labels")
        if isinstance(missing, list) and objective in missing:
            missing = [m for m in missing if m != objective]
            if missing:
                meta["missing_labels"] = missing
            else:
                meta.pop("missing_labels")
                meta.pop("missing_labels_note", None)
        out.append(
            PreferencePair(
                id=p.id,
                prompt=copy.deepcopy(p.prompt),
                responses=p.responses,
                labels={**p.labels, objective: label},
                meta=meta,
            )
        )
    return out
