"""Frozen-feature probe scorers (tasks/probe_scorer.py), on the tiny in-process model.

Invariants: the fit is the Bradley-Terry optimum; pooling reads the response's tokens only and
a row's features do not depend on its batch; the stored held-out accuracy is what the loaded
scorer gives, and its scores are standardised on the held-out responses; a recipe is fitted
once (cache by hash, data by content) and its fingerprint and identity change with the recipe;
bad specs fail with one line (exit 2 in the CLI). A real-data test fits a small PKU probe.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mobench.config import ConfigError
from tests.conftest import SHARED_DATA, write_hh_file


@pytest.fixture(scope="session")
def probe(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(recipe, folder, root): a helpfulness probe fitted once per session on the tiny model
    (48 synthetic HH rows: an answer is preferred to "No.")."""
    from mobench.tasks.probe_scorer import ProbeRecipe, ensure_probe

    root = tmp_path_factory.mktemp("probes")
    data = write_hh_file(root / "data" / "helpful-base" / "train.jsonl.gz", 48)
    recipe = ProbeRecipe(
        objective="helpful",
        data=(str(data),),
        backbone=tiny_model_dir,
        part=None,
        train_pairs=24,
        heldout_pairs=20,
        max_length=64,
        layer=2,
        l2=0.1,
    )
    return recipe, ensure_probe(recipe, root / "cache"), root


def test_fit_is_the_bradley_terry_optimum() -> None:
    from mobench.tasks.probe_scorer import fit_bradley_terry
    from scipy.special import expit

    rng = np.random.default_rng(0)
    true_w = np.array([2.0, -1.0, 0.0])
    x = rng.normal(size=(400, 3))
    # labels drawn from the model itself; rows are chosen-minus-rejected differences
    diff = np.where((rng.random(400) < expit(x @ true_w))[:, None], x, -x)
    l2 = 0.05
    w = fit_bradley_terry(diff, l2)
    # stationarity of the penalised log-likelihood: mean(sigmoid(-w.d) d) = l2 w
    grad = -(diff.T @ expit(-(diff @ w))) / len(diff) + l2 * w
    assert np.abs(grad).max() < 1e-5
    # and it recovers the generating direction
    assert np.dot(w, true_w) / (np.linalg.norm(w) * np.linalg.norm(true_w)) > 0.95


def test_response_pooling_reads_the_response_tokens(tiny_model_dir: str) -> None:
    from mobench.tasks.probe_scorer import FrozenFeatures

    feats = FrozenFeatures(tiny_model_dir, layer=1, pool="response", max_length=64)
    prompt = [{"role": "user", "content": "How do I bake bread?"}]
    ids, start = feats.encode(prompt, "Mix flour and water.")
    assert feats.tokenizer.decode(ids[start:]).startswith("Mix flour and water.")
    assert "bake bread" in feats.tokenizer.decode(ids[:start])
    # cut from the left: the response start moves with the cut
    short = FrozenFeatures(tiny_model_dir, layer=1, pool="response", max_length=len(ids) - 3)
    cut_ids, cut_start = short.encode(prompt, "Mix flour and water.")
    assert cut_ids == ids[3:] and cut_start == start - 3


@pytest.mark.parametrize("pool", ["response", "mean", "last"])
def test_batched_features_equal_one_unpadded_forward(tiny_model_dir: str, pool: str) -> None:
    import torch
    from mobench.tasks.probe_scorer import FrozenFeatures

    feats = FrozenFeatures(tiny_model_dir, layer=2, pool=pool, max_length=64, batch_size=3)
    prompts = [[{"role": "user", "content": f"Tell me fact {i}."}] for i in range(5)]
    responses = ["Water boils at 100 C.", "No.", "Paris is the capital of France, yes.", "a", ""]
    batched = feats(prompts, responses)
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            ids, start = feats.encode(p, r)
            out = feats.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            h = out.hidden_states[2][0]
            lo = {"response": start, "mean": 0, "last": len(ids) - 1}[pool]
            assert batched[i] == pytest.approx(h[lo:].mean(0).double().numpy(), abs=1e-5)


def test_identical_answers_get_identical_scores_from_one_forward(probe: Any) -> None:
    from mobench.tasks.probe_scorer import ProbeScorer

    _, folder, _ = probe
    scorer = ProbeScorer(folder, "helpful", dtype="float32", batch_size=16)
    prompt = [{"role": "user", "content": "How do I bake bread?"}]
    # an unguided front: the same answer at all 11 alphas (11 rows: numpy's GEMV gives
    # identical rows different last bits at this count, measured)
    scores = scorer.score([prompt] * 11, ["Mix flour, water, salt and yeast."] * 11)
    assert len(set(scores.tolist())) == 1
    assert scorer.features.rows_run == 1
    mixed = scorer.score([prompt] * 11, ["Mix flour, water, salt and yeast."] * 10 + ["No."])
    assert len(set(mixed[:10].tolist())) == 1 and mixed[10] != mixed[0]


def test_heldout_accuracy_is_what_the_loaded_probe_gives(probe: Any) -> None:
    from mobench.tasks.probe_scorer import ProbeScorer
    from mobench.tasks.trained_scorer import heldout_split, load_labelled_pairs

    recipe, folder, _ = probe
    meta = json.loads((folder / "scorer.json").read_text())
    assert meta["recipe"] == recipe.to_json()
    assert meta["heldout_pairs"] == 20 and meta["train_pairs"] == 24
    pairs = load_labelled_pairs(recipe.data[0], "helpful")
    _, heldout = heldout_split(pairs, 20, 24, recipe.seed)
    scorer = ProbeScorer(folder, "helpful", dtype="float32")
    chosen = scorer.score([p.prompt for p in heldout], [p.responses[0] for p in heldout])
    rejected = scorer.score([p.prompt for p in heldout], [p.responses[1] for p in heldout])
    assert meta["heldout_accuracy"] == pytest.approx(float(np.mean(chosen > rejected)))
    # the signal (an answer vs "No.") is in the responses' features: a probe that pooled
    # anything but the responses (the prompts are alike) would sit at chance
    assert meta["heldout_accuracy"] > 0.9
    both = np.concatenate([chosen, rejected])
    assert both.mean() == pytest.approx(0.0, abs=1e-6)
    assert both.std() == pytest.approx(1.0, abs=1e-6)
    assert scorer.info["heldout_accuracy"] == meta["heldout_accuracy"]
    assert -1.0 <= scorer.info["heldout_length_correlation"] <= 1.0


def test_recipe_is_fitted_once_and_hashes_data_by_content(probe: Any, monkeypatch: Any) -> None:
    from mobench.tasks import probe_scorer as ps

    recipe, folder, root = probe

    def no_fit(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cached probe should have been reused")

    monkeypatch.setattr(ps, "train_probe", no_fit)
    assert ps.ensure_probe(recipe, root / "cache") == folder
    copy = root / "copy" / "helpful-base" / "train.jsonl.gz"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(Path(recipe.data[0]).read_bytes())
    assert ps.probe_folder(dataclasses.replace(recipe, data=(str(copy),)), root / "cache") == folder
    other = write_hh_file(root / "other" / "helpful-base" / "train.jsonl.gz", 47)
    for changed in (
        dataclasses.replace(recipe, data=(str(other),)),
        dataclasses.replace(recipe, layer=1),
        dataclasses.replace(recipe, pool="last"),
        dataclasses.replace(recipe, l2=1.0),
    ):
        assert ps.probe_folder(changed, root / "cache") != folder


def test_spec_string_builds_the_cached_probe_and_identities_differ(
    probe: Any, monkeypatch: Any
) -> None:
    from mobench.tasks import probe_scorer as ps
    from mobench.tasks import trained_scorer as ts
    from mobench.tasks.scorers import build_scorer, scorer_cache_key, scorer_identity

    recipe, folder, root = probe
    monkeypatch.setattr(ts, "scorers_root", lambda: root / "cache")
    spec = (
        f"probe:{recipe.backbone}?data={recipe.data[0]}&part=none&train_pairs=24"
        "&heldout_pairs=20&max_length=64&layer=2&l2=0.1"
    )
    assert ps.parse_probe_recipe(spec.removeprefix("probe:"), "helpful") == recipe
    scorer = build_scorer(spec, "helpful", device="cpu", dtype="float32")
    assert isinstance(scorer, ps.ProbeScorer) and scorer.folder == folder
    assert scorer.fingerprint == f"probe:{folder.name}|dtype=float32"
    # the fingerprint and the cache identity follow the recipe (its hash names the folder)
    other = spec.replace("layer=2", "layer=1")
    assert scorer_identity(other, "helpful") != scorer_identity(spec, "helpful")
    assert scorer_cache_key(spec, "helpful", "float32") != scorer_cache_key(
        spec, "helpful", "bfloat16"
    )
    assert scorer_cache_key(spec, "helpful", "float32") != scorer_cache_key(
        f"probe:{folder}", "helpful", "float32"
    )
    # a probe and a trained scorer on the same data are different scorers
    trained = spec.replace("probe:", "trained:").replace("&layer=2&l2=0.1", "")
    assert scorer_identity(trained, "helpful") != scorer_identity(spec, "helpful")
    # the task's identity (what enters the run's spec) is the same function
    from mobench.tasks.safety import SafetyTask

    assert SafetyTask().scorer_identity(spec, "helpful") == scorer_identity(spec, "helpful")
    with pytest.raises(ConfigError, match="scores 'helpful', not 'harmless'"):
        build_scorer(f"probe:{folder}", "harmless", device="cpu", dtype="float32")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?data=x.jsonl&layr=2", "cannot use 'layr=2'"),
        ("", "no data"),
        ("?data=x.jsonl&pool=max", "pool='max'"),
        ("?data=x.jsonl&l2=0", "l2 must be positive"),
        ("?data=x.jsonl&layer=two", "layer=two is not a number"),
        ("?data=x.jsonl&part=train", "part='train'"),
    ],
)
def test_bad_probe_specs_fail_with_one_line(tiny_model_dir: str, query: str, message: str) -> None:
    from mobench.tasks.probe_scorer import parse_probe_recipe

    with pytest.raises(ConfigError, match=message) as err:
        parse_probe_recipe(tiny_model_dir + query, "helpful")
    assert "\n" not in str(err.value)


def test_layer_beyond_the_backbone_fails_with_one_line(tiny_model_dir: str) -> None:
    from mobench.tasks.probe_scorer import FrozenFeatures

    with pytest.raises(ConfigError, match=r"layer=9, but .* has 2 layers"):
        FrozenFeatures(tiny_model_dir, layer=9, pool="mean", max_length=64)


def test_bad_probe_spec_in_a_preset_exits_2_in_the_cli(unit_preset: Any) -> None:
    from typer.testing import CliRunner

    from mobench.cli import app
    from mobench.registry import register_preset

    bad = dataclasses.replace(
        unit_preset,
        scorers={**unit_preset.scorers, "harmless": f"probe:{unit_preset.base_model}?pool=max"},
    )
    register_preset(bad)
    try:
        result = CliRunner().invoke(
            app, ["run", "--method", "genarm", "--task", "safety", "--preset", "unit", "--dry-run"]
        )
    finally:
        register_preset(unit_preset)
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert len(out.splitlines()) == 1 and "probe scorer" in out, out


PKU_FILE = SHARED_DATA / "pku-saferlhf" / "pku_saferlhf_test_safety_pairs_5135.jsonl.gz"


@pytest.mark.slow  # about 450 forwards of the packaged SmolLM2 on one thread (2-5 min)
@pytest.mark.skipif(
    not PKU_FILE.is_file(),
    reason=f"needs the real PKU-SafeRLHF rows in {PKU_FILE.parent} (../shared/data beside the "
    "project, or $MOBENCH_SHARED_DATA)",
)
def test_real_pku_probe_beats_chance_on_held_out_prompts(tmp_path: Path) -> None:
    """A small PKU harmless probe, fitted on the scorer half and evaluated on the task half
    (disjoint first user turns): better than chance by more than its sampling noise."""
    from mobench.tasks.preference import first_user_turn, select_part
    from mobench.tasks.probe_scorer import ProbeRecipe, ProbeScorer, ensure_probe
    from mobench.tasks.trained_scorer import load_labelled_pairs

    recipe = ProbeRecipe(
        objective="harmless", data=(str(PKU_FILE),), train_pairs=100, heldout_pairs=20
    )
    folder = ensure_probe(recipe, tmp_path)
    scorer = ProbeScorer(folder, "harmless")
    task = select_part(load_labelled_pairs(PKU_FILE, "harmless"), "task")[:100]
    fitted_on = select_part(load_labelled_pairs(PKU_FILE, "harmless"), "scorer")
    assert not {first_user_turn(p.prompt) for p in task} & {
        first_user_turn(p.prompt) for p in fitted_on
    }
    prompts = [p.prompt for p in task]
    safe = scorer.score(prompts, [p.responses[p.labels["harmless"]] for p in task])
    unsafe = scorer.score(prompts, [p.responses[1 - p.labels["harmless"]] for p in task])
    accuracy = float(np.mean(safe > unsafe))
    # chance is 0.5 with a standard error of 0.05 on 100 pairs; ask for three of them
    assert accuracy > 0.65, accuracy
