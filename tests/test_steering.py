"""Steering diagnostics and paired comparisons against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from mobench.metrics import hypervolume, mean_inner_product, paired_differences
from mobench.steering import (
    extreme_alpha_rows,
    gain_over_base,
    score_correlations,
    spearman,
    steering_diagnostics,
)

GRID = np.array([[i / 10, 1 - i / 10] for i in range(11)])


def _texts(n_prompts: int, n_alphas: int, changing: int) -> list[list[str]]:
    """``changing`` prompts whose answer depends on alpha, the rest the same for every alpha."""
    return [
        [f"p{p} a{a}" if p < changing else f"p{p}" for a in range(n_alphas)]
        for p in range(n_prompts)
    ]


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    x = np.array([0.0, 0.0, 0.1, 0.2, 0.2, 0.5, 0.9])  # ties, like a 3-objective grid column
    y = rng.normal(size=7)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, np.ones(7)) is None  # a flat front has no rank correlation


def test_last_bit_differences_of_identical_answers_are_ties_not_a_trend() -> None:
    """fp32 scores of the same answer differ in their last bits from batch to batch; ranked as
    they are, a flat front rising by 1e-7 per alpha would get Spearman +1."""
    score = 0.8125
    creeping = score * (1 + 1e-7 * np.arange(11))  # what BLAS noise on 11 copies can look like
    assert spearmanr(GRID[:, 0], creeping).statistic == pytest.approx(1.0)
    assert spearman(GRID[:, 0], creeping) is None
    cube = np.repeat(creeping[None, :, None], 6, axis=0).repeat(2, axis=2)
    diag = steering_diagnostics(cube, GRID, ("a", "b"), _texts(6, 11, 0), n_boot=50)
    assert diag["objectives"]["a"]["spearman"] is None and not diag["steers"]
    # a real difference, however small against the scores, is still ranked
    small = score + 1e-4 * np.arange(11)
    assert spearman(GRID[:, 0], small) == pytest.approx(1.0)


def test_a_front_that_follows_alpha_steers() -> None:
    rng = np.random.default_rng(1)
    n_prompts = 20
    # helpful rises with alpha_helpful, harmless with alpha_harmless; prompt offsets and a
    # little per-answer noise on top
    offsets = rng.normal(0, 0.3, size=(n_prompts, 1, 2))
    trend = np.stack([GRID[:, 0], GRID[:, 1]], axis=1)[None] * 2.0
    scores = offsets + trend + rng.normal(0, 0.05, size=(n_prompts, 11, 2))
    d = steering_diagnostics(
        scores, GRID, ["helpful", "harmless"], _texts(n_prompts, 11, 15), n_boot=200
    )
    points = scores.mean(axis=0)
    for k, name in enumerate(["helpful", "harmless"]):
        e = d["objectives"][name]
        assert e["spearman"] == pytest.approx(spearmanr(GRID[:, k], points[:, k]).statistic)
        assert e["spearman"] > 0.9 and e["spearman_ci"][0] <= e["spearman"] <= 1.0
        assert e["span"] == pytest.approx(points[:, k].max() - points[:, k].min())
        assert e["span_beyond_noise"] and e["span"] > e["noise"] > 0
    assert d["answers_changed"] == {
        "fraction": 0.75,
        "prompts": 15,
        "of": 20,
        "extreme_alphas": [10, 0],
    }
    flat = scores.reshape(-1, 2)
    r = np.corrcoef(flat[:, 0], flat[:, 1])[0, 1]
    assert d["score_correlation"]["helpful/harmless"] == pytest.approx(r)
    assert r < 0  # a real trade-off
    assert d["steers"] and d["warnings"] == []


def test_flat_inverted_and_noisy_fronts_are_flagged() -> None:
    rng = np.random.default_rng(2)
    n = 12
    flat = np.repeat(rng.normal(size=(n, 1, 2)), 11, axis=1)  # the base: one answer per prompt
    d = steering_diagnostics(flat, GRID, ["helpful", "harmless"], _texts(n, 11, 0), n_boot=100)
    assert d["objectives"]["helpful"]["spearman"] is None and not d["steers"]
    assert any("do not change with alpha" in w for w in d["warnings"])
    assert any("0 of 12 prompts" in w for w in d["warnings"])

    # helpful FALLS as alpha_helpful rises (the mini-preset symptom)
    # (both scores rise together: scorers that reward the same thing)
    inverted = np.stack([GRID[:, 1], GRID[:, 1]], axis=1)[None] + rng.normal(
        0, 0.01, size=(n, 11, 2)
    )
    d = steering_diagnostics(inverted, GRID, ["helpful", "harmless"], _texts(n, 11, n), n_boot=100)
    assert d["objectives"]["helpful"]["spearman"] == pytest.approx(-1.0)
    assert not d["steers"]
    assert any("helpful moves against its weight" in w for w in d["warnings"])
    assert d["score_correlation"]["helpful/harmless"] > 0.99
    assert any("correlate at 1.00" in w for w in d["warnings"])

    # a monotone trend far smaller than the prompt-to-prompt noise: right order, within noise
    noisy = (
        rng.normal(0, 1.0, size=(n, 1, 2))
        + 0.001 * np.stack([GRID[:, 0], GRID[:, 1]], axis=1)[None]
    )
    d = steering_diagnostics(noisy, GRID, ["helpful", "harmless"], _texts(n, 11, n), n_boot=100)
    assert d["objectives"]["helpful"]["spearman"] == pytest.approx(1.0)
    assert d["objectives"]["helpful"]["span_beyond_noise"] is False and not d["steers"]
    assert any("inside its 95% interval" in w for w in d["warnings"])


def test_extreme_rows_and_correlations_with_three_objectives() -> None:
    grid = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]])
    assert extreme_alpha_rows(grid) == [0, 1, 2]
    scores = np.arange(2 * 5 * 3, dtype=float).reshape(2, 5, 3)
    scores[..., 2] = 7.0
    corr = score_correlations(scores, ["a", "b", "c"])
    assert corr["a/b"] == pytest.approx(1.0) and corr["a/c"] is None and corr["b/c"] is None


def test_gain_over_base_is_the_difference_from_the_base_point() -> None:
    points = np.array([[1.0, 2.0], [4.0, 6.0]])
    gain = gain_over_base(points, np.array([1.0, 2.0]))
    assert gain["delta"] == [[0.0, 0.0], [3.0, 4.0]]
    assert gain["distance"] == [0.0, 5.0]


def test_paired_differences_cancel_the_shared_prompt_noise() -> None:
    rng = np.random.default_rng(3)
    b = rng.normal(0, 1.0, size=(30, 11, 2)) + 3.0  # large prompt-to-prompt spread
    a = b + 0.1  # A is better by exactly 0.1 on every answer
    ref = np.array([-2.0, -2.0])
    d = paired_differences(a, b, GRID, ref, n_boot=300)
    assert d["mip"]["diff"] == pytest.approx(0.1)
    # paired: every resample sees the same +0.1, so the interval collapses onto it
    assert d["mip"]["ci"] == pytest.approx([0.1, 0.1]) and d["mip"]["distinguishable"]
    expected_hv = hypervolume(a.mean(0), ref) - hypervolume(b.mean(0), ref)
    assert d["hv"]["diff"] == pytest.approx(expected_hv) and d["hv"]["distinguishable"]
    assert d["hv"]["ci"][0] > 0

    same = paired_differences(b, b, GRID, ref, n_boot=100)
    assert same["hv"]["diff"] == 0.0 and same["hv"]["ci"] == [0.0, 0.0]
    assert not same["hv"]["distinguishable"] and not same["mip"]["distinguishable"]

    # two unrelated runs with equal means in expectation: not distinguishable
    c = rng.normal(0, 1.0, size=(30, 11, 2)) + 3.0
    d = paired_differences(c, b, GRID, ref, n_boot=300)
    mip_c, mip_b = mean_inner_product(GRID, c.mean(0)), mean_inner_product(GRID, b.mean(0))
    assert d["mip"]["diff"] == pytest.approx(mip_c - mip_b)
    assert d["mip"]["ci"][0] < 0 < d["mip"]["ci"][1] and not d["mip"]["distinguishable"]

    with pytest.raises(ValueError, match="same prompts"):
        paired_differences(a[:5], b, GRID, ref)
