"""Guidance steers, for every method: a test that can fail.

A synthetic preference task that a tiny random model learns in seconds: objective ``yes``
prefers answers made of the word "Yes", objective ``no`` answers made of "No". Every method that
is meant to steer is trained on it through the real pipeline, decodes the whole alpha grid, and
must show that the score of objective i rises with alpha_i (Spearman >= 0.8 over the grid, from
the run's own steering diagnostics) and that the extreme alphas give different answers.

The same check must FAIL when the objective order is swapped between training and decoding (the
bug of METHODS §10.1 that silently mirrors the front): the test swaps the alpha columns on the
way into the decoding loop and asserts that the steering check then fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mobench import decoding, pipeline
from mobench.config import GenerationConfig, Preset, RunSpec
from mobench.data import Conversation, PreferencePair, Splits, seeded_split
from mobench.interfaces import Scorer, Task
from mobench.registry import _PRESETS, METHODS, TASKS, get_method, register_preset
from mobench.resolve import resolve_spec

WORDS = {"yes": "Yes", "no": "No"}
MIN_SPEARMAN = 0.8


def _answer(word: str, n: int) -> str:
    return " ".join([word] * n)


class WordScorer(Scorer):
    """The share of this objective's word among the answer's "Yes"/"No" words; 0.5 for an
    answer that takes neither side (exact and cheap: the test checks guidance, not a reward
    model)."""

    def __init__(self, objective: str) -> None:
        self.objective = objective
        self.word = WORDS[objective]
        self.fingerprint = f"side-share:{self.word}"

    def score(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        out = []
        for text in responses:
            words = [w for w in (w.strip(".,!?") for w in text.split()) if w in ("Yes", "No")]
            out.append(sum(w == self.word for w in words) / len(words) if words else 0.5)
        return np.asarray(out, dtype=float)


class YesNoTask(Task):
    """Two objectives that want opposite answers: a trade-off a tiny model can learn."""

    name = "yesno_synthetic"
    objectives = ("yes", "no")

    def load(self, spec: RunSpec) -> Splits:
        rows = []
        for i in range(60):
            prompt = [{"role": "user", "content": f"Question {i}: answer with Yes or No."}]
            yes, no = _answer("Yes", 3 + i % 3), _answer("No", 3 + i % 3)
            flip = i % 2  # the preferred answer sits at either index
            responses = (no, yes) if flip else (yes, no)
            labels = {"yes": flip, "no": 1 - flip}
            rows.append(PreferencePair(f"q{i}", prompt, responses, labels))
        return seeded_split(rows, spec.split_sizes, spec.split_seed)

    def scorers(self, spec: RunSpec, device: str) -> dict[str, Scorer]:
        return {o: WordScorer(o) for o in self.objectives}

    def scorer_identity(self, spec: str, objective: str) -> str:
        return WordScorer(objective).fingerprint  # no weights: the rule is the identity


#: per method: what makes a tiny random model learn this task in a few dozen updates (the
#: official defaults are sized for 7B models and thousands of pairs)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DPO_POLICIES = {"dpo_beta": 0.5, "lora_r": 8, "lora_alpha": 16, "target_modules": ALL_LINEAR}
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "genarm": {"beta_r_default": 0.5, "lora_dropout": 0.0, "target_modules": ALL_LINEAR},
    "parm": {"beta_r_default": 0.5, "lora_dropout": 0.0, "target_modules": ALL_LINEAR},
    "uniarm": {
        "beta_r_default": 0.5,
        "lora_dropout": 0.0,
        "target_modules": ALL_LINEAR,
        "objective_descriptions": {"yes": "Yes", "no": "No"},
    },
    "mod_w2s": DPO_POLICIES,
    # the same policies (one guide family, so the same settings): decoded by MOD and RS
    "mod": DPO_POLICIES,
    "rs": DPO_POLICIES,
}


def steering_methods() -> list[str]:
    """The methods trained to follow alpha. ``base`` is not meant to; ``prompt`` is meant to,
    but only a model that can read its instruction could (a tiny random one cannot), so its
    statement reaching the base per alpha is tested apart (tests/test_paper_baselines.py)."""
    return [name for name in METHODS.names() if get_method(name).steers and get_method(name).trains]


@pytest.fixture(scope="module")
def flat_base_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random tiny Llama whose next-token distribution is nearly flat: its (tied) embeddings
    are scaled down 10x. A random model at the usual scale puts most of its mass on one token
    (here "\n") whatever the prompt, which hides any guide behind a fixed preference of the
    base; a frozen real LM has no such single favourite."""
    import torch

    from tests.conftest import build_llama, build_tokenizer

    tok = build_tokenizer()
    model = build_llama(tok, hidden=64, layers=2, seed=0)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(0.1)
    path = tmp_path_factory.mktemp("flat-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def yesno_preset(flat_base_dir: str) -> Iterator[Preset]:
    TASKS.register(YesNoTask.name)(YesNoTask)
    preset = register_preset(
        Preset(
            name="unit",
            task=YesNoTask.name,
            description="steering test: tiny random model, Yes/No preference task",
            base_model=flat_base_dir,
            data="synthetic",
            split_sizes=(48, 4, 4),
            split_seed=0,
            generation=GenerationConfig(max_new_tokens=6),
            training={
                "max_steps": 40,
                "per_device_batch_size": 8,
                "gradient_accumulation_steps": 1,
                "learning_rate": 1e-2,
                "warmup_steps": 0,
                "max_length": 64,
                "max_prompt_length": 48,
            },
            scorers={"yes": "word:Yes", "no": "word:No"},
            hv_ref_point=(0.0, 0.0),
            dtype="float32",
            batch_size=22,
        )
    )
    yield preset
    _PRESETS.pop((YesNoTask.name, "unit"), None)
    TASKS._entries.pop(YesNoTask.name, None)


def check_steers(metrics: dict[str, Any]) -> None:
    """The claim under test: every objective's score rises with its weight, and the extreme
    alphas give different answers."""
    steering = metrics["steering"]
    for name, e in steering["objectives"].items():
        assert e["spearman"] is not None and e["spearman"] >= MIN_SPEARMAN, (
            f"{metrics['method']}: {name} does not rise with its weight: {e}"
        )
    changed = steering["answers_changed"]
    assert changed["prompts"] == changed["of"], f"{metrics['method']}: {changed}"
    points = np.asarray(metrics["points"])
    extremes = steering["answers_changed"]["extreme_alphas"]  # (1, 0) then (0, 1)
    assert points[extremes[0], 0] - points[extremes[1], 0] > 0.5  # clearly different answers
    assert points[extremes[1], 1] - points[extremes[0], 1] > 0.5


def _run(method: str, out: Path) -> dict[str, Any]:
    spec = resolve_spec(
        YesNoTask.name, method, "unit", device="cpu", overrides={"method": METHOD_SETTINGS[method]}
    )
    pipeline.execute_run(spec, out)
    return dict(json.loads((out / "metrics.json").read_text()))


def test_every_steering_method_has_settings_here() -> None:
    missing = sorted(set(steering_methods()) - set(METHOD_SETTINGS))
    assert not missing, f"add the new method(s) {missing} to METHOD_SETTINGS and this test"


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_guidance_steers_and_a_swapped_objective_order_is_caught(
    method: str, yesno_preset: Preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_steers(_run(method, tmp_path / "right"))

    # The bug: the alpha of objective "yes" reaches the guide of objective "no" and vice versa.
    right_order = decoding.guided_generate

    def swapped(base: Any, guide: Any, prompt_ids: Any, alphas: Any, *a: Any, **k: Any) -> Any:
        return right_order(base, guide, prompt_ids, alphas.flip(-1), *a, **k)

    monkeypatch.setattr(decoding, "guided_generate", swapped)
    mirrored = _run(method, tmp_path / "swapped")  # the trained guide comes from the cache
    with pytest.raises(AssertionError, match="does not rise with its weight"):
        check_steers(mirrored)
    for e in mirrored["steering"]["objectives"].values():
        assert e["spearman"] <= -MIN_SPEARMAN  # the front is mirrored, not merely flat
