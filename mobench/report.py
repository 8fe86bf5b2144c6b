"""The HTML report: leaderboard, Pareto fronts, timing and samples, built from run directories.

``mobench report`` reads run directories only (spec.json, env.json, split.json, metrics.json,
timing.json, generations.jsonl, scores.jsonl, status.json) and never re-runs or re-scores
anything. It writes a self-contained ``index.html`` (inline CSS and SVG, a few lines of inline
JavaScript, no network fetch, opens from disk) and ``data.json`` with every number behind it.

Comparability (METHODS §8.3, §12.7):

* runs are grouped into one table per (task, preset);
* every HV of a table is recomputed with ONE reference point, :func:`metrics.reference_point`
  over the per-alpha points of all the table's rows; each run's own-reference HV (its
  metrics.json) is shown beside it for transparency;
* bootstrap intervals over prompts are recomputed from scores.jsonl with that common point;
* a table whose rows were scored by different scorers (fingerprints) is flagged as not
  comparable, and no best value is marked in it.

Only complete runs are ranked; a run that failed, stopped early, or whose metrics.json does not
match its scores.jsonl is listed with the reason.

Generated text is untrusted: the page is rendered by jinja2 with autoescaping always on, no data
is ever placed inside a ``<script>``, and a Content-Security-Policy allows only the report's own
script (by hash), so even a mistake in escaping could not run injected code.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobench import __version__
from mobench.config import RunSpec
from mobench.metrics import (
    bootstrap_intervals,
    hypervolume,
    mean_inner_product,
    paired_differences,
    pareto_front,
    reference_point,
)
from mobench.report_plots import (
    MARKERS,
    SeriesInput,
    bar_chart,
    method_colours,
    scatter_plot,
)
from mobench.runs import RunDirectory, RunDirError, read_json, write_json_atomic
from mobench.steering import gain_over_base, steering_diagnostics

DEFAULT_RUNS_ROOT = Path("runs")
DEFAULT_OUT = Path("reports/latest")
DEFAULT_BENCH_DIR = Path("benchmarks/results")
DEFAULT_SAMPLE_PROMPTS = 25
RANKED_STATE = "complete"
BOOTSTRAP_SEED = 0  # the seed metrics.summarize uses, so a one-run table reproduces its CIs


# ---------------------------------------------------------------------------- reading runs


@dataclass
class LoadedRun:
    """One run directory as read from disk, plus why it is not ranked (if it is not)."""

    index: int  # position in the report; anchors are ``run-<index>``
    path: Path
    spec_json: dict[str, Any]
    spec: RunSpec | None
    env: dict[str, Any]
    status: dict[str, Any]
    timing: dict[str, Any]
    metrics: dict[str, Any] | None
    generations: dict[tuple[str, int], dict[str, Any]]
    scores: dict[tuple[str, int, str], dict[str, Any]]
    problem: str | None = None  # None: ranked
    cube: np.ndarray | None = None  # (P, A, K) scores of the test prompts, ranked runs only
    prompt_ids: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return str(self.status.get("state", "unknown"))

    @property
    def method(self) -> str:
        return str(self.spec_json.get("method", "?"))

    @property
    def task(self) -> str:
        return str(self.spec_json.get("task", "?"))

    @property
    def preset(self) -> str:
        return str(self.spec_json.get("preset", "?"))

    @property
    def spec_hash(self) -> str:
        if self.spec is not None:
            return self.spec.hash8
        return self.path.name.rsplit("__", 1)[-1]


def discover_run_dirs(run_dirs: Sequence[Path], runs_root: Path | None = None) -> list[Path]:
    """The run directories a report covers: the given ones, else every one under ``runs_root``.

    Raises:
        RunDirError: a given directory has no spec.json, or no run directory was found.
    """
    if run_dirs:
        for path in run_dirs:
            if not (Path(path) / "spec.json").is_file():
                raise RunDirError(
                    f"{path} is not a run directory (no spec.json); pass directories made by "
                    "`mobench run`, or --runs DIR for every run under DIR"
                )
        # The same directory named twice (e.g. by a shell glob and by hand) is one run.
        return list(dict.fromkeys(Path(p).resolve() for p in run_dirs))
    root = Path(runs_root) if runs_root is not None else DEFAULT_RUNS_ROOT
    if not root.is_dir():
        raise RunDirError(
            f"{root} does not exist; make runs with `mobench run` first, or pass run "
            "directories (or --runs DIR)"
        )
    found = sorted({p.parent for p in root.rglob("spec.json")})
    if not found:
        raise RunDirError(f"no run directories (folders with a spec.json) under {root}")
    return found


def _read_optional(path: Path, problems: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"{path.name} cannot be read ({e})")
        return None


def load_run(path: Path, index: int) -> LoadedRun:
    """Read one run directory; whatever makes it unrankable is recorded, never raised.

    A run is ranked when its status is ``complete``, its metrics.json exists, every test
    prompt has a score for every alpha and objective from one scorer per objective, and the
    per-alpha means of scores.jsonl equal the points in metrics.json.
    """
    path = Path(path)
    problems: list[str] = []
    spec_json = _read_optional(path / "spec.json", problems) or {}
    spec: RunSpec | None = None
    try:
        spec = RunSpec.from_json(spec_json)
    except (TypeError, KeyError, ValueError) as e:
        problems.append(f"spec.json does not match this mobench version's RunSpec ({e})")
    run = LoadedRun(
        index=index,
        path=path,
        spec_json=spec_json,
        spec=spec,
        env=_read_optional(path / "env.json", problems) or {},
        status=_read_optional(path / "status.json", problems) or {},
        timing=_read_optional(path / "timing.json", problems) or {},
        metrics=_read_optional(path / "metrics.json", problems),
        generations={},
        scores={},
    )
    if spec is not None:
        directory = RunDirectory(path, spec)
        try:
            run.generations = directory.generations()
            run.scores = directory.scores()
        except (RunDirError, KeyError, ValueError) as e:
            problems.append(f"generations/scores cannot be read ({e})")
    if not problems:
        problems.extend(_rank_check(run))
    run.problem = "; ".join(problems) or None
    return run


def _rank_check(run: LoadedRun) -> list[str]:
    """Why ``run`` cannot be ranked ([] if it can); fills its score cube on success."""
    from mobench.runs import score_matrix

    assert run.spec is not None
    if run.state != RANKED_STATE:
        error = run.status.get("error")
        return [f"status is '{run.state}'" + (f": {error}" if error else "")]
    if run.metrics is None:
        return ["no metrics.json"]
    prompt_ids = _test_prompt_ids(run)
    try:
        cube, fingerprints = score_matrix(RunDirectory(run.path, run.spec), prompt_ids, run.spec)
    except RunDirError as e:
        return [str(e)]
    stored = run.metrics
    try:
        same = (
            list(stored["objectives"]) == list(run.spec.objectives)
            and np.allclose(stored["alphas"], run.spec.alpha_array, rtol=0, atol=1e-12)
            and np.allclose(stored["points"], cube.mean(axis=0), rtol=1e-9, atol=1e-12)
        )
    except (KeyError, ValueError, TypeError):
        same = False
    if not same:
        return [
            "metrics.json does not match scores.jsonl (objectives, alphas or per-alpha means "
            f"differ); recompute it with `mobench score {run.path}`"
        ]
    run.cube, run.prompt_ids, run.fingerprints = cube, prompt_ids, fingerprints
    return []


def _test_prompt_ids(run: LoadedRun) -> list[str]:
    """The prompts the run's metrics cover: the saved test split, cut at the spec's limit."""
    assert run.spec is not None
    split = _read_optional(run.path / "split.json", [])
    if split and "test" in split:
        ids = [str(i) for i in split["test"]]
        return ids if run.spec.test_limit is None else ids[: run.spec.test_limit]
    # No split.json (an old or hand-made run): every prompt that was generated for.
    return list(dict.fromkeys(pid for pid, _ in run.generations))


# ------------------------------------------------------------------------ benchmark results


@dataclass
class BenchResult:
    """One method's guided / unguided time ratio measured by ``mobench bench``."""

    method: str
    preset: str
    task: str | None
    ratio: float
    dtype: str | None
    device: str | None
    date: str
    source: str


BENCH_FORMAT = (
    'a JSON object {"preset": ..., "task": ..., "dtype": ..., "device": ..., "date": ..., '
    '"results": [{"method": ..., "guided_unguided_ratio": <number>, ...}, ...]} '
    "(top-level fields are defaults an entry may override; method, preset and the ratio are "
    "required)"
)


def load_bench_results(bench_dir: Path | None) -> tuple[list[BenchResult], list[str]]:
    """Guided / unguided ratios from ``bench_dir/*.json`` and a warning per unusable file.

    Each file is :data:`BENCH_FORMAT`. A file that is not is named in the report, not skipped
    silently, so a benchmark that was run but not shown cannot go unnoticed.
    """
    if bench_dir is None or not Path(bench_dir).is_dir():
        return [], []
    results: list[BenchResult] = []
    warnings: list[str] = []
    for file in sorted(Path(bench_dir).glob("*.json")):
        try:
            data = read_json(file)
            entries = data["results"]
            if not isinstance(entries, list):
                raise TypeError("'results' is not a list")
            defaults = {k: v for k, v in data.items() if k != "results"}
            for entry in entries:
                merged = {**defaults, **entry}
                ratio = merged["guided_unguided_ratio"]
                if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
                    raise TypeError(f"guided_unguided_ratio is {ratio!r}, not a number")
                results.append(
                    BenchResult(
                        method=str(merged["method"]),
                        preset=str(merged["preset"]),
                        task=str(merged["task"]) if merged.get("task") else None,
                        ratio=float(ratio),
                        dtype=merged.get("dtype"),
                        device=merged.get("device"),
                        date=str(merged.get("date", "")),
                        source=str(file),
                    )
                )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            warnings.append(
                f"{file}: not in the format the report reads ({e}); expected {BENCH_FORMAT}"
            )
    return results, warnings


def _match_bench(run: LoadedRun, bench: Sequence[BenchResult]) -> BenchResult | None:
    """The benchmark result for this run's method and preset: same dtype first, then newest."""
    candidates = [
        b
        for b in bench
        if b.method == run.method and b.preset == run.preset and b.task in (None, run.task)
    ]
    if not candidates:
        return None
    dtype = run.spec_json.get("dtype")
    return max(candidates, key=lambda b: (b.dtype == dtype, b.date, b.source))


# ------------------------------------------------------------------------------ the numbers


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


def _timing_row(run: LoadedRun, bench: Sequence[BenchResult]) -> dict[str, Any]:
    """Timing and cost of one run from its timing.json (and a benchmark's ratio, if any)."""
    gen = run.timing.get("generate", {}) or {}
    train = run.timing.get("train", {}) or {}
    score = run.timing.get("score", {}) or {}
    # Only `mobench bench` measures guided and unguided decoding of the same rows in one
    # process; a ratio of two runs' timings would mix two machines' states, so none is made.
    ratio, ratio_source = None, None
    match = _match_bench(run, bench)
    if match is not None:
        ratio = match.ratio
        details = ", ".join(v for v in (match.dtype, match.device, match.date) if v)
        ratio_source = f"{match.source} ({details})" if details else match.source
    memories = [
        m
        for m in (_float_or_none(p.get("peak_memory_mb")) for p in (train, gen, score))
        if m is not None
    ]
    return {
        "s_per_512_tokens": _float_or_none(gen.get("s_per_512_tokens")),
        "tokens_per_s": _float_or_none(gen.get("tokens_per_s")),
        "guided_unguided_ratio": ratio,
        "guided_unguided_ratio_source": ratio_source,
        "peak_memory_mb": max(memories) if memories else None,
        "trainable_parameters": train.get("trainable_parameters"),
        "batch_size": gen.get("batch_size"),
        "device": gen.get("device") or run.spec_json.get("device"),
        "device_name": run.env.get("device_name"),
        "dtype": gen.get("dtype") or run.spec_json.get("dtype"),
        "forwards_per_token": gen.get("forwards_per_token"),
        "train_wall_s": _float_or_none(train.get("wall_s")),
        # a guide reused from the cache: the wall time is that of the run that trained it
        "train_reused_from": train.get("reused_from"),
        "generate_wall_s": _float_or_none(gen.get("wall_s")),
        "score_wall_s": _float_or_none(score.get("wall_s")),
    }


def _run_label(run: LoadedRun, duplicated: bool) -> str:
    return f"{run.method} · {run.spec_hash}" if duplicated else run.method


def _group_warnings(runs: Sequence[LoadedRun]) -> list[str]:
    """Differences between a table's rows that make a comparison less direct (not scorers)."""
    checks = [
        (
            "rows use different alpha grids, so MIP averages over different preference vectors",
            lambda r: r.spec_json.get("alphas"),
        ),
        ("rows were evaluated on different test prompts", lambda r: r.prompt_ids),
        ("rows steer different base models", lambda r: r.spec_json.get("base_model")),
        (
            "rows decode with different generation settings (max_new_tokens, sampling, beta, ...)",
            lambda r: r.spec_json.get("generation"),
        ),
    ]
    return [
        text for text, key in checks if len({json.dumps(key(r), sort_keys=True) for r in runs}) > 1
    ]


def _ranked_cube(run: LoadedRun) -> np.ndarray:
    if run.cube is None:
        raise ValueError(f"{run.path} is not ranked ({run.problem}); it has no score cube")
    return run.cube


def _group_key(run: LoadedRun) -> tuple[str, str, tuple[str, ...]]:
    """Runs with equal keys share a leaderboard: same task, preset and objectives."""
    objectives = tuple(run.spec.objectives) if run.spec is not None else ()
    return (run.task, run.preset, objectives)


def _group_rows(runs: list[LoadedRun], bench: Sequence[BenchResult], n_boot: int) -> dict[str, Any]:
    """The leaderboard of one (task, preset): HV with one common reference point, MIP, CIs."""
    cubes = {r.index: _ranked_cube(r) for r in runs}
    points = {i: cube.mean(axis=0) for i, cube in cubes.items()}
    z = reference_point(list(points.values()))
    methods = [r.method for r in runs]
    rows = []
    for r in runs:
        assert r.spec is not None and r.metrics is not None  # ranked runs have both
        p, alphas = points[r.index], r.spec.alpha_array
        ci = None
        if cubes[r.index].shape[0] >= 2:  # one prompt has no spread to resample (as summarize)
            ci = bootstrap_intervals(cubes[r.index], alphas, z, n_boot=n_boot, seed=BOOTSTRAP_SEED)
        front = [int(i) for i in pareto_front(p)]
        rows.append(
            {
                "index": r.index,
                "label": _run_label(r, methods.count(r.method) > 1),
                "method": r.method,
                "run": r.path.name,
                "path": str(r.path),
                "spec_hash": r.spec_hash,
                "n_prompts": int(cubes[r.index].shape[0]),
                "grid": r.spec.grid,
                "alphas": alphas.tolist(),
                "points": p.tolist(),
                "pareto": front,
                "front_size": len(front),
                "hv": hypervolume(p, z),
                "hv_ci": ci["hv"] if ci else None,
                "mip": mean_inner_product(alphas, p),
                "mip_ci": ci["mip"] if ci else None,
                "points_ci": ci["points"] if ci else None,
                "hv_own": float(r.metrics["hv"]),
                "hv_own_ref_point": list(r.metrics["hv_ref_point"]),
                "scorers": r.fingerprints,
                "timing": _timing_row(r, bench),
                "steering": _steering(r, n_boot),
                **_method_facts(r.method),
            }
        )
    # The rows in the order of the UniARM paper's table (reference rows, then the methods that
    # replace the base, then those that guide it); the order also sets the legend and the
    # sample columns. Who leads is the paired table's and the stars' business, not the order's.
    rows.sort(key=lambda row: (_table_position(row["method"]), row["label"]))
    scorer_sets = {json.dumps(r.fingerprints, sort_keys=True) for r in runs}
    agree = len(scorer_sets) == 1
    by_index = {r.index: r for r in runs}
    base_point = _attach_base_gains(rows, by_index) if agree else None
    # each pair once, the higher-HV row first, so a difference reads "a beats b by ..."
    best_first = sorted(rows, key=lambda row: (-row["hv"], -row["mip"], row["label"]))
    paired = _paired_table(best_first, by_index, z, n_boot) if agree else []
    best = _best_beyond_noise(rows, paired) if agree else {"hv": [], "mip": []}
    return {
        "base_point": base_point,
        "paired": paired,
        "reference_point": z.tolist(),
        "scorers_agree": agree,
        "scorer_sets": [
            {
                "scorers": json.loads(s),
                "runs": [
                    row["label"] for row in rows if json.dumps(row["scorers"], sort_keys=True) == s
                ],
            }
            for s in sorted(scorer_sets)
        ],
        "warnings": _group_warnings(runs),
        "best": best,
        "rows": rows,
    }


#: the leaderboard's row order: the UniARM paper's safety table (RS, MOD, GenARM, PARM, UniARM)
#: after the reference rows, then the weak-to-strong baseline; other methods follow by name
PAPER_TABLE_ORDER = ("base", "prompt", "rs", "mod", "genarm", "parm", "uniarm", "mod_w2s")


def _table_position(method: str) -> tuple[int, str]:
    if method in PAPER_TABLE_ORDER:
        return PAPER_TABLE_ORDER.index(method), ""
    return len(PAPER_TABLE_ORDER), method


def _method_facts(method: str) -> dict[str, Any]:
    """What the leaderboard says about a row's method: how it uses the base model ("guides the
    base", "replaces the base", "decodes the base") and whether it is a reference row."""
    from mobench.registry import UnknownNameError, get_method

    try:
        cls = get_method(method)
    except UnknownNameError:  # a third-party method not installed here
        return {"relation": "unknown (method not installed)", "reference_row": False}
    return {"relation": cls.relation_to_base(), "reference_row": cls.reference_row}


def _steering(run: LoadedRun, n_boot: int) -> dict[str, Any]:
    """The run's steering diagnostics, recomputed from its answers and scores (the same
    function as its metrics.json, so runs made before the diagnostics existed get them too)."""
    from mobench.registry import UnknownNameError, get_method

    assert run.spec is not None and run.cube is not None
    texts = [
        [str(run.generations[(pid, a)].get("text", "")) for a in range(len(run.spec.alphas))]
        for pid in run.prompt_ids
    ]
    try:
        expected = get_method(run.method).steers
    except UnknownNameError:  # a third-party method not installed here: judge it like any
        expected = True
    return steering_diagnostics(
        run.cube,
        run.spec.alpha_array,
        run.spec.objectives,
        texts,
        expected_to_steer=expected,
        n_boot=n_boot,
        seed=BOOTSTRAP_SEED,
    )


def _attach_base_gains(
    rows: list[dict[str, Any]], by_index: dict[int, LoadedRun]
) -> list[float] | None:
    """With a ``base`` row in the table: its point (mean over prompts and alphas), and each
    other row's gain over it (rows evaluated on other prompts get none)."""
    bases = [row for row in rows if row["method"] == "base"]
    if not bases:
        return None
    base = by_index[bases[0]["index"]]
    cube = _ranked_cube(base)
    point = cube.mean(axis=(0, 1))
    for row in rows:
        if row["method"] != "base" and by_index[row["index"]].prompt_ids == base.prompt_ids:
            gain = gain_over_base(np.asarray(row["points"]), point)
            row["gain_over_base"] = {
                **gain,
                "max_distance": max(gain["distance"]),
                "mean_distance": float(np.mean(gain["distance"])),
            }
    return [float(v) for v in point]


def _paired_table(
    rows: list[dict[str, Any]], by_index: dict[int, LoadedRun], z: np.ndarray, n_boot: int
) -> list[dict[str, Any]]:
    """HV and MIP differences for every pair of ``rows`` (each pair once, the earlier row as
    ``a``), with a paired bootstrap interval over the prompts both answered."""
    out = []
    for i, first in enumerate(rows):
        for second in rows[i + 1 :]:
            a, b = by_index[first["index"]], by_index[second["index"]]
            entry: dict[str, Any] = {
                "a": first["label"],
                "b": second["label"],
                "a_index": first["index"],
                "b_index": second["index"],
            }
            if a.prompt_ids != b.prompt_ids or first["alphas"] != second["alphas"]:
                entry["not_compared"] = "different test prompts or alpha grids: nothing to pair"
            else:
                entry.update(
                    paired_differences(
                        _ranked_cube(a),
                        _ranked_cube(b),
                        np.asarray(first["alphas"]),
                        z,
                        n_boot=n_boot,
                        seed=BOOTSTRAP_SEED,
                    )
                )
            out.append(entry)
    return out


def _best_beyond_noise(
    rows: list[dict[str, Any]], paired: list[dict[str, Any]]
) -> dict[str, list[int]]:
    """Per metric, the row that beats every other row beyond noise (the paired interval of the
    difference excludes 0), or nobody: a star on a lead within noise would mislead."""
    best: dict[str, list[int]] = {"hv": [], "mip": []}
    if len(rows) < 2:
        return best
    for metric in best:
        top = max(rows, key=lambda row: row[metric])
        wins = []
        for entry in paired:
            if top["index"] not in (entry["a_index"], entry["b_index"]):
                continue
            result = entry.get(metric)
            if result is None:
                wins.append(False)  # not comparable with some row: no claim
                continue
            sign = 1.0 if entry["a_index"] == top["index"] else -1.0
            lo, hi = (sign * v for v in (result["ci"] or [0.0, 0.0]))
            wins.append(result["distinguishable"] and min(lo, hi) > 0)
        if wins and all(wins):
            best[metric] = [top["index"]]
    return best


def _refuse_mixed_weights(runs: Sequence[LoadedRun]) -> None:
    """Unrank the runs of a table in which one model name (alias, hub id, scorer spec) stands
    for different weights (spec ``models``): their numbers measure different models."""
    for key in {_group_key(r) for r in runs}:
        members = [r for r in runs if _group_key(r) == key]
        seen: dict[str, dict[str, list[LoadedRun]]] = {}
        for r in members:
            for name, identity in (r.spec_json.get("models") or {}).items():
                seen.setdefault(name, {}).setdefault(identity, []).append(r)
        for name, by_identity in sorted(seen.items()):
            if len(by_identity) < 2:
                continue
            detail = "; ".join(
                f"{i} in {', '.join(r.path.name for r in rs)}"
                for i, rs in sorted(by_identity.items())
            )
            for rs in by_identity.values():
                for r in rs:
                    r.problem = (
                        f"model '{name}' is different weights across this table's runs "
                        f"({detail}); re-run them on one copy to compare"
                    )


def collect_report_data(
    runs: Sequence[LoadedRun],
    bench: Sequence[BenchResult],
    bench_warnings: Sequence[str],
    *,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Every number of the report as plain JSON: groups (leaderboards), unranked runs, runs.

    Args:
        runs: the loaded run directories.
        bench: benchmark results (for guided / unguided ratios).
        bench_warnings: benchmark files that could not be read.
        n_boot: bootstrap resamples per row.
    """
    _refuse_mixed_weights([r for r in runs if r.problem is None])
    ranked = [r for r in runs if r.problem is None]
    groups = []
    for gi, key in enumerate(sorted({_group_key(r) for r in ranked})):
        task, preset, objectives = key
        members = [r for r in ranked if _group_key(r) == key]
        groups.append(
            {
                "id": f"g{gi}",
                "task": task,
                "preset": preset,
                "objectives": list(objectives),
                **_group_rows(members, bench, n_boot),
            }
        )
    return {
        "mobench": __version__,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": [
            {
                "index": r.index,
                "run": r.path.name,
                "path": str(r.path),
                "task": r.task,
                "preset": r.preset,
                "method": r.method,
                "spec_hash": r.spec_hash,
                "state": r.state,
                "ranked": r.problem is None,
                "reason": r.problem,
                "env": r.env,
            }
            for r in runs
        ],
        "groups": groups,
        "bench_warnings": list(bench_warnings),
    }


# ------------------------------------------------------------------------ the page's views


def _conversation(prompt: Any) -> list[tuple[str, str]]:
    """(role, text) turns of a recorded prompt (a chat list, or a plain string)."""
    if isinstance(prompt, str):
        return [("user", prompt)]
    if isinstance(prompt, list):
        return [
            (str(m.get("role", "?")), str(m.get("content", "")))
            for m in prompt
            if isinstance(m, dict)
        ]
    return []


def _alpha_key(alpha: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(a), 9) for a in alpha)


def _sample_cell(
    run: LoadedRun, prompt_id: str, alpha_index: int, objectives: Sequence[str]
) -> dict[str, Any] | None:
    """One answer with its rewards, or None when the run has no answer for that row."""
    gen = run.generations.get((prompt_id, alpha_index))
    if gen is None:
        return None
    text = str(gen.get("text", ""))
    values = [run.scores.get((prompt_id, alpha_index, o), {}).get("value") for o in objectives]
    return {
        "text": text,
        # An answer of only newlines or spaces would render as an empty box: show it quoted.
        "blank": json.dumps(text) if not text.strip() else "",
        "num_tokens": gen.get("num_tokens"),
        "finish_reason": gen.get("finish_reason"),
        "prompt": gen.get("prompt"),
        "scores": " · ".join(f"{o} {v:.4g}" for o, v in zip(objectives, values) if v is not None),
    }


def _samples_view(
    group: dict[str, Any], by_index: dict[int, LoadedRun], limit: int
) -> dict[str, Any]:
    """Side-by-side answers for the group's first ``limit`` prompts, every alpha, every run.

    Rows are matched across runs by the alpha vector itself (not its index), so runs with
    different grids line up where they share a preference vector.
    """
    rows = group["rows"]
    runs = [by_index[row["index"]] for row in rows]
    index_of = [{_alpha_key(a): i for i, a in enumerate(row["alphas"])} for row in rows]
    alpha_keys = list(dict.fromkeys(key for lookup in index_of for key in lookup))
    prompt_ids = list(dict.fromkeys(pid for r in runs for pid in r.prompt_ids))
    prompts = []
    for pi, pid in enumerate(prompt_ids[:limit]):
        table: list[dict[str, Any]] = []
        for alpha in alpha_keys:
            cells = [
                _sample_cell(run, pid, lookup[alpha], group["objectives"])
                if alpha in lookup
                else None
                for run, lookup in zip(runs, index_of)
            ]
            table.append({"alpha": "(" + ", ".join(f"{a:g}" for a in alpha) + ")", "cells": cells})
        recorded = next(
            (c["prompt"] for line in table for c in line["cells"] if c and c["prompt"]), None
        )
        prompts.append(
            {
                "id": pid,
                "dom_id": f"{group['id']}-p{pi}",
                "turns": _conversation(recorded),
                "table": table,
            }
        )
    return {"prompts": prompts, "total": len(prompt_ids), "shown": len(prompts)}


def _plots_view(
    group: dict[str, Any], colours: dict[str, str], markers: dict[int, str]
) -> list[Any]:
    objectives = group["objectives"]
    series = [
        SeriesInput(
            label=row["label"],
            colour=colours[row["method"]],
            marker=markers[row["index"]],
            alphas=np.asarray(row["alphas"]),
            points=np.asarray(row["points"]),
        )
        for row in group["rows"]
    ]
    z = np.asarray(group["reference_point"])
    k = len(objectives)
    if k == 1:
        return []
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    if k == 2:  # the one plot of a 2-objective table gets more room than the projections
        return [
            scatter_plot(
                series,
                objectives,
                (0, 1),
                z,
                title=f"{objectives[0]} vs {objectives[1]}",
                width=640,
                height=460,
            )
        ]
    return [
        scatter_plot(
            series,
            objectives,
            (i, j),
            z,
            title=f"{objectives[i]} vs {objectives[j]} "
            "(projection; front decided in all objectives)",
        )
        for i, j in pairs
    ]


def _timing_charts(group: dict[str, Any], colours: dict[str, str]) -> list[Any]:
    def rows(key: str) -> list[tuple[str, str, float | None]]:
        return [(r["label"], colours[r["method"]], r["timing"][key]) for r in group["rows"]]

    charts = [
        bar_chart(
            rows("s_per_512_tokens"),
            title="seconds per 512 generated tokens (lower is better)",
            unit="s",
        ),
        bar_chart(
            rows("guided_unguided_ratio"),
            title="guided / unguided decoding time (lower is better; 1 = no overhead)",
            unit="x",
            guide_value=1.0,
            guide_text="1.0",
        ),
        bar_chart(rows("peak_memory_mb"), title="peak memory (lower is better)", unit="MB"),
    ]
    # A chart of nothing but "not measured" says less than the table already does.
    return [c for c in charts if any(b.measured for b in c.bars)]


def _provenance_view(run: LoadedRun, label: str) -> dict[str, Any]:
    env = run.env
    return {
        "index": run.index,
        "label": label,
        "run": run.path.name,
        "path": str(run.path),
        "spec_hash": run.spec_hash,
        "state": run.state,
        "git_sha": env.get("git_sha"),
        "date": env.get("date"),
        "mobench": env.get("mobench"),
        "python": env.get("python"),
        "platform": env.get("platform"),
        "packages": env.get("packages") or {},
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        "dtype": env.get("dtype") or run.spec_json.get("dtype"),
        "base_model": run.spec_json.get("base_model"),
        "guide_model": run.spec_json.get("guide_model"),
        "data": run.spec_json.get("data"),
        "scorers": run.spec_json.get("scorers") or {},
        "spec_pretty": json.dumps(run.spec_json, indent=2),
    }


# ------------------------------------------------------------------------------- rendering


@dataclass
class ReportResult:
    """Where the report was written and what it covers."""

    index_html: Path
    data_json: Path
    n_runs: int
    n_ranked: int
    tables: list[tuple[str, str]]  # (task, preset) per leaderboard


def _num(value: Any, digits: int = 4) -> str:
    """A number for a table cell: ``n/a`` when missing, else ``digits`` decimals (or
    ``digits`` significant digits in scientific notation for very large or small values)."""
    v = _float_or_none(value)
    if v is None:
        return "n/a"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.{digits}g}"
    return f"{v:.{digits}f}"


def _vector(values: Any) -> str:
    return "(" + ", ".join(_num(v) for v in values) + ")"


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mobench", "templates"),
        autoescape=True,  # always: model outputs are untrusted text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["vector"] = _vector
    return env


def render_html(data: dict[str, Any], runs: Sequence[LoadedRun], *, sample_prompts: int) -> str:
    """The report page for ``data`` (from :func:`collect_report_data`) and its runs."""
    import markupsafe

    env = _environment()
    by_index = {r.index: r for r in runs}
    colours = method_colours([r.method for r in runs])
    labels = {r.index: f"{r.method} · {r.spec_hash}" for r in runs}
    views = []
    for group in data["groups"]:
        markers: dict[int, str] = {}
        seen: dict[str, int] = {}
        for row in group["rows"]:
            n = seen.get(row["method"], 0)
            markers[row["index"]] = MARKERS[n % len(MARKERS)]
            seen[row["method"]] = n + 1
            labels[row["index"]] = row["label"]
        views.append(
            {
                "group": group,
                "plots": _plots_view(group, colours, markers),
                "charts": _timing_charts(group, colours),
                "samples": _samples_view(group, by_index, sample_prompts),
                "markers": markers,
            }
        )
    script = env.loader.get_source(env, "report.js")[0]
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return env.get_template("report.html.j2").render(
        data=data,
        views=views,
        colours=colours,
        not_ranked=[r for r in runs if r.problem is not None],
        provenance=[_provenance_view(r, labels[r.index]) for r in runs],
        script=markupsafe.Markup(script),  # our own file, not data
        script_hash=script_hash,
    )


def build_report(
    run_dirs: Sequence[Path] = (),
    out_dir: Path = DEFAULT_OUT,
    *,
    runs_root: Path | None = None,
    bench_dir: Path | None = DEFAULT_BENCH_DIR,
    sample_prompts: int = DEFAULT_SAMPLE_PROMPTS,
    n_boot: int = 1000,
) -> ReportResult:
    """Read run directories and write ``out_dir/index.html`` and ``out_dir/data.json``.

    Args:
        run_dirs: run directories to include; empty means every run under ``runs_root``.
        out_dir: output folder (created).
        runs_root: folder searched (recursively) for run directories; default ``./runs``.
        bench_dir: folder of ``mobench bench`` results (``*.json``); missing is fine.
        sample_prompts: how many test prompts the samples section shows per table.
        n_boot: bootstrap resamples per leaderboard row.

    Raises:
        RunDirError: no run directories, or a given path is not one.
        ValueError: ``sample_prompts`` < 1.
    """
    if sample_prompts < 1:
        raise ValueError(f"sample_prompts must be at least 1; got {sample_prompts}")
    paths = discover_run_dirs(run_dirs, runs_root)
    runs = [load_run(p, i) for i, p in enumerate(paths)]
    bench, bench_warnings = load_bench_results(bench_dir)
    data = collect_report_data(runs, bench, bench_warnings, n_boot=n_boot)
    html = render_html(data, runs, sample_prompts=sample_prompts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(index)
    write_json_atomic(out_dir / "data.json", data)
    return ReportResult(
        index_html=index,
        data_json=out_dir / "data.json",
        n_runs=len(runs),
        n_ranked=sum(r.problem is None for r in runs),
        tables=[(g["task"], g["preset"]) for g in data["groups"]],
    )
