"""Pareto front, hypervolume (HV), mean inner product (MIP) and bootstrap intervals.

The math of METHODS §8 in one place. Every objective is "higher is better" (a task flips the
sign of a cost before it gets here), so the whole module works in the maximisation
convention; only the call into pymoo, which minimises, negates.

Shapes used throughout:

* ``points``: (N, K), one row per solution point, one column per objective.
* ``alphas``: (A, K), one preference vector per row, in the task's objective order.
* ``scores``: (P, A, K), one reward per prompt, per alpha, per objective. The solution point
  of alpha ``a`` is the prompt mean ``scores[:, a, :].mean(axis=0)`` (METHODS §8.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymoo.indicators.hv import HV

__all__ = [
    "bootstrap_intervals",
    "hypervolume",
    "mean_inner_product",
    "paired_differences",
    "pareto_front",
    "percentile_interval",
    "percentile_tails",
    "prompt_resamples",
    "reference_point",
    "resampled_points",
    "summarize",
]


# --------------------------------------------------------------------------------------------
# Input checks. Every public function funnels its arrays through these, so a wrong shape is
# reported once, clearly, instead of surfacing as a broadcasting error deep inside numpy.
# --------------------------------------------------------------------------------------------


def _as_matrix(name: str, array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a finite float (N, K) matrix with K >= 1, or raise ValueError."""
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(
            f"{name} must be a 2-D array of shape (N, K) with K >= 1 objectives; "
            f"got shape {matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _as_ref_point(ref_point: np.ndarray, points_shape: tuple[int, ...]) -> np.ndarray:
    """Return ``ref_point`` as a finite float (K,) vector matching ``points_shape``."""
    ref = np.asarray(ref_point, dtype=np.float64)
    if ref.ndim != 1 or ref.shape[0] != points_shape[-1]:
        raise ValueError(
            f"ref_point has shape {ref.shape} but points has shape {points_shape}: the "
            f"reference point needs one entry per objective, i.e. shape ({points_shape[-1]},)"
        )
    if not np.all(np.isfinite(ref)):
        raise ValueError("ref_point contains NaN or infinite values")
    return ref


def _as_alphas(alphas: np.ndarray, n_alphas: int, n_objectives: int, other: str) -> np.ndarray:
    """Return ``alphas`` as a finite (A, K) matrix that matches the A and K of ``other``."""
    alpha = np.asarray(alphas, dtype=np.float64)
    if alpha.shape != (n_alphas, n_objectives):
        raise ValueError(
            f"alphas has shape {alpha.shape} but {other}: need one preference vector per "
            f"alpha with one weight per objective, i.e. alphas of shape "
            f"({n_alphas}, {n_objectives})"
        )
    if not np.all(np.isfinite(alpha)):
        raise ValueError("alphas contains NaN or infinite values")
    return alpha


def _as_scores(scores: np.ndarray) -> np.ndarray:
    """Return ``scores`` as a finite float (P, A, K) array with P, A, K >= 1."""
    cube = np.asarray(scores, dtype=np.float64)
    if cube.ndim != 3 or min(cube.shape) == 0:
        raise ValueError(
            "scores must be a 3-D array of shape (prompts, alphas, objectives) with every "
            f"dimension >= 1; got shape {cube.shape}"
        )
    if not np.all(np.isfinite(cube)):
        raise ValueError("scores contains NaN or infinite values")
    return cube


# --------------------------------------------------------------------------------------------
# Point-set metrics
# --------------------------------------------------------------------------------------------


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of a maximisation problem.

    ``p`` dominates ``q`` iff ``p >= q`` in every objective and ``p > q`` in at least one
    (METHODS §8.2). Identical rows do not dominate each other, so all copies of a
    non-dominated point are kept.

    Args:
        points: (N, K) solution points, higher is better in every column.

    Returns:
        The indices of the non-dominated rows, sorted ascending (int64, shape (M,), M <= N).

    Raises:
        ValueError: if ``points`` is not a finite 2-D array.
    """
    pts = _as_matrix("points", points)
    # All pairs at once: N is the size of a preference grid (11 or 13 rows, 66 at most), so the
    # (N, N, K) comparison is tiny and far easier to check than a sorting algorithm.
    geq = np.all(pts[:, None, :] >= pts[None, :, :], axis=2)  # geq[i, j]: i >= j everywhere
    gt = np.any(pts[:, None, :] > pts[None, :, :], axis=2)  # gt[i, j]: i > j somewhere
    dominated = np.any(geq & gt, axis=0)  # column j is dominated by some row i
    return np.flatnonzero(~dominated)


def _hypervolume_unchecked(points: np.ndarray, ref_point: np.ndarray) -> float:
    """HV of validated (N, K) maximisation points w.r.t. a validated (K,) reference point."""
    # A point that does not beat the reference in every objective spans a box of zero (or, read
    # naively, negative) volume; drop it here rather than rely on the backend's convention.
    inside = points[np.all(points > ref_point, axis=1)]
    if inside.shape[0] == 0:
        return 0.0
    # pymoo minimises: negating both the points and z turns "p dominates z" into "-p < -z".
    # Dominated points need no pre-filter, the backend's union of boxes ignores them.
    return float(HV(ref_point=-ref_point)(-inside))


def hypervolume(points: np.ndarray, ref_point: np.ndarray) -> float:
    """Hypervolume of a maximisation point set with respect to a reference point.

    The Lebesgue measure of the union of the boxes ``[ref_point, p]`` (METHODS §8.3), computed
    with pymoo's ``HV`` indicator on negated points. Dominated points add nothing, so passing
    all points or only the Pareto front gives the same value. Points that do not strictly
    dominate ``ref_point`` (are not greater in every objective) are dropped first.

    Args:
        points: (N, K) solution points, higher is better in every column.
        ref_point: (K,) reference point ``z``. To compare methods, use one shared ``z``
            (see :func:`reference_point`) and report it next to the HV: HV depends strongly
            on it.

    Returns:
        The hypervolume; 0.0 when no point strictly dominates ``ref_point``.

    Raises:
        ValueError: if the shapes do not match or a value is not finite.
    """
    pts = _as_matrix("points", points)
    ref = _as_ref_point(ref_point, pts.shape)
    return _hypervolume_unchecked(pts, ref)


def mean_inner_product(alphas: np.ndarray, points: np.ndarray) -> float:
    """Mean inner product (MIP) of preference vectors with their solution points.

    ``MIP = (1/A) * sum_a alpha_a . p(alpha_a)`` on raw reward scales, no normalisation
    (METHODS §8.4). Unlike HV, every point counts, dominated or not: a method that ignores
    the requested trade-off is penalised even when its points are Pareto-optimal.

    Args:
        alphas: (A, K) preference vectors, row ``a`` belonging to ``points[a]``.
        points: (A, K) solution points, higher is better in every column.

    Returns:
        The MIP as a float.

    Raises:
        ValueError: if the shapes differ, there are no rows, or a value is not finite.
    """
    pts = _as_matrix("points", points)
    alpha = _as_alphas(alphas, pts.shape[0], pts.shape[1], f"points has shape {pts.shape}")
    if pts.shape[0] == 0:
        raise ValueError("mean_inner_product needs at least one (alpha, point) row; got none")
    return float(np.mean(np.sum(alpha * pts, axis=1)))


def reference_point(point_sets: Sequence[np.ndarray], margin: float = 0.01) -> np.ndarray:
    """One HV reference point shared by several methods' point sets.

    The component-wise minimum over every point of every set, moved down by ``margin`` times
    that component's range (max - min), so that every input point strictly dominates it
    (METHODS §8.3, §12.7). A component whose range is 0 moves down by
    ``margin * max(1, |min|)`` instead, so ``z`` still lies strictly below it.

    Args:
        point_sets: one (N_i, K) array per method; all must have the same K, and at least one
            point in total.
        margin: the fraction of the range to step below the minimum; must be > 0.

    Returns:
        The reference point, shape (K,).

    Raises:
        ValueError: if no points are given, the sets disagree on K, or ``margin <= 0``.
    """
    if not margin > 0 or not np.isfinite(margin):
        raise ValueError(
            f"margin must be a positive finite number; got {margin!r} "
            "(with 0 the extreme points sit on z and add no volume)"
        )
    sets = [_as_matrix(f"point_sets[{i}]", s) for i, s in enumerate(point_sets)]
    if not sets:
        raise ValueError("reference_point needs at least one point set; got none")
    n_objectives = {s.shape[1] for s in sets}
    if len(n_objectives) > 1:
        shapes = ", ".join(str(s.shape) for s in sets)
        raise ValueError(f"point sets disagree on the number of objectives: shapes {shapes}")
    pts = np.concatenate(sets, axis=0)
    if pts.shape[0] == 0:
        raise ValueError("reference_point needs at least one point; every point set is empty")
    low = pts.min(axis=0)
    span = pts.max(axis=0) - low
    step = np.where(span > 0, span, np.maximum(1.0, np.abs(low)))
    z = low - margin * step
    # At large magnitudes a tiny step can round back onto the minimum; force strictness so
    # the promise "every point dominates z" holds exactly.
    return np.minimum(z, np.nextafter(low, -np.inf))


# --------------------------------------------------------------------------------------------
# Prompt-level uncertainty and the metrics.json record
# --------------------------------------------------------------------------------------------


def prompt_resamples(n_prompts: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_prompts)`` draw counts: resample ``b`` draws prompt ``p`` ``counts[b, p]``
    times. Multinomial counts have exactly the distribution of P draws with replacement; one
    count matrix applied to several runs that share their prompts is a paired bootstrap."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot)


def resampled_points(cube: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The per-alpha mean points ``(B, A, K)`` of each resample of the prompts of ``cube``
    ``(P, A, K)`` (a ``(B, P) @ (P, A*K)`` product: no ``(B, P, A, K)`` array)."""
    n_prompts, n_alphas, n_objectives = cube.shape
    flat = cube.reshape(n_prompts, n_alphas * n_objectives)
    return (counts @ flat / n_prompts).reshape(len(counts), n_alphas, n_objectives)


def percentile_tails(level: float = 0.95) -> list[float]:
    """The two percentiles (in %) that bound the central ``level`` of a distribution."""
    return [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0]


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` percentile interval ``[lo, hi]`` of ``values`` along axis 0."""
    lo, hi = np.percentile(values, percentile_tails(level))
    return [float(lo), float(hi)]


def _resampled_hv_mip(
    boot_points: np.ndarray, alpha: np.ndarray, ref: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """HV and MIP of every resample's points ``(B, A, K)``: two ``(B,)`` arrays."""
    mip = np.einsum("bak,ak->ba", boot_points, alpha).mean(axis=1)
    # pymoo per resample costs ~15 µs for a grid-sized front, so a loop is fast enough
    # (1000 resamples well under a second) and keeps a single HV implementation.
    hv = np.array([_hypervolume_unchecked(p, ref) for p in boot_points])
    return hv, mip


def bootstrap_intervals(
    scores: np.ndarray,
    alphas: np.ndarray,
    ref_point: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap intervals over prompts for the solution points, HV and MIP.

    Each resample draws P prompts with replacement. The same draw is used for every alpha,
    because the answers for all alphas share their prompt and so are correlated; resampling
    alphas independently would understate the spread of HV and MIP. The fixed ``ref_point``
    is used for every resample; a resampled point that no longer dominates it adds no volume.

    Args:
        scores: (P, A, K) rewards per prompt, alpha and objective.
        alphas: (A, K) preference vectors.
        ref_point: (K,) HV reference point.
        n_boot: number of resamples (>= 1).
        seed: seed of the numpy generator; equal inputs and seed give equal intervals.
        level: central coverage of each interval, in (0, 1).

    Returns:
        ``{"hv": [lo, hi], "mip": [lo, hi], "points": nested list (A, K, 2)}`` with the
        ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles, as plain Python floats.

    Raises:
        ValueError: on mismatched shapes, non-finite values or an invalid ``n_boot``/``level``.
    """
    cube = _as_scores(scores)
    n_prompts, n_alphas, n_objectives = cube.shape
    alpha = _as_alphas(alphas, n_alphas, n_objectives, f"scores has shape {cube.shape}")
    ref = _as_ref_point(ref_point, cube.shape)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1; got {level!r}")

    boot_points = resampled_points(cube, prompt_resamples(n_prompts, n_boot, seed))

    boot_hv, boot_mip = _resampled_hv_mip(boot_points, alpha, ref)
    # percentile returns (2, A, K); the record wants [lo, hi] innermost.
    point_bounds = np.moveaxis(np.percentile(boot_points, percentile_tails(level), axis=0), 0, -1)
    return {
        "hv": percentile_interval(boot_hv, level),
        "mip": percentile_interval(boot_mip, level),
        "points": point_bounds.tolist(),
    }


def paired_differences(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    alphas: np.ndarray,
    ref_point: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """HV and MIP of run A minus run B, with a paired bootstrap interval over prompts.

    Both runs answered the same prompts (row ``p`` of both cubes is the same prompt), so each
    resample draws the prompts once and applies the draw to both runs: the prompt-to-prompt
    variation they share cancels in the difference, which an unpaired comparison of two
    separate intervals would count twice. A difference is *distinguishable* from zero when its
    interval excludes 0; only then does "A beats B" hold.

    Args:
        scores_a / scores_b: (P, A, K) rewards of the two runs, prompts in the same order.
        alphas: (A, K) the grid both runs used.
        ref_point: (K,) the HV reference point used for both.

    Returns:
        ``{"hv": {"diff", "ci", "distinguishable"}, "mip": {...}, "n_prompts": P}``; ``ci`` is
        None (and nothing is distinguishable) with fewer than two prompts.
    """
    a, b = _as_scores(scores_a), _as_scores(scores_b)
    if a.shape != b.shape:
        raise ValueError(
            f"paired runs need scores of one shape (same prompts, grid and objectives); got "
            f"{a.shape} and {b.shape}"
        )
    n_prompts, n_alphas, n_objectives = a.shape
    alpha = _as_alphas(alphas, n_alphas, n_objectives, f"scores have shape {a.shape}")
    ref = _as_ref_point(ref_point, a.shape)
    pa, pb = a.mean(axis=0), b.mean(axis=0)
    diffs = {
        "hv": _hypervolume_unchecked(pa, ref) - _hypervolume_unchecked(pb, ref),
        "mip": mean_inner_product(alpha, pa) - mean_inner_product(alpha, pb),
    }
    out: dict[str, Any] = {"n_prompts": int(n_prompts)}
    if n_prompts < 2:
        for name, diff in diffs.items():
            out[name] = {"diff": float(diff), "ci": None, "distinguishable": False}
        return out
    counts = prompt_resamples(n_prompts, n_boot, seed)
    hv_a, mip_a = _resampled_hv_mip(resampled_points(a, counts), alpha, ref)
    hv_b, mip_b = _resampled_hv_mip(resampled_points(b, counts), alpha, ref)
    boot = {"hv": hv_a - hv_b, "mip": mip_a - mip_b}
    for name, diff in diffs.items():
        lo, hi = percentile_interval(boot[name], level)
        out[name] = {"diff": float(diff), "ci": [lo, hi], "distinguishable": lo > 0 or hi < 0}
    return out


def summarize(
    scores: np.ndarray,
    alphas: np.ndarray,
    ref_point: np.ndarray,
    objectives: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics of one run, as written to its ``metrics.json``.

    Args:
        scores: (P, A, K) rewards per prompt, alpha and objective.
        alphas: (A, K) preference vectors, in the order of ``objectives``.
        ref_point: (K,) HV reference point (declared per task and preset, METHODS §12.7).
        objectives: the K objective names, in column order.
        n_boot: bootstrap resamples for the intervals.
        seed: bootstrap seed.

    Returns:
        A JSON-serialisable dict of plain Python values::

            {"objectives": [K names], "alphas": A x K, "points": A x K per-alpha means,
             "pareto": indices of the non-dominated points, "hv": float,
             "hv_ref_point": [K floats], "mip": float, "n_prompts": P,
             "ci": bootstrap_intervals(...) or None when P < 2}

    Raises:
        ValueError: on mismatched shapes or names, or non-finite values.
    """
    cube = _as_scores(scores)
    n_prompts, n_alphas, n_objectives = cube.shape
    alpha = _as_alphas(alphas, n_alphas, n_objectives, f"scores has shape {cube.shape}")
    ref = _as_ref_point(ref_point, cube.shape)
    names = [str(name) for name in objectives]
    if len(names) != n_objectives:
        raise ValueError(
            f"objectives has {len(names)} names {names} but scores has shape {cube.shape} "
            f"with {n_objectives} objectives"
        )

    points = cube.mean(axis=0)
    # One prompt gives no spread to resample from; null says "not measured", not "zero".
    ci = bootstrap_intervals(cube, alpha, ref, n_boot=n_boot, seed=seed) if n_prompts >= 2 else None
    return {
        "objectives": names,
        "alphas": alpha.tolist(),
        "points": points.tolist(),
        "pareto": [int(i) for i in pareto_front(points)],
        "hv": _hypervolume_unchecked(points, ref),
        "hv_ref_point": ref.tolist(),
        "mip": mean_inner_product(alpha, points),
        "n_prompts": int(n_prompts),
        "ci": ci,
    }
