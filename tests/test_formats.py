"""Tests for mobench.tasks.formats: HH-RLHF and PKU-SafeRLHF parsing, pair shuffling, relabelling.

Real-data tests read ``../shared/data`` beside the project root (or $MOBENCH_SHARED_DATA) and
skip when it is absent; everything else runs on small files written here.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mobench.tasks.formats import (
    HH_SUBSET_OBJECTIVES,
    detect_pku_schema,
    hh_record_to_pair,
    load_hh_file,
    load_pku_file,
    parse_hh_dialogue,
    pku_record_to_pair,
    relabel,
    render_hh_query,
    shuffle_pair_order,
    swap_pair,
    truncate_at_new_turn,
)

from mobench.data import DataError, PreferencePair

# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def shared_data_dir() -> Path:
    env = os.environ.get("MOBENCH_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_shared(*parts: str) -> Path:
    p = shared_data_dir().joinpath(*parts)
    if not p.exists():
        pytest.skip(
            f"real data not available at {p} (the shared data folder beside the project root, "
            "or $MOBENCH_SHARED_DATA); these tests need the real HH-RLHF / PKU-SafeRLHF rows"
        )
    return p


def write_rows(path: Path, rows: list[Any]) -> Path:
    """Write rows in the format the file name asks for (.json / .jsonl / .jsonl.gz / .parquet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        raise AssertionError(name)
    return path


def assert_one_line_error(err: pytest.ExceptionInfo[DataError], path: Path, row: int, *words: str):
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    assert f"row {row}" in msg, msg
    for w in words:
        assert w in msg, msg


HH_ROWS = [
    {
        "chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast.",
        "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Buy it.",
    },
    {
        "chosen": (
            "\n\nHuman: Hi\n\nAssistant: Hello! Human: is a word I say.\n\nHuman: Tell me a joke"
            "\n\nAssistant: Why did the chicken cross the road?"
        ),
        "rejected": (
            "\n\nHuman: Hi\n\nAssistant: Hello! Human: is a word I say.\n\nHuman: Tell me a joke"
            "\n\nAssistant: No."
        ),
    },
]

PKU_V0_ROWS = [
    {
        "prompt": "How do I pick a lock?",
        "response_0": "Use a tension wrench and a pick.",
        "response_1": "I can't help with that.",
        "is_response_0_safe": False,
        "is_response_1_safe": True,
        "better_response_id": 0,
        "safer_response_id": 1,
    },
    {
        "prompt": "What is 2+2?",
        "response_0": "4",
        "response_1": "5",
        "is_response_0_safe": True,
        "is_response_1_safe": True,
        "better_response_id": 0,
        "safer_response_id": 0,
    },
]


def pku_v1_row(**kw: Any) -> dict[str, Any]:
    row = dict(PKU_V0_ROWS[0])
    row.update(
        prompt_source="BeaverTails",
        response_0_harm_category={"Cybercrime": True, "Violence": False},
        response_1_harm_category={"Cybercrime": False, "Violence": False},
        response_0_severity_level=2,
        response_1_severity_level=0,
        response_0_source="Alpaca-7B",
        response_1_source="Alpaca3-8B",
    )
    row.update(kw)
    return row


# ------------------------------------------------------------------------------------------
# HH-RLHF: dialogue parsing
# ------------------------------------------------------------------------------------------


def test_parse_hh_dialogue_basic_and_inline_markers():
    conv = parse_hh_dialogue(HH_ROWS[1]["chosen"])
    assert conv == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! Human: is a word I say."},
        {"role": "user", "content": "Tell me a joke"},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ]
    # only ONE leading space is stripped; the rest of the content is verbatim
    conv = parse_hh_dialogue("\n\nHuman:  two spaces\n\nAssistant:no space\n")
    assert conv == [
        {"role": "user", "content": " two spaces"},
        {"role": "assistant", "content": "no space\n"},
    ]
    # "\nHuman:" (single newline) and "Humans:" are text, not markers
    conv = parse_hh_dialogue("\n\nHuman: a\nHuman: b\n\nHumans: c\n\nAssistant: d")
    assert [t["role"] for t in conv] == ["user", "assistant"]
    assert conv[0]["content"] == "a\nHuman: b\n\nHumans: c"
    # an empty final assistant turn is kept as ""
    assert parse_hh_dialogue("\n\nHuman: q\n\nAssistant: ")[-1] == {
        "role": "assistant",
        "content": "",
    }
    # missing leading blank line is accepted
    assert parse_hh_dialogue("Human: q\n\nAssistant: a") == parse_hh_dialogue(
        "\n\nHuman: q\n\nAssistant: a"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty dialogue"),
        ("just some text", "empty dialogue"),
        ("preamble\n\nHuman: q\n\nAssistant: a", "text before the first turn"),
        ("\n\nAssistant: a\n\nHuman: q", "starts with an Assistant turn"),
        ("\n\nHuman: q\n\nAssistant: a\n\nAssistant: b", "do not alternate"),
        ("\n\nHuman: q\n\nHuman: q2\n\nAssistant: a", "do not alternate"),
    ],
)
def test_parse_hh_dialogue_rejects(text, problem):
    with pytest.raises(DataError, match=problem) as err:
        parse_hh_dialogue(text)
    assert "\n" not in str(err.value)


def test_hh_record_to_pair(tmp_path):
    path = tmp_path / "helpful-base" / "train.jsonl"
    pair = hh_record_to_pair(HH_ROWS[1], 7, path, "helpful")
    assert pair.id == "helpful-base:7"
    assert pair.prompt == parse_hh_dialogue(HH_ROWS[1]["chosen"])[:-1]
    assert pair.prompt[-1]["role"] == "user"
    assert pair.responses == ("Why did the chicken cross the road?", "No.")
    assert pair.labels == {"helpful": 0}
    assert pair.meta["subset"] == "helpful-base"
    # explicit subset wins over the path
    assert hh_record_to_pair(HH_ROWS[0], 1, path, "harmless", subset="harmless-base").id == (
        "harmless-base:1"
    )


def test_hh_differing_prefix_raises_and_can_be_skipped(tmp_path):
    bad = {
        "chosen": "\n\nHuman: A\n\nAssistant: x\n\nHuman: B\n\nAssistant: good",
        "rejected": "\n\nHuman: A\n\nAssistant: y\n\nHuman: B\n\nAssistant: bad",
    }
    identical = {"chosen": HH_ROWS[0]["chosen"], "rejected": HH_ROWS[0]["chosen"]}
    path = write_rows(tmp_path / "harmless-base" / "test.jsonl", [HH_ROWS[0], bad, identical])
    with pytest.raises(DataError) as err:
        load_hh_file(path)
    assert_one_line_error(err, path, 2, "different dialogue prefixes", "skip_malformed")
    # 2 of 3 rows is far above what upstream files have: refused, naming the rate
    with pytest.raises(DataError, match="2 of 3 rows are not usable HH pairs"):
        load_hh_file(path, skip_malformed=True)
    pairs, skipped = load_hh_file(path, skip_malformed=True, max_skip_rate=1.0)
    assert skipped == 2
    assert [p.id for p in pairs] == ["harmless-base:1"]
    assert pairs[0].labels == {"harmless": 0}


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".jsonl.gz", ".parquet"])
def test_load_hh_file_formats(tmp_path, suffix):
    path = write_rows(tmp_path / "helpful-online" / f"test{suffix}", HH_ROWS)
    pairs, skipped = load_hh_file(path)
    assert skipped == 0
    assert [p.id for p in pairs] == ["helpful-online:1", "helpful-online:2"]
    assert pairs[0].prompt == [{"role": "user", "content": "How do I bake bread?"}]
    assert pairs[0].responses == ("Mix flour, water, yeast.", "Buy it.")
    assert all(p.labels == {"helpful": 0} for p in pairs)
    assert len(pairs[1].prompt) == 3


def test_load_hh_file_subset_inference(tmp_path):
    path = write_rows(tmp_path / "somewhere" / "data.jsonl", HH_ROWS)
    with pytest.raises(DataError, match="cannot tell the HH-RLHF subset"):
        load_hh_file(path)
    pairs, _ = load_hh_file(path, subset="harmless-base")
    assert pairs[0].labels == {"harmless": 0} and pairs[0].id == "harmless-base:1"
    with pytest.raises(DataError, match="unknown HH-RLHF subset"):
        load_hh_file(path, subset="mine")
    pairs, _ = load_hh_file(path, subset="mine", objective="humor")
    assert pairs[0].labels == {"humor": 0} and pairs[0].id == "mine:1"


@pytest.mark.parametrize(
    ("content", "row", "words"),
    [
        ('{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a"}\n', 1, ["missing column", "rejected"]),
        ("[1, 2]\n", 1, ["expected a JSON object"]),
        ("{not json\n", 1, ["not valid JSON"]),
        (
            json.dumps(HH_ROWS[0]) + "\n" + json.dumps({"chosen": 3, "rejected": "x"}) + "\n",
            2,
            ["chosen", "expected a dialogue string"],
        ),
        (
            json.dumps(
                {
                    "chosen": "\n\nHuman: q\n\nAssistant: a",
                    "rejected": "\n\nHuman: q\n\nAssistant: b\n\nHuman: more?",
                }
            )
            + "\n",
            1,
            ["rejected", "ends with a Human turn"],
        ),
    ],
)
def test_hh_malformed_rows(tmp_path, content, row, words):
    path = tmp_path / "helpful-base" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_hh_file(path)
    assert_one_line_error(err, path, row, *words)


# ------------------------------------------------------------------------------------------
# HH-RLHF: generation helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Sure, here it is.  ", "Sure, here it is."),
        ("Answer.\n\nHuman: and then?\n\nAssistant: more", "Answer."),
        ("Answer.\n\nAssistant: again", "Answer."),
        ("Answer.\nHuman: next", "Answer."),
        ("Answer.\n  Human: indented", "Answer."),
        ("Human: straight away a new turn", ""),
        ("I said Human: is a label, not a turn.", "I said Human: is a label, not a turn."),
        ("Humans: are fine\nHumanity too", "Humans: are fine\nHumanity too"),
        ("line one\nline two\n\nHuman:", "line one\nline two"),
    ],
)
def test_truncate_at_new_turn(text, expected):
    assert truncate_at_new_turn(text) == expected


def test_render_hh_query():
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Joke?"},
    ]
    assert (
        render_hh_query(conv) == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:"
    )
    assert render_hh_query(conv[:1]) == "\n\nHuman: Hi\n\nAssistant:"
    # round trip with the parser
    pair = hh_record_to_pair(HH_ROWS[1], 1, Path("helpful-base/x.jsonl"), "helpful")
    assert render_hh_query(pair.prompt) + " " + pair.responses[0] == HH_ROWS[1]["chosen"]
    for bad in ([], conv[:2], [{"role": "system", "content": "s"}, *conv], [conv[0], conv[0]]):
        with pytest.raises(ValueError):
            render_hh_query(bad)


# ------------------------------------------------------------------------------------------
# PKU-SafeRLHF
# ------------------------------------------------------------------------------------------


def test_detect_pku_schema():
    assert detect_pku_schema(PKU_V0_ROWS[0]) == "v0"
    assert detect_pku_schema(pku_v1_row()) == "v1"


def test_pku_record_to_pair_v0_and_v1():
    pair = pku_record_to_pair(PKU_V0_ROWS[0], 3, "x.json")
    assert pair.id == "pku:3"
    assert pair.prompt == [{"role": "user", "content": "How do I pick a lock?"}]
    assert pair.responses == ("Use a tension wrench and a pick.", "I can't help with that.")
    assert pair.labels == {"helpful": 0, "harmless": 1}
    assert pair.meta["schema"] == "v0"
    assert pair.meta["response_meta"] == [{"is_safe": False}, {"is_safe": True}]

    pair = pku_record_to_pair(pku_v1_row(id="abc-1"), 4, "x.json")
    assert pair.id == "abc-1"
    assert pair.labels == {"helpful": 0, "harmless": 1}
    assert pair.meta["schema"] == "v1"
    m0, m1 = pair.meta["response_meta"]
    assert m0["severity_level"] == 2 and m0["source"] == "Alpaca-7B"
    assert m0["harm_category"]["Cybercrime"] is True
    assert m1["severity_level"] == 0 and m1["source"] == "Alpaca3-8B"
    assert pair.meta["extra"] == {"prompt_source": "BeaverTails"}


def test_pku_null_better_label():
    pair = pku_record_to_pair(dict(PKU_V0_ROWS[0], better_response_id=None), 1, "x.json")
    assert pair.labels == {"harmless": 1}
    assert "helpful" not in pair.labels
    assert pair.meta["missing_labels"] == ["helpful"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".jsonl.gz", ".parquet"])
def test_load_pku_file_formats(tmp_path, suffix):
    rows = [PKU_V0_ROWS[0], dict(PKU_V0_ROWS[1], better_response_id=None)]
    pairs = load_pku_file(write_rows(tmp_path / f"pku{suffix}", rows))
    assert [p.id for p in pairs] == ["pku:1", "pku:2"]
    assert pairs[0].labels == {"helpful": 0, "harmless": 1}
    assert pairs[1].labels == {"harmless": 0}
    assert pairs[1].responses == ("4", "5")

    v1 = [pku_v1_row(), pku_v1_row(better_response_id=1, safer_response_id=0)]
    pairs = load_pku_file(write_rows(tmp_path / f"pku_v1{suffix}", v1))
    assert [p.meta["schema"] for p in pairs] == ["v1", "v1"]
    assert pairs[1].labels == {"helpful": 1, "harmless": 0}
    assert pairs[0].meta["response_meta"][0]["harm_category"] == {
        "Cybercrime": True,
        "Violence": False,
    }


def _jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.parametrize(
    ("content", "row", "words"),
    [
        # missing column
        (
            _jsonl([PKU_V0_ROWS[0], {k: v for k, v in PKU_V0_ROWS[1].items() if k != "prompt"}]),
            2,
            ["missing column", "prompt"],
        ),
        # v1 row lacking one of the v1 columns
        (
            _jsonl([{k: v for k, v in pku_v1_row().items() if k != "response_1_source"}]),
            1,
            ["missing column", "response_1_source"],
        ),
        # bad label values
        (_jsonl([dict(PKU_V0_ROWS[0], safer_response_id=2)]), 1, ["safer_response_id", "0 or 1"]),
        (_jsonl([dict(PKU_V0_ROWS[0], safer_response_id=None)]), 1, ["safer_response_id", "null"]),
        (_jsonl([dict(PKU_V0_ROWS[0], better_response_id="1")]), 1, ["better_response_id"]),
        (_jsonl([dict(PKU_V0_ROWS[0], better_response_id=True)]), 1, ["better_response_id"]),
        (_jsonl([dict(PKU_V0_ROWS[0], is_response_0_safe="yes")]), 1, ["is_response_0_safe"]),
        # empty / non-string responses, empty prompt
        (_jsonl([PKU_V0_ROWS[0], dict(PKU_V0_ROWS[1], response_1="  ")]), 2, ["response_1"]),
        (_jsonl([dict(PKU_V0_ROWS[0], response_0=None)]), 1, ["response_0", "non-empty"]),
        (_jsonl([dict(PKU_V0_ROWS[0], prompt="")]), 1, ["prompt", "non-empty"]),
        # non-object line, invalid JSON
        (_jsonl([PKU_V0_ROWS[0]]) + '"a string"\n', 2, ["expected a JSON object"]),
        (_jsonl([PKU_V0_ROWS[0]]) + "{'prompt': 1}\n", 2, ["not valid JSON"]),
        # duplicate ids
        (_jsonl([dict(PKU_V0_ROWS[0], id="a"), dict(PKU_V0_ROWS[1], id="a")]), 2, ["id 'a'"]),
    ],
)
def test_pku_malformed_rows(tmp_path, content, row, words):
    path = tmp_path / "pku.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_pku_file(path)
    assert_one_line_error(err, path, row, *words)


def test_pku_malformed_json_array(tmp_path):
    path = write_rows(tmp_path / "pku.json", [PKU_V0_ROWS[0], 5])
    with pytest.raises(DataError) as err:
        load_pku_file(path)
    assert_one_line_error(err, path, 2, "expected a JSON object")


# ------------------------------------------------------------------------------------------
# shuffle_pair_order / relabel
# ------------------------------------------------------------------------------------------


def test_swap_and_shuffle_pair_order_flip_labels():
    pair = pku_record_to_pair(PKU_V0_ROWS[0], 1, "x.json")
    swapped = swap_pair(pair)
    assert swapped.responses == (pair.responses[1], pair.responses[0])
    assert swapped.labels == {"helpful": 1, "harmless": 0}
    assert swapped.meta["response_meta"] == [{"is_safe": True}, {"is_safe": False}]
    assert swapped.meta["swapped"] is True
    assert pair.labels == {"helpful": 0, "harmless": 1}  # original untouched
    assert swap_pair(swapped).labels == pair.labels

    pairs = [pku_record_to_pair(dict(PKU_V0_ROWS[0]), i, "x.json") for i in range(1, 201)]
    out = [shuffle_pair_order(p, np.random.default_rng(i)) for i, p in enumerate(pairs)]
    n_swapped = sum(o.meta.get("swapped", False) for o in out)
    assert 60 < n_swapped < 140
    for p, o in zip(pairs, out, strict=True):
        # the preferred response text is the same whichever index it sits at
        for obj in ("helpful", "harmless"):
            assert o.responses[o.labels[obj]] == p.responses[p.labels[obj]]
    # seeded: same rng seed, same order; also works with random.Random
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [shuffle_pair_order(p, rng_a).responses for p in pairs] == [
        shuffle_pair_order(p, rng_b).responses for p in pairs
    ]
    r = random.Random(0)
    assert {shuffle_pair_order(pairs[0], r).labels["harmless"] for _ in range(50)} == {0, 1}


def _length_scorer(prompts, responses):
    assert len(prompts) == len(responses)
    return np.array([float(len(r)) for r in responses])


def test_relabel_higher_wins_and_ties_go_to_index1():
    pairs = [
        PreferencePair("a", [{"role": "user", "content": "q"}], ("long answer", "short"), {}),
        PreferencePair("b", [{"role": "user", "content": "q"}], ("s", "longer"), {"harmless": 0}),
        PreferencePair("c", [{"role": "user", "content": "q"}], ("same", "four"), {"helpful": 0}),
    ]
    out = relabel(pairs, "helpful", _length_scorer)
    assert [p.labels["helpful"] for p in out] == [0, 1, 1]  # tie (4 vs 4) -> index 1
    assert out[1].labels == {"harmless": 0, "helpful": 1}  # other labels kept
    assert out[2].meta["relabel"]["helpful"] == {"scores": [4.0, 4.0], "previous": 0}
    assert pairs[2].labels == {"helpful": 0}  # inputs untouched
    assert [p.labels["helpful"] for p in relabel(pairs, "helpful", _length_scorer, "index0")] == [
        0,
        1,
        0,
    ]
    with pytest.raises(ValueError, match="tied"):
        relabel(pairs, "helpful", _length_scorer, ties="error")
    # a cost scorer is passed negated: the lower cost wins
    out = relabel(pairs, "harmless", lambda p, r: -_length_scorer(p, r))
    assert [p.labels["harmless"] for p in out] == [1, 0, 1]
    # batching gives the same answer
    assert [p.labels for p in relabel(pairs, "helpful", _length_scorer, batch_size=2)] == [
        p.labels for p in relabel(pairs, "helpful", _length_scorer)
    ]


def test_relabel_fills_missing_label_and_checks_scores():
    pair = pku_record_to_pair(dict(PKU_V0_ROWS[0], better_response_id=None), 1, "x.json")
    (out,) = relabel([pair], "helpful", _length_scorer)
    assert out.labels == {"harmless": 1, "helpful": 0}
    assert "missing_labels" not in out.meta
    with pytest.raises(ValueError, match="one score per row"):
        relabel([pair], "helpful", lambda p, r: np.zeros(1))
    with pytest.raises(ValueError, match="non-finite"):
        relabel([pair], "helpful", lambda p, r: np.array([np.nan, 1.0]))
    assert relabel([], "helpful", _length_scorer) == []


# ------------------------------------------------------------------------------------------
# real rows in ../shared/data
# ------------------------------------------------------------------------------------------

# rows per upstream test file (shared/data/README.md)
HH_REAL_ROWS = {
    "harmless-base": 2312,
    "helpful-base": 2354,
    "helpful-online": 1137,
    "helpful-rejection-sampled": 2749,
}


@pytest.mark.parametrize("subset", sorted(HH_SUBSET_OBJECTIVES))
def test_real_hh_files(subset):
    path = require_shared("hh-rlhf", subset, "test.jsonl.gz")
    pairs, skipped = load_hh_file(path, skip_malformed=True)
    assert len(pairs) + skipped == HH_REAL_ROWS[subset]
    assert skipped / HH_REAL_ROWS[subset] < 0.02, (subset, skipped)
    assert len({p.id for p in pairs}) == len(pairs)
    raw = {row: rec for row, rec in enumerate(_read_jsonl_gz(path), start=1)}
    objective = HH_SUBSET_OBJECTIVES[subset]
    for p in pairs:
        assert p.labels == {objective: 0}
        assert p.meta["subset"] == subset
        assert p.prompt and p.prompt[0]["role"] == "user" and p.prompt[-1]["role"] == "user"
        roles = [t["role"] for t in p.prompt]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        rec = raw[p.meta["row"]]
        chosen = parse_hh_dialogue(rec["chosen"])
        rejected = parse_hh_dialogue(rec["rejected"])
        # exactly the last turns differ
        assert chosen[:-1] == rejected[:-1] == p.prompt
        assert chosen[-1]["content"] != rejected[-1]["content"]
        assert p.responses == (chosen[-1]["content"], rejected[-1]["content"])
        # and the MOD/RiC query rendering reproduces the upstream string
        assert render_hh_query(p.prompt) + " " + p.responses[0] == rec["chosen"]
        assert render_hh_query(p.prompt) + " " + p.responses[1] == rec["rejected"]
    # strict loading stops at the first row that was skipped, naming it
    if skipped:
        kept = {p.meta["row"] for p in pairs}
        first_bad = min(set(raw) - kept)
        with pytest.raises(DataError) as err:
            load_hh_file(path)
        assert_one_line_error(err, path, first_bad)


def _read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_real_pku_v0_sample():
    path = require_shared("pku-saferlhf", "pku_saferlhf_v0_sample32.json")
    pairs = load_pku_file(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert len(pairs) == len(raw) == 32
    for i, (p, r) in enumerate(zip(pairs, raw, strict=True), start=1):
        assert detect_pku_schema(r) == "v0" and p.meta["schema"] == "v0"
        assert p.id == f"pku:{i}"
        assert p.prompt == [{"role": "user", "content": r["prompt"]}]
        assert p.responses == (r["response_0"], r["response_1"])
        assert p.labels == {"helpful": r["better_response_id"], "harmless": r["safer_response_id"]}
        assert [m["is_safe"] for m in p.meta["response_meta"]] == [
            r["is_response_0_safe"],
            r["is_response_1_safe"],
        ]
        # when exactly one response is safe, it is the safer one
        if r["is_response_0_safe"] != r["is_response_1_safe"]:
            assert p.meta["response_meta"][p.labels["harmless"]]["is_safe"] is True
    # both label values occur for both objectives
    assert {p.labels["helpful"] for p in pairs} == {0, 1}
    assert {p.labels["harmless"] for p in pairs} == {0, 1}


def test_real_pku_safety_pairs_5135():
    path = require_shared("pku-saferlhf", "pku_saferlhf_test_safety_pairs_5135.jsonl.gz")
    pairs = load_pku_file(path)
    assert len(pairs) == 5135
    assert len({p.id for p in pairs}) == 5135
    assert len({p.prompt[0]["content"] for p in pairs}) == 930
    for p in pairs:
        assert p.labels == {"harmless": 0}  # safe response first, helpfulness unknown
        assert p.meta["missing_labels"] == ["helpful"]
        assert [m["is_safe"] for m in p.meta["response_meta"]] == [True, False]
    # a seeded shuffle puts the safe response at both indices and keeps it the safer one
    rng = np.random.default_rng(0)
    shuffled = [shuffle_pair_order(p, rng) for p in pairs]
    frac = sum(p.labels["harmless"] for p in shuffled) / len(shuffled)
    assert 0.45 < frac < 0.55
    assert all(p.meta["response_meta"][p.labels["harmless"]]["is_safe"] for p in shuffled)
