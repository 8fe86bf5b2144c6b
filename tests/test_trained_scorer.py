"""Reward models mobench trains itself (tasks/trained_scorer.py), on the tiny in-process model.

Invariants: the held-out accuracy stored with a scorer is what the loaded scorer gives on the
held-out pairs; the loaded (merged, batched, padded) scorer equals a direct unmerged forward
of one unpadded sequence; scores are standardised as stored; a recipe is trained once (cache by
hash, data by content); bad recipes fail with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mobench.config import ConfigError
from mobench.data import DataError
from tests.conftest import write_hh_file


def test_heldout_accuracy_is_what_the_loaded_scorer_gives(trained_scorer) -> None:
    from mobench.tasks.trained_scorer import (
        TrainedRewardScorer,
        heldout_split,
        load_labelled_pairs,
    )

    recipe, folder, _ = trained_scorer
    meta = json.loads((folder / "scorer.json").read_text())
    assert meta["recipe"] == recipe.to_json()
    assert meta["heldout_pairs"] == 20 and meta["train_pairs"] == 24
    pairs = load_labelled_pairs(recipe.data[0], "helpful")
    train, heldout = heldout_split(pairs, 20, 24, recipe.seed)
    assert not {p.id for p in train} & {p.id for p in heldout}
    scorer = TrainedRewardScorer(folder, "helpful", dtype="float32")
    chosen = scorer.score([p.prompt for p in heldout], [p.responses[0] for p in heldout])
    rejected = scorer.score([p.prompt for p in heldout], [p.responses[1] for p in heldout])
    assert meta["heldout_accuracy"] == pytest.approx(float(np.mean(chosen > rejected)))
    # standardised with the held-out responses' statistics: mean 0, std 1 on them
    both = np.concatenate([chosen, rejected])
    assert both.mean() == pytest.approx(0.0, abs=1e-5)
    assert both.std() == pytest.approx(1.0, abs=1e-4)
    assert scorer.info["heldout_accuracy"] == meta["heldout_accuracy"]


def test_loaded_scorer_equals_direct_unmerged_forward(trained_scorer) -> None:
    import torch
    from mobench.tasks.trained_scorer import TrainedRewardScorer, encode_conversation
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    recipe, folder, _ = trained_scorer
    scorer = TrainedRewardScorer(folder, "helpful", dtype="float32", batch_size=3)
    prompts = [[{"role": "user", "content": f"Tell me fact {i}."}] for i in range(5)]
    responses = ["Water boils at 100 C.", "No.", "Paris is the capital of France, yes.", "a", "b c"]
    batched = scorer.raw_scores(prompts, responses)
    model = AutoModelForSequenceClassification.from_pretrained(recipe.backbone, num_labels=1)
    model.config.pad_token_id = scorer.tokenizer.pad_token_id
    model = PeftModel.from_pretrained(model, folder).eval()
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            ids = encode_conversation(scorer.tokenizer, p, r, recipe.max_length)
            direct = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
            assert batched[i] == pytest.approx(direct, abs=1e-4)
    assert scorer.score(prompts, responses) == pytest.approx((batched - scorer.mean) / scorer.std)


def test_recipe_is_trained_once_and_hashes_data_by_content(trained_scorer, monkeypatch) -> None:
    import dataclasses

    from mobench.tasks import trained_scorer as ts

    recipe, folder, root = trained_scorer

    def no_training(*args, **kwargs):
        raise AssertionError("the cached scorer should have been reused")

    monkeypatch.setattr(ts, "train_reward_model", no_training)
    assert ts.ensure_trained(recipe, root / "cache") == folder
    # the same bytes elsewhere: same hash; other bytes: another folder
    copy = root / "copy" / "helpful-base" / "train.jsonl.gz"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(Path(recipe.data[0]).read_bytes())
    moved = dataclasses.replace(recipe, data=(str(copy),))
    assert ts.recipe_folder(moved, root / "cache") == folder
    other = write_hh_file(root / "other" / "helpful-base" / "train.jsonl.gz", 47)
    changed = dataclasses.replace(recipe, data=(str(other),))
    assert ts.recipe_folder(changed, root / "cache") != folder


def test_scorer_spec_string_builds_the_cached_scorer(trained_scorer, monkeypatch) -> None:
    from mobench.tasks import trained_scorer as ts
    from mobench.tasks.scorers import build_scorer, scorer_cache_key

    recipe, folder, root = trained_scorer
    monkeypatch.setattr(ts, "scorers_root", lambda: root / "cache")
    spec = (
        f"trained:{recipe.backbone}?data={recipe.data[0]}&part=none&train_pairs=24"
        "&heldout_pairs=20&max_length=64&batch_size=8&lora_layers=1"
    )
    assert ts.parse_recipe(spec.removeprefix("trained:"), "helpful") == recipe
    scorer = build_scorer(spec, "helpful", device="cpu", dtype="float32")
    assert isinstance(scorer, ts.TrainedRewardScorer) and scorer.folder == folder
    assert scorer_cache_key(spec, "helpful", "float32") == scorer_cache_key(
        spec, "helpful", "float32"
    )
    assert scorer_cache_key(spec, "helpful", "float32") != scorer_cache_key(
        f"trained:{folder}", "helpful", "float32"
    )
    with pytest.raises(ConfigError, match="scores 'helpful', not 'harmless'"):
        build_scorer(f"trained:{folder}", "harmless", device="cpu", dtype="float32")


def test_bad_recipes_fail_with_one_line(tmp_path: Path, tiny_model_dir: str) -> None:
    from mobench.tasks.trained_scorer import ScorerRecipe, parse_recipe, train_reward_model

    with pytest.raises(ConfigError, match="cannot use 'epochz=2'"):
        parse_recipe(f"{tiny_model_dir}?data=x.jsonl&epochz=2", "helpful")
    with pytest.raises(ConfigError, match="no data"):
        parse_recipe(tiny_model_dir, "helpful")
    data = write_hh_file(tmp_path / "helpful-base" / "test.jsonl.gz", 30)
    # helpful-base rows label helpfulness only
    with pytest.raises(DataError) as err:
        train_reward_model(
            ScorerRecipe(objective="humor", data=(str(data),), backbone=tiny_model_dir, part=None),
            tmp_path / "out",
        )
    assert "no row labels objective 'humor'" in str(err.value)
    assert "\n" not in str(err.value)
