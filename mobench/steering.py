"""Does the front move with alpha? Steering diagnostics for one run (written to metrics.json).

HV and MIP summarise a front, but they say nothing about whether it is a front at all: the same
answer for every alpha, or scorers that reward the same thing, still give an HV. These
diagnostics say whether the points move the way the preference vector asks, and by more than
the noise over prompts:

* per objective i, the Spearman rank correlation between alpha_i and the per-alpha mean score of
  objective i over the grid, with a bootstrap interval over prompts;
* the span of each objective's per-alpha means (max - min) next to the mean width of their 95%
  intervals (the noise a single point carries);
* the fraction of prompts whose answer differs between the extreme alphas (for each objective,
  the grid row that weighs it most);
* the correlation between the objectives' scores on the run's own answers: scorers that reward
  the same thing cannot show a trade-off;
* optionally, the gain of each per-alpha point over the unguided ``base`` point.

Shapes as in :mod:`mobench.metrics`: ``scores`` (P, A, K), ``alphas`` (A, K), ``texts`` P lists of
A answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from mobench.metrics import percentile_tails, prompt_resamples, resampled_points

#: a front steers an objective when its Spearman reaches this (the issue's "say, 0.5")
MIN_SPEARMAN = 0.5
#: above this correlation between two objectives' scores, a trade-off can hardly show
MAX_SCORE_CORRELATION = 0.5
#: a front whose answers change on fewer prompts than this fraction barely moves
MIN_CHANGED_FRACTION = 0.5


#: per-alpha means closer than this (relative to the scores' scale) are ties: scores computed in
#: fp32 differ in their last bits for identical answers (batching, BLAS kernels), and ranking
#: that noise gave a flat base front a "Spearman" of +0.52
TIE_TOLERANCE = 1e-6


def _ranks_with_ties(y: np.ndarray) -> np.ndarray:
    """Average ranks of each row of ``y`` (B, A), values within :data:`TIE_TOLERANCE` of the
    row's scale of their sorted neighbour counted as one tied group."""
    out = np.empty(y.shape, dtype=float)
    for b, row in enumerate(y):
        order = np.argsort(row, kind="stable")
        values = row[order]
        tolerance = TIE_TOLERANCE * max(1.0, float(np.abs(values).max()))
        group = np.concatenate([[0], np.cumsum(np.diff(values) > tolerance)])
        ranks = np.arange(1, len(row) + 1, dtype=float)
        mean_rank = np.bincount(group, ranks) / np.bincount(group)
        out[b, order] = mean_rank[group]
    return out


def _rank_correlation(x_ranks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman of a fixed ranked vector ``x_ranks`` (A,) with each row of ``y`` (B, A): the
    Pearson correlation of the ranks (average ranks for ties, :func:`_ranks_with_ties`). NaN
    where a row is constant."""
    y_ranks = _ranks_with_ties(np.atleast_2d(y))
    xc = x_ranks - x_ranks.mean()
    yc = y_ranks - y_ranks.mean(axis=-1, keepdims=True)
    denom = np.sqrt((xc**2).sum() * (yc**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (yc @ xc) / np.where(denom > 0, denom, 1.0), np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation of two (A,) vectors; None when either is constant."""
    value = float(_rank_correlation(rankdata(np.asarray(x, float)), np.asarray(y, float)[None])[0])
    return None if np.isnan(value) else value


def extreme_alpha_rows(alphas: np.ndarray) -> list[int]:
    """For each objective, the first grid row that weighs it most (the simplex vertices when
    the grid has them), without repeats."""
    rows: list[int] = []
    for k in range(alphas.shape[1]):
        row = int(np.argmax(alphas[:, k]))
        if row not in rows:
            rows.append(row)
    return rows


def score_correlations(scores: np.ndarray, objectives: Sequence[str]) -> dict[str, float | None]:
    """Pearson correlation between every pair of objectives' scores over all (prompt, alpha)
    answers of the run, keyed ``"a/b"``; None for a constant column."""
    flat = scores.reshape(-1, scores.shape[-1])
    out: dict[str, float | None] = {}
    for i in range(len(objectives)):
        for j in range(i + 1, len(objectives)):
            x, y = flat[:, i], flat[:, j]
            ok = x.std() > 0 and y.std() > 0
            out[f"{objectives[i]}/{objectives[j]}"] = float(np.corrcoef(x, y)[0, 1]) if ok else None
    return out


def gain_over_base(points: np.ndarray, base_point: np.ndarray) -> dict[str, Any]:
    """How far each per-alpha point (A, K) lies from the unguided base point (K,): the signed
    difference per objective and the Euclidean distance."""
    delta = np.asarray(points, float) - np.asarray(base_point, float)[None, :]
    return {
        "base_point": [float(v) for v in base_point],
        "delta": delta.tolist(),
        "distance": [float(v) for v in np.linalg.norm(delta, axis=1)],
    }


def steering_diagnostics(
    scores: np.ndarray,
    alphas: np.ndarray,
    objectives: Sequence[str],
    texts: Sequence[Sequence[str]],
    *,
    expected_to_steer: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The steering record of one run (see the module docstring).

    Args:
        scores: (P, A, K) rewards per prompt, alpha and objective.
        alphas: (A, K) the grid, in the order of ``objectives``.
        objectives: K names.
        texts: per prompt, the A answers (same order as ``scores``).
        expected_to_steer: False for a reference row (``base``): its flat front is reported,
            but not as a warning.

    Returns:
        ``{"objectives": {name: {"spearman", "spearman_ci", "span", "noise", "span_beyond_noise"}},
        "answers_changed": {"fraction", "prompts", "of", "extreme_alphas"},
        "score_correlation": {"a/b": r}, "steers": bool, "warnings": [str]}``.
    """
    cube = np.asarray(scores, dtype=np.float64)
    grid = np.asarray(alphas, dtype=np.float64)
    n_prompts, n_alphas, n_objectives = cube.shape
    if grid.shape != (n_alphas, n_objectives) or len(objectives) != n_objectives:
        raise ValueError(
            f"scores {cube.shape}, alphas {grid.shape} and {len(objectives)} objective names "
            "disagree"
        )
    if len(texts) != n_prompts or any(len(row) != n_alphas for row in texts):
        raise ValueError(f"texts must hold {n_alphas} answers for each of {n_prompts} prompts")
    points = cube.mean(axis=0)
    boot = None
    if n_prompts >= 2:
        boot = resampled_points(cube, prompt_resamples(n_prompts, n_boot, seed))
    tails = percentile_tails(level)

    per_objective: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(objectives):
        alpha_ranks = rankdata(grid[:, k])
        rho = spearman(grid[:, k], points[:, k])
        span = float(points[:, k].max() - points[:, k].min())
        entry: dict[str, Any] = {"spearman": rho, "spearman_ci": None, "span": span}
        entry["noise"] = entry["span_beyond_noise"] = None
        if boot is not None:
            rhos = _rank_correlation(alpha_ranks, boot[:, :, k])
            if np.isfinite(rhos).any():
                lo, hi = np.nanpercentile(rhos, tails)
                entry["spearman_ci"] = [float(lo), float(hi)]
            lo_a, hi_a = np.percentile(boot[:, :, k], tails, axis=0)
            noise = float(np.mean(hi_a - lo_a))  # the mean width of one point's interval
            entry["noise"] = noise
            entry["span_beyond_noise"] = span > noise
        per_objective[name] = entry

    extremes = extreme_alpha_rows(grid)
    changed = sum(1 for row in texts if len({row[a] for a in extremes}) > 1)
    fraction = changed / n_prompts
    correlations = score_correlations(cube, objectives)

    warnings: list[str] = []
    for name, e in per_objective.items():
        rho = e["spearman"]
        if rho is None:
            warnings.append(f"{name}: the per-alpha means do not change with alpha")
        elif rho < MIN_SPEARMAN:
            how = "moves against its weight" if rho < 0 else "does not follow its weight"
            warnings.append(f"{name} {how} (Spearman {rho:+.2f}, below {MIN_SPEARMAN})")
        if e["span_beyond_noise"] is False and rho is not None:  # a flat front said so above
            warnings.append(
                f"{name}: the front's span {e['span']:.3g} lies inside its 95% interval width "
                f"{e['noise']:.3g}"
            )
    if fraction < MIN_CHANGED_FRACTION:
        warnings.append(
            f"only {changed} of {n_prompts} prompts get a different answer at the extreme alphas"
        )
    for pair, r in correlations.items():
        if r is not None and r > MAX_SCORE_CORRELATION:
            warnings.append(
                f"the {pair} scores correlate at {r:.2f} on these answers: the scorers reward "
                "much the same thing, so a trade-off can hardly show"
            )
    steers = all(
        e["spearman"] is not None
        and e["spearman"] >= MIN_SPEARMAN
        and e["span_beyond_noise"] is not False
        for e in per_objective.values()
    )
    return {
        "objectives": per_objective,
        "answers_changed": {
            "fraction": fraction,
            "prompts": changed,
            "of": n_prompts,
            "extreme_alphas": extremes,
        },
        "score_correlation": correlations,
        "steers": steers,
        "expected_to_steer": expected_to_steer,
        "warnings": warnings,
        "interval": f"{level:.0%} percentile bootstrap over prompts, {n_boot} resamples",
    }
