"""The safety mini preset's choices that make its fronts steer (issue 12), and the per-method
training overrides (``Preset.method_training``) they rely on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from mobench.methods.preference_arm import PreferenceARMConfig

from mobench.config import ConfigError
from mobench.registry import get_preset, register_preset
from mobench.resolve import resolve_spec


def test_safety_mini_keeps_pkus_human_harmless_label() -> None:
    # relabel "all" replaced PKU's human safer labels with a 0.61-accurate scorer's guesses;
    # "missing" relabels only what the file lacks (helpfulness)
    assert get_preset("safety", "mini").task_options["relabel"] == "missing"


@pytest.mark.parametrize("method", ["genarm", "parm", "uniarm"])
def test_safety_mini_trains_both_arms_with_one_beta_r(method: str, tmp_path: Any) -> None:
    spec = resolve_spec("safety", method, "mini", data_dir=tmp_path, identify=False)
    beta = spec.method_config["beta_r"]
    assert set(beta) == {"helpful", "harmless"} and beta["helpful"] == beta["harmless"]


@pytest.mark.parametrize("method", ["parm", "uniarm"])
def test_safety_mini_keeps_parms_beta_r(method: str, tmp_path: Any) -> None:
    # GenARM's 0.1 saturated PARM's Bradley-Terry loss (log-prob margins of 50-90 nats) and its
    # harmless front stayed inside its noise; PARM's official 0.01 steered
    spec = resolve_spec("safety", method, "mini", data_dir=tmp_path, identify=False)
    default = PreferenceARMConfig().beta_r
    assert spec.method_config["beta_r"] == default == {"helpful": 0.01, "harmless": 0.01}
    genarm = resolve_spec("safety", "genarm", "mini", data_dir=tmp_path, identify=False)
    assert genarm.method_config["beta_r"] == {"helpful": 0.1, "harmless": 0.1}


@pytest.fixture
def restore_unit_preset(unit_preset: Any) -> Any:
    """The unit preset, registered again as it was after the test (other tests' fixtures may
    hold it for the whole session)."""
    yield unit_preset
    register_preset(unit_preset)


def test_method_training_applies_to_its_method_only(restore_unit_preset: Any) -> None:
    unit_preset = restore_unit_preset
    preset = dataclasses.replace(
        unit_preset, method_training={"genarm": {"beta_r": {"helpful": 0.3, "harmless": 0.3}}}
    )
    register_preset(preset)
    genarm = resolve_spec("safety", "genarm", "unit")
    parm = resolve_spec("safety", "parm", "unit")
    assert genarm.method_config["beta_r"] == {"helpful": 0.3, "harmless": 0.3}
    assert parm.method_config["beta_r"] != genarm.method_config["beta_r"]
    # the shared sizes still apply under the per-method overrides
    assert genarm.method_config["max_steps"] == unit_preset.training["max_steps"]


def test_method_training_with_an_unknown_method_is_a_config_error(
    restore_unit_preset: Any,
) -> None:
    unit_preset = restore_unit_preset
    register_preset(dataclasses.replace(unit_preset, method_training={"genram": {"seed": 1}}))
    with pytest.raises(ConfigError, match=r"unknown method.*genram"):
        resolve_spec("safety", "genarm", "unit")


def test_method_training_field_unknown_to_the_method_is_a_config_error(
    restore_unit_preset: Any,
) -> None:
    unit_preset = restore_unit_preset
    register_preset(dataclasses.replace(unit_preset, method_training={"mod_w2s": {"beta_r": 1}}))
    with pytest.raises(ConfigError, match="unknown DPOPolicyConfig field"):
        resolve_spec("safety", "mod_w2s", "unit")


def test_guide_cache_key_changes_with_the_training_labels(unit_preset: Any) -> None:
    # relabel=all and relabel=missing read the same rows; a guide trained on one set of labels
    # must not be reused for the other
    from mobench.tasks.formats import swap_pair

    from mobench import pipeline
    from mobench.registry import get_task

    spec = resolve_spec("safety", "genarm", "unit")
    splits = get_task("safety")().load(spec)
    first = splits.train[0]
    flipped = dataclasses.replace(first, labels={k: 1 - v for k, v in first.labels.items()})
    relabelled = dataclasses.replace(splits, train=[flipped, *splits.train[1:]])
    key = pipeline.guide_cache_key(spec, splits)
    assert pipeline.guide_cache_key(spec, relabelled) != key
    # swapping the responses together with the labels is another training set too
    swapped = dataclasses.replace(splits, train=[swap_pair(first), *splits.train[1:]])
    assert pipeline.guide_cache_key(spec, swapped) != key
    assert pipeline.guide_cache_key(spec, get_task("safety")().load(spec)) == key


def test_mini_presets_share_one_harmless_probe_fitted_on_the_scorer_half(tmp_path: Any) -> None:
    # the trained (LoRA) harmless scorer was at chance on PKU's safer label; both mini presets
    # score harmlessness with one probe on PKU's human labels, never on the tasks' half
    from mobench.tasks.probe_scorer import parse_probe_recipe
    from mobench.tasks.safety import MINI_HARMLESS_SCORER

    from mobench.data import resolve_data_dir_refs

    for task in ("safety", "helpful"):
        assert get_preset(task, "mini").scorers["harmless"] == MINI_HARMLESS_SCORER
    kind, _, source = resolve_data_dir_refs(MINI_HARMLESS_SCORER, tmp_path).partition(":")
    recipe = parse_probe_recipe(source, "harmless")
    assert kind == "probe" and recipe.part == "scorer"
    assert [Path(f).name for f in recipe.data] == ["pku_saferlhf_test_safety_pairs_5135.jsonl.gz"]


def test_safety_mini_trains_one_set_of_dpo_policies_for_rs_mod_and_mod_w2s(tmp_path: Any) -> None:
    # the three methods share the trained policies through the guide cache only when their
    # resolved training settings agree; a per-method override on one of them would train twice
    configs = [
        resolve_spec("safety", m, "mini", data_dir=tmp_path, identify=False).method_config
        for m in ("rs", "mod", "mod_w2s")
    ]
    assert configs[0] == configs[1] == configs[2]
    # and the mini override reaches them (MOD's own r 64 / lora_alpha 1 is a 1/64 scale)
    assert configs[0]["lora_alpha"] / configs[0]["lora_r"] >= 1
