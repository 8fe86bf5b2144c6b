"""The safety and helpful tasks at full fidelity: data sources, local copies, preparation
(partition, response order, seeded split, training filter, cached relabelling), rendering, the
presets, ``--data-dir`` and ``--dry-run``.

Real-data tests read ``../shared/data`` (or $MOBENCH_SHARED_DATA) and skip when it is absent;
everything else runs on small files written here in each upstream schema. Relabelling uses a
scorer kind registered by the test (the response length), so its labels can be checked by hand.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mobench.config import ConfigError, GenerationConfig, RunSpec
from mobench.data import DataError, PreferencePair
from mobench.interfaces import Scorer
from tests.test_formats import (
    HH_ROWS,
    PKU_V0_ROWS,
    assert_one_line_error,
    pku_v1_row,
    require_shared,
    write_rows,
)

# ------------------------------------------------------------------------------------ helpers


class LengthScorer(Scorer):
    """Scores a response by its length in characters; counts the responses it scored."""

    calls: ClassVar[list[int]] = []
    #: torch's intra-op thread count seen by each score() call
    threads: ClassVar[list[int]] = []

    def __init__(self, objective: str, source: str, *, device: str, dtype: str) -> None:
        self.objective = objective
        self.fingerprint = f"length:{source}"
        self.sign = -1.0 if source == "shortest" else 1.0

    def score(self, prompts, responses) -> np.ndarray:
        import torch

        LengthScorer.calls.append(len(responses))
        LengthScorer.threads.append(torch.get_num_threads())
        return self.sign * np.array([float(len(r)) for r in responses])


@pytest.fixture
def length_scorer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[LengthScorer]:
    from mobench.tasks import scorers

    monkeypatch.setitem(scorers.SCORER_KINDS, "length", LengthScorer)
    monkeypatch.setitem(scorers.SCORER_KIND_HELP, "length", "test: response length")
    monkeypatch.setenv("MOBENCH_SCORE_CACHE", str(tmp_path / "score-cache"))
    LengthScorer.calls = []
    return LengthScorer


def make_spec(task: str, data: str, **kw: Any) -> RunSpec:
    objectives = {"safety": ("helpful", "harmless"), "helpful": ("helpful", "harmless", "humor")}
    fields: dict[str, Any] = {
        "task": task,
        "method": "genarm",
        "preset": "test",
        "objectives": objectives[task],
        "base_model": "m",
        "guide_model": "m",
        "data": data,
        "split_sizes": (100, 10, 10),
        "split_seed": 0,
        "test_limit": None,
        "grid": "corners",
        "alphas": tuple(tuple(r) for r in np.eye(len(objectives[task])).tolist()),
        "generation": GenerationConfig(),
        "method_config": {},
        "scorers": {o: "length:longest" for o in objectives[task]},
        "hv_ref_point": (0.0,) * len(objectives[task]),
        "dtype": "float32",
        "device": "cpu",
    }
    fields.update(kw)
    return RunSpec(**fields)


def task_of(name: str) -> Any:
    from mobench.registry import get_task

    return get_task(name)()


def opts(**kw: Any) -> dict[str, Any]:
    return {"relabel": "none", **kw}


PKU_ROWS = [
    {
        **PKU_V0_ROWS[i % 2],
        "prompt": f"Question {i}: {PKU_V0_ROWS[i % 2]['prompt']}",
        "response_0": PKU_V0_ROWS[i % 2]["response_0"] + " " * (i % 3),
    }
    for i in range(40)
]


# ---------------------------------------------------------------------- safety: data sources


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("pku.json", PKU_ROWS),
        ("pku.jsonl", PKU_ROWS),
        ("pku.jsonl.gz", [pku_v1_row(prompt=r["prompt"]) for r in PKU_ROWS]),
        ("pku.parquet", [pku_v1_row(prompt=r["prompt"]) for r in PKU_ROWS]),
    ],
)
def test_safety_reads_each_schema_and_splits_with_a_seed(tmp_path: Path, name: str, rows) -> None:
    path = write_rows(tmp_path / name, rows)
    spec = make_spec("safety", str(path), split_sizes=(30, 4, 6), task_options=opts())
    splits = task_of("safety").load(spec)
    assert [len(splits.train), len(splits.validation), len(splits.test)] == [30, 4, 6]
    ids = splits.ids()
    every = ids["train"] + ids["validation"] + ids["test"]
    assert sorted(every) == sorted(f"pku:{i}" for i in range(1, 41))
    # the same seed gives the same split, another seed another one
    assert task_of("safety").load(spec).ids() == ids
    other = task_of("safety").load(dataclasses.replace(spec, split_seed=1)).ids()
    assert other["test"] != ids["test"]
    by_id = {p.id: p for p in splits.train + splits.validation + splits.test}
    for i, rec in enumerate(rows, start=1):
        pair = by_id[f"pku:{i}"]
        assert pair.responses == (rec["response_0"], rec["response_1"])
        assert pair.labels == {
            "helpful": rec["better_response_id"],
            "harmless": rec["safer_response_id"],
        }
    assert splits.info["rows_read"] == 40 and splits.info["relabel"] == {"mode": "none"}


def test_safety_malformed_row_and_bad_sources_fail_with_one_line(tmp_path: Path) -> None:
    rows = [dict(r) for r in PKU_ROWS[:5]]
    del rows[3]["safer_response_id"]
    path = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        task_of("safety").load(make_spec("safety", str(path), task_options=opts()))
    assert_one_line_error(err, path, 4, "safer_response_id")
    for data, words in [
        (str(tmp_path / "nope.jsonl"), "does not exist"),
        ("data-dir:pku-saferlhf/x.jsonl", "--data-dir"),
        (f"{path}?split=test", "hub data sets only"),
        ("PKU-Alignment/PKU-SafeRLHF?splt=test", "unknown option(s) splt"),
        ("not a source", "neither an existing file"),
    ]:
        with pytest.raises(DataError) as err:
            task_of("safety").load(make_spec("safety", data, task_options=opts()))
        assert words in str(err.value) and "\n" not in str(err.value)


def test_hub_source_parses_revision_split_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    seen: dict[str, Any] = {}

    def fake_load_dataset(path: str, **kw: Any) -> list[dict[str, Any]]:
        seen.update(path=path, **kw)
        return [pku_v1_row(prompt=f"q{i}") for i in range(12)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = "PKU-Alignment/PKU-SafeRLHF@v1.0?split=test&config=alpaca-7b"
    splits = task_of("safety").load(make_spec("safety", data, task_options=opts()))
    assert seen == {
        "path": "PKU-Alignment/PKU-SafeRLHF",
        "name": "alpaca-7b",
        "data_dir": None,
        "split": "test",
        "revision": "v1.0",
    }
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 12


# ---------------------------------------------------------------------- preparation options


def test_relabel_all_uses_the_scorers_and_caches_their_scores(
    tmp_path: Path, length_scorer: type[LengthScorer]
) -> None:
    path = write_rows(tmp_path / "pku.jsonl", PKU_ROWS)
    spec = make_spec("safety", str(path), split_sizes=(30, 4, 6), task_options=opts(relabel="all"))
    splits = task_of("safety").load(spec)
    for p in splits.train + splits.validation:
        a, b = len(p.responses[0]), len(p.responses[1])
        expected = 1 if b >= a else 0  # longer wins, ties go to index 1 (PARM)
        assert p.labels == {"helpful": expected, "harmless": expected}
    # test labels are never used, so never relabelled
    for p in splits.test:
        assert "relabel" not in p.meta
    scored = sum(length_scorer.calls)
    distinct = {
        (json.dumps(p.prompt), r) for p in splits.train + splits.validation for r in p.responses
    }
    assert scored == 2 * len(distinct)  # each response once per objective
    info = splits.info["relabel"]["helpful"]["train"]
    assert info["pairs"] == 30 and info["scorer"] == "length:longest"
    # agreement with the data's own labels, computed by hand
    had = [p for p in splits.train]
    agree = np.mean([p.meta["relabel"]["helpful"]["previous"] == p.labels["helpful"] for p in had])
    assert info["agreement_with_data_label"] == pytest.approx(agree)
    # a second load scores nothing (all cached) and gives the same labels
    length_scorer.calls.clear()
    again = task_of("safety").load(spec)
    assert length_scorer.calls == []
    assert [p.labels for p in again.train] == [p.labels for p in splits.train]


def test_relabelling_scores_on_one_cpu_thread(
    tmp_path: Path, length_scorer: type[LengthScorer]
) -> None:
    """A label decided by a near-tie must not depend on the thread count: relabelling scores on
    one thread, like the run's own scoring, and gives the caller its threads back."""
    import torch

    path = write_rows(tmp_path / "pku.jsonl", PKU_ROWS)
    spec = make_spec("safety", str(path), split_sizes=(30, 4, 6), task_options=opts(relabel="all"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        length_scorer.threads.clear()
        task_of("safety").load(spec)
        assert length_scorer.threads and set(length_scorer.threads) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_relabel_missing_fills_only_absent_labels(
    tmp_path: Path, length_scorer: type[LengthScorer]
) -> None:
    rows = [dict(r, better_response_id=None) if i % 2 else dict(r) for i, r in enumerate(PKU_ROWS)]
    path = write_rows(tmp_path / "pku.jsonl", rows)
    spec = make_spec(
        "safety", str(path), split_sizes=(30, 4, 6), task_options=opts(relabel="missing")
    )
    splits = task_of("safety").load(spec)
    for p in splits.train + splits.validation:
        row = rows[int(p.id.split(":")[1]) - 1]
        assert p.labels["harmless"] == row["safer_response_id"]  # never touched
        if row["better_response_id"] is None:
            a, b = len(p.responses[0]), len(p.responses[1])
            assert p.labels["helpful"] == (1 if b >= a else 0)
            assert "missing_labels" not in p.meta
        else:
            assert p.labels["helpful"] == row["better_response_id"]
    # with relabel=none the missing labels stay missing and are counted
    none = task_of("safety").load(dataclasses.replace(spec, task_options=opts()))
    missing = sum("helpful" not in p.labels for p in none.train)
    assert none.info["relabel"]["unlabelled"]["train"] == {"helpful": missing, "harmless": 0}
    assert missing > 0


def test_train_filter_partition_and_response_order(tmp_path: Path) -> None:
    from mobench.tasks.preference import partition_of, select_part

    rows = [dict(r, response_1="x" * (900 if i % 4 == 0 else 10)) for i, r in enumerate(PKU_ROWS)]
    path = write_rows(tmp_path / "pku.jsonl", rows)
    spec = make_spec("safety", str(path), split_sizes=(30, 4, 6))
    plain = task_of("safety").load(dataclasses.replace(spec, task_options=opts()))
    limit = 920
    filtered = task_of("safety").load(
        dataclasses.replace(spec, task_options=opts(train_max_chars=limit))
    )

    def chars(p: PreferencePair) -> int:
        return len(p.prompt[0]["content"]) + max(map(len, p.responses))

    kept = [p.id for p in plain.train if chars(p) <= limit]
    assert [p.id for p in filtered.train] == kept and len(kept) < len(plain.train)
    assert filtered.info["train_max_chars"] == {
        "limit": limit,
        "dropped": len(plain.train) - len(kept),
    }
    assert filtered.test == plain.test  # the filter is for training pairs only
    # the two halves are disjoint, cover everything and keep each first user turn together
    everything = plain.train + plain.validation + plain.test
    halves = [select_part(everything, "task"), select_part(everything, "scorer")]
    assert sorted(p.id for h in halves for p in h) == sorted(p.id for p in everything)
    assert all(partition_of(p) == "task" for p in halves[0])
    # seeded response order: labels follow their responses, and both orders occur
    shuffled = task_of("safety").load(
        dataclasses.replace(spec, task_options=opts(shuffle_responses=True))
    )
    original = {p.id: p for p in everything}
    swaps = 0
    for p in shuffled.train + shuffled.validation + shuffled.test:
        o = original[p.id]
        swapped = p.responses != o.responses
        swaps += swapped
        assert p.responses == (o.responses[::-1] if swapped else o.responses)
        for k, v in o.labels.items():
            assert p.labels[k] == (1 - v if swapped else v)
    assert 0 < swaps < len(everything)


def test_unknown_and_bad_task_options_are_refused() -> None:
    from mobench.resolve import resolve_spec

    with pytest.raises(ConfigError, match="unknown task option"):
        resolve_spec("safety", "genarm", "tiny", overrides={"task": {"relabell": "all"}})
    with pytest.raises(ConfigError, match="relabel='sometimes'"):
        resolve_spec("safety", "genarm", "tiny", overrides={"task": {"relabel": "sometimes"}})
    spec = resolve_spec("safety", "genarm", "tiny", overrides={"task": {"relabel": "all"}})
    assert spec.task_options["relabel"] == "all"


# ------------------------------------------------------------------------------- HH-RLHF


def write_hh_folder(root: Path, split: str = "train") -> Path:
    """An upstream-layout folder with two subsets, one malformed row in harmless-base."""
    helpful = [
        {k: v.replace("bake bread", f"bake bread {i}") for k, v in HH_ROWS[i % 2].items()}
        for i in range(12)
    ]
    harmless = [
        {k: v.replace("Tell me a joke", f"Tell me joke {i}") for k, v in HH_ROWS[1].items()}
        for i in range(9)
    ]
    harmless.append(
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}
    )
    write_rows(root / "helpful-base" / f"{split}.jsonl.gz", helpful)
    write_rows(root / "harmless-base" / f"{split}.jsonl.gz", harmless)
    return root


def test_hh_folder_subsets_split_and_skipped_rows(tmp_path: Path) -> None:
    folder = write_hh_folder(tmp_path / "hh-rlhf", "test")
    data = f"{folder}?subsets=helpful-base,harmless-base&split=test"
    spec = make_spec("helpful", data, split_sizes=(15, 2, 4), task_options=opts())
    splits = task_of("helpful").load(spec)
    rows = splits.train + splits.validation + splits.test
    assert len(rows) == 21 and len({p.id for p in rows}) == 21
    assert {p.id.split(":")[0] for p in rows} == {"helpful-base/test", "harmless-base/test"}
    for p in rows:
        objective = "helpful" if p.id.startswith("helpful") else "harmless"
        chosen = p.meta["chosen_index"]
        assert p.labels == {objective: chosen}
        assert p.prompt[-1]["role"] == "user"
    assert splits.info["skipped_rows"] == {
        str(folder / "helpful-base" / "test.jsonl.gz"): 0,
        str(folder / "harmless-base" / "test.jsonl.gz"): 1,
    }
    # humor is labelled by no HH row: relabel=none leaves it missing everywhere
    assert splits.info["relabel"]["unlabelled"]["train"]["humor"] == 15
    # only one subset
    one = task_of("helpful").load(
        dataclasses.replace(spec, data=f"{folder}?subsets=harmless-base&split=test")
    )
    assert all(p.id.startswith("harmless-base") for p in one.train + one.test)
    with pytest.raises(DataError, match=r"no train\.jsonl\.gz"):
        task_of("helpful").load(dataclasses.replace(spec, data=str(folder)))
    with pytest.raises(DataError, match="unknown HH-RLHF subset"):
        task_of("helpful").load(dataclasses.replace(spec, data=f"{folder}?subsets=helpful"))


def test_hh_relabel_all_three_objectives(tmp_path: Path, length_scorer: type[LengthScorer]) -> None:
    folder = write_hh_folder(tmp_path / "hh-rlhf")
    spec = make_spec(
        "helpful",
        str(folder),
        split_sizes=(15, 2, 4),
        scorers={"helpful": "length:longest", "harmless": "length:shortest", "humor": "length:x"},
        task_options=opts(relabel="all"),
    )
    splits = task_of("helpful").load(spec)
    for p in splits.train + splits.validation:
        a, b = len(p.responses[0]), len(p.responses[1])
        longer = 1 if b >= a else 0
        shorter = 1 if -b >= -a else 0
        assert p.labels == {"helpful": longer, "harmless": shorter, "humor": longer}
    assert "unlabelled" not in splits.info["relabel"]


def test_hh_pair_format_and_its_errors(tmp_path: Path) -> None:
    from mobench.tasks.formats import load_pair_file

    good = {"prompt": "hi", "responses": ["a", "b"], "labels": {"helpful": 1}}
    path = write_rows(tmp_path / "pairs.jsonl", [good, {**good, "id": "x"}])
    pairs = load_pair_file(path, ("helpful", "harmless", "humor"))
    assert [p.id for p in pairs] == ["pairs:1", "x"]
    assert pairs[0].prompt == [{"role": "user", "content": "hi"}] and pairs[0].labels == {
        "helpful": 1
    }
    for bad, row, words in [
        ({**good, "labels": {"funny": 0}}, 2, "unknown objective(s) funny"),
        ({**good, "responses": ["a"]}, 2, "two non-empty strings"),
        ({**good, "labels": {"helpful": 2}}, 2, "labels.helpful is 2"),
        ({**good, "prompt": [{"role": "assistant", "content": "x"}]}, 2, "turn 1"),
        ({"prompt": "x", "labels": {}}, 2, "responses"),
    ]:
        path = write_rows(tmp_path / "bad.jsonl", [good, bad])
        with pytest.raises(DataError) as err:
            load_pair_file(path, ("helpful", "harmless", "humor"))
        assert_one_line_error(err, path, row, words)


def test_hh_render_and_postprocess(tiny_tokenizer: Any) -> None:
    task = task_of("helpful")
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    text = task.render(conv, tiny_tokenizer)
    # every turn, in order, in the model's own chat template, ending at the assistant slot
    assert text == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nTell me a joke<|im_end|>\n<|im_start|>assistant\n"
    )

    class NoTemplate:
        chat_template = None

    assert task.render(conv, NoTemplate()) == (
        "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:"
    )
    assert task.postprocess(" Sure thing.\n\nHuman: and now?") == "Sure thing."
    assert task_of("safety").postprocess("a\n\nHuman: b") == "a\n\nHuman: b"


# ---------------------------------------------------------------------- real rows (shared)


def test_real_hh_rows_through_the_task() -> None:
    folder = require_shared("hh-rlhf")
    data = f"{folder}?subsets=helpful-base,harmless-base&split=test"
    spec = make_spec("helpful", data, split_sizes=(100, 10, 10), task_options=opts(part="task"))
    splits = task_of("helpful").load(spec)
    skipped = splits.info["skipped_rows"]
    assert sum(skipped.values()) == (2354 - 2337) + (2312 - 2303)  # upstream non-pairs
    assert splits.info["rows_read"] == 2337 + 2303
    assert 0.4 < splits.info["part"]["rows"] / splits.info["rows_read"] < 0.6
    for p in splits.train + splits.test:
        assert p.prompt[0]["role"] == "user" and p.prompt[-1]["role"] == "user"
        assert len(p.labels) == 1


def test_real_pku_rows_through_the_task(tmp_path: Path) -> None:
    path = require_shared("pku-saferlhf", "pku_saferlhf_test_safety_pairs_5135.jsonl.gz")
    spec = make_spec(
        "safety",
        str(path),
        split_sizes=(200, 20, 20),
        task_options=opts(part="task", shuffle_responses=True, train_max_chars=1024),
    )
    splits = task_of("safety").load(spec)
    assert splits.info["rows_read"] == 5135
    # the helpful label is missing in this file (relabel=none keeps it missing)
    assert splits.info["relabel"]["unlabelled"]["train"]["helpful"] == len(splits.train)
    # the shuffled order puts the safe (safer) response at both indices
    safer = [p.labels["harmless"] for p in splits.train]
    assert 0 < sum(safer) < len(safer)
    assert all(p.meta["response_meta"][p.labels["harmless"]]["is_safe"] for p in splits.train)
    sample = require_shared("pku-saferlhf", "pku_saferlhf_v0_sample32.json")
    small = task_of("safety").load(
        make_spec("safety", str(sample), split_sizes=(20, 4, 8), task_options=opts())
    )
    assert len(small.train) + len(small.validation) + len(small.test) == 32


# ----------------------------------------------------------------- data-dir and presets


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobench.resolve import resolve_spec

    monkeypatch.delenv("MOBENCH_DATA_DIR", raising=False)
    write_hh_folder(tmp_path / "hh-rlhf", "test")
    spec = resolve_spec("helpful", "genarm", "mini", data_dir=tmp_path, identify=False)
    assert (
        spec.data == f"{tmp_path.resolve()}/hh-rlhf?subsets=helpful-base,harmless-base&split=test"
    )
    assert "data-dir:" not in json.dumps(spec.to_json())
    assert f"{tmp_path.resolve()}/hh-rlhf/helpful-base/test.jsonl.gz" in spec.scorers["helpful"]
    with pytest.raises(DataError, match="pass --data-dir"):
        resolve_spec("helpful", "genarm", "mini", identify=False)
    # a hub source with --data-dir reads the task's local copy, or says what is missing
    with pytest.raises(ConfigError) as err:
        resolve_spec("helpful", "genarm", "paper", data_dir=tmp_path, identify=False)
    assert "split 'train'" in str(err.value) and "helpful-base/test.jsonl.gz" in str(err.value)
    write_hh_folder(tmp_path / "hh-rlhf", "train")
    paper = resolve_spec("helpful", "genarm", "paper", data_dir=tmp_path, identify=False)
    assert paper.data == f"{tmp_path}/hh-rlhf?subsets=helpful-base,harmless-base&split=train"
    with pytest.raises(ConfigError, match="no local copy of PKU-Alignment/PKU-SafeRLHF-10K"):
        resolve_spec("safety", "genarm", "paper", data_dir=tmp_path, identify=False)
    (tmp_path / "pku-saferlhf").mkdir()
    write_rows(tmp_path / "pku-saferlhf" / "PKU-SafeRLHF-10K.jsonl", PKU_ROWS)
    safety = resolve_spec("safety", "genarm", "paper", data_dir=tmp_path, identify=False)
    assert safety.data == str(tmp_path / "pku-saferlhf" / "PKU-SafeRLHF-10K.jsonl")


def test_paper_and_mini_presets_follow_methods_section_7() -> None:
    from mobench.tasks.safety import ALPACA_TEMPLATE, SAFE_RLHF_TEMPLATE

    from mobench.config import MOD_13
    from mobench.registry import get_preset
    from mobench.resolve import resolve_spec

    safety = resolve_spec("safety", "genarm", "paper", identify=False)
    assert safety.base_model == safety.guide_model == "PKU-Alignment/alpaca-7b-reproduced"
    assert safety.data == "PKU-Alignment/PKU-SafeRLHF-10K"
    assert safety.split_sizes == (8000, 500, 1500)
    assert safety.scorers == {
        "helpful": "beaver-reward:PKU-Alignment/beaver-7b-v1.0-reward",
        "harmless": "beaver-cost:PKU-Alignment/beaver-7b-v1.0-cost",
    }
    assert safety.generation.max_new_tokens == 512 and safety.generation.beta == 1.0
    assert not safety.generation.sampling
    assert (
        safety.task_options["relabel"] == "all" and safety.task_options["train_max_chars"] == 1024
    )
    assert safety.templates[safety.base_model] == SAFE_RLHF_TEMPLATE
    # training defaults are the method's own
    from mobench.methods.genarm import GenARMConfig

    assert safety.method_config == json.loads(json.dumps(dataclasses.asdict(GenARMConfig())))
    assert len(safety.alphas) == 11
    w2s = resolve_spec("safety", "genarm", "paper-w2s", identify=False)
    assert w2s.base_model == "TheBloke/alpaca-lora-65B-GPTQ"
    assert w2s.templates[w2s.base_model] == ALPACA_TEMPLATE
    assert w2s.templates[w2s.guide_model] == SAFE_RLHF_TEMPLATE
    helpful = resolve_spec("helpful", "genarm", "paper", identify=False)
    assert helpful.base_model == "meta-llama/Llama-2-7b-chat-hf"
    assert helpful.guide_model == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert helpful.split_sizes == (10000, 1000, 1000)
    assert helpful.alphas == MOD_13 and helpful.grid == "mod13"
    assert set(helpful.scorers) == {"helpful", "harmless", "humor"}
    assert helpful.scorers["humor"] == "seqcls-logit1:mohameddhiab/humor-no-humor"
    full = resolve_spec("helpful", "genarm", "paper", grid="simplex-0.1", identify=False)
    assert len(full.alphas) == 66
    for task in ("safety", "helpful"):
        mini = get_preset(task, "mini")
        assert mini.base_model == "smollm2-135m-instruct"
        assert mini.task_options["part"] == "task"
        assert all(s.startswith(("trained:", "probe:", "yesno:")) for s in mini.scorers.values())
        assert "data-dir:" in mini.data
    assert get_preset("helpful", "mini").scorers["humor"].startswith("yesno:")


def test_every_preset_scorer_kind_is_registered() -> None:
    from mobench.tasks.scorers import split_spec

    from mobench.registry import all_presets

    for preset in all_presets():
        for spec in preset.scorers.values():
            split_spec(spec)  # raises for an unknown kind


def test_dry_run_describes_the_paper_setup_without_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import transformers
    from typer.testing import CliRunner

    import mobench.models
    from mobench.cli import app

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("--dry-run must not load models or data")

    for mod, name in [
        (mobench.models, "load_causal_lm"),
        (mobench.models, "load_tokenizer"),
        (mobench.models, "resolve_model_source"),
        (mobench.models, "convert_gguf"),
        (datasets, "load_dataset"),
        (transformers.AutoModelForCausalLM, "from_pretrained"),
        (transformers.AutoModelForSequenceClassification, "from_pretrained"),
        (transformers.AutoTokenizer, "from_pretrained"),
    ]:
        monkeypatch.setattr(mod, name, forbidden)
    from mobench.registry import METHODS

    method = "uniarm" if "uniarm" in METHODS.names() else "genarm"
    runner = CliRunner()
    result = runner.invoke(
        app, ["run", "--method", method, "--task", "safety", "--preset", "paper", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for words in [
        "PKU-Alignment/alpaca-7b-reproduced",
        "PKU-Alignment/PKU-SafeRLHF-10K",
        "beaver-7b-v1.0-reward",
        "beaver-7b-v1.0-cost",
        '"train": 8000',
        '"test": 1500',
        '"rows": 16500',
        '"max_new_tokens": 512',
        "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:",
        "nothing loaded",
    ]:
        assert words in out, words
    guide = 1 if method == "uniarm" else 2  # UniARM: one preference ARM; GenARM: one per objective
    assert f'"evaluations_per_token": {{"base": 1, "guide": {guide}}}' in out
    assert f'"guide": {guide * 8448000}' in out  # 16500 rows x 512 tokens
    result = runner.invoke(
        app, ["run", "--method", "genarm", "--task", "helpful", "--preset", "paper", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    for words in [
        "meta-llama/Llama-2-7b-chat-hf",
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        "gpt2-large-helpful-reward_model",
        "humor-no-humor",
        '"rows": 13000',
        '"guide": 3',
    ]:
        assert words in result.output, words


# ------------------------------------------------------------------------ the whole run


def test_helpful_run_end_to_end_records_data_and_scorers(
    tmp_path: Path, tiny_model_dir: str, trained_scorer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full run of the helpful task on the tiny model: three objectives, MOD's 13 alphas,
    relabelling with a mobench-trained scorer (helpful) and proxies, the trained scorer's
    held-out accuracy in the run directory."""
    from mobench.config import Preset
    from mobench.pipeline import execute_run
    from mobench.registry import _PRESETS, register_preset
    from mobench.resolve import resolve_spec

    monkeypatch.setenv("MOBENCH_SCORE_CACHE", str(tmp_path / "score-cache"))
    _, folder, _ = trained_scorer
    trained = f"trained:{folder}"
    register_preset(
        Preset(
            name="unit",
            task="helpful",
            description="unit tests: tiny random model",
            base_model=tiny_model_dir,
            data="builtin:helpful_tiny.jsonl",
            split_sizes=(16, 2, 4),
            test_limit=2,
            generation=GenerationConfig(max_new_tokens=4),
            training={
                "max_steps": 1,
                "per_device_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "warmup_steps": 0,
                "max_length": 96,
                "max_prompt_length": 64,
            },
            scorers={
                "helpful": trained,
                "harmless": f"yesno:{tiny_model_dir}",
                "humor": f"yesno:{tiny_model_dir}",
            },
            hv_ref_point=(-3.0, 0.0, 0.0),
            grid="mod13",
            dtype="float32",
            batch_size=13,
            task_options={"relabel": "all"},
        )
    )
    try:
        spec = resolve_spec("helpful", "genarm", "unit", device="cpu")
        result = execute_run(spec, tmp_path / "run")
    finally:
        _PRESETS.pop(("helpful", "unit"), None)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["objectives"] == ["helpful", "harmless", "humor"]
    assert len(metrics["points"]) == 13 and result.generated == 2 * 13
    scores = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 2 * 13 * 3
    data = json.loads((run / "data.json").read_text())
    assert set(data["relabel"]) >= {"mode", "helpful", "harmless", "humor"}
    assert data["sizes"] == {"train": 16, "validation": 2, "test": 4}
    scorers = json.loads((run / "scorers.json").read_text())
    assert set(scorers) == {"helpful", "harmless", "humor"}
    assert Path(scorers["helpful"]["folder"]) == folder
    stored = json.loads((folder / "scorer.json").read_text())
    assert scorers["helpful"]["heldout_accuracy"] == stored["heldout_accuracy"]
    assert scorers["harmless"]["fingerprint"].startswith("proxy-yesno:")
    # the trained scorer's accuracy is also in the data record (it relabelled the pairs)
    assert data["scorers"]["helpful"]["heldout_accuracy"] == stored["heldout_accuracy"]
