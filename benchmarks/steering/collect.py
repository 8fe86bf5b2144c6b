"""Collect finished run directories of one task and preset into a results file and the README's
steering table: per run, its metrics.json (HV, MIP and their bootstrap intervals with the preset's
reference point; the steering diagnostics mobench wrote), its phases' wall times (timing.json),
and the paired bootstrap difference against the ``base`` run among them (same prompts).

    python benchmarks/steering/collect.py OUT.json RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mobench.config import RunSpec
from mobench.metrics import paired_differences
from mobench.runs import RunDirectory, score_matrix

PHASES = ("data", "train", "generate", "score")
#: issue 12's bar for a mini front that steers (stricter than mobench's own warning at 0.5)
BAR_SPEARMAN = 0.8
BAR_SCORE_CORRELATION = 0.5
BAR_CHANGED = 0.5


def missed_bar(steering: dict[str, Any]) -> list[str]:
    """Which of issue 12's criteria a run misses: Spearman >= 0.8 and span > noise for every
    objective, at least half the prompts changed at the extremes, score correlation < 0.5."""
    missed = []
    for name, e in steering["objectives"].items():
        if e["spearman"] is None or e["spearman"] < BAR_SPEARMAN:
            missed.append(f"{name} Spearman")
        if not e["span_beyond_noise"]:
            missed.append(f"{name} span")
    if steering["answers_changed"]["fraction"] < BAR_CHANGED:
        missed.append("answers changed")
    if any(
        r is not None and r >= BAR_SCORE_CORRELATION for r in steering["score_correlation"].values()
    ):
        missed.append("score correlation")
    return missed


def load(run_dir: Path) -> dict[str, Any]:
    spec = RunSpec.from_json(json.loads((run_dir / "spec.json").read_text()))
    run = RunDirectory(run_dir, spec)
    test = json.loads((run_dir / "split.json").read_text())["test"]
    prompt_ids = test[: spec.test_limit] if spec.test_limit else test
    cube, _ = score_matrix(run, prompt_ids, spec)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timing = json.loads((run_dir / "timing.json").read_text())
    return {
        "spec": spec,
        "cube": cube,
        "prompt_ids": prompt_ids,
        "metrics": metrics,
        "timing_s": {p: timing.get(p, {}).get("wall_s") for p in PHASES},
        "train_reused_from": timing.get("train", {}).get("reused_from"),
        "forwards_per_token": timing.get("generate", {}).get("forwards_per_token"),
    }


def spearman_cell(entry: dict[str, Any]) -> str:
    if entry["spearman"] is None:
        head = "n/a (flat)"
    elif entry["spearman_ci"]:
        lo, hi = entry["spearman_ci"]
        head = f"{entry['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    else:
        head = f"{entry['spearman']:+.2f}"
    return f"{head}; {entry['span']:.3f} vs {entry['noise']:.3f}"


def main(out: Path, run_dirs: list[Path]) -> None:
    runs = {(r := load(d))["spec"].method: r for d in run_dirs}
    base = runs.get("base")
    record: dict[str, Any] = {"runs": {}}
    for method, r in runs.items():
        m = r["metrics"]
        entry = {
            "run_dir": str(r["spec"].run_name),
            "hv": m["hv"],
            "mip": m["mip"],
            "ci": {"hv": m["ci"]["hv"], "mip": m["ci"]["mip"]},
            "hv_ref_point": m["hv_ref_point"],
            "n_prompts": m["n_prompts"],
            "steering": m["steering"],
            "timing_s": r["timing_s"],
            "train_reused_from": r["train_reused_from"],
            "forwards_per_token": r["forwards_per_token"],
            "misses_issue_12_bar": missed_bar(m["steering"]),
        }
        if base is not None and method != "base" and base["prompt_ids"] == r["prompt_ids"]:
            entry["paired_vs_base"] = paired_differences(
                r["cube"],
                base["cube"],
                r["spec"].alpha_array,
                np.asarray(r["spec"].hv_ref_point),
            )
        record["runs"][method] = entry
    out.write_text(json.dumps(record, indent=1))
    objectives = next(iter(runs.values()))["spec"].objectives
    for method, e in record["runs"].items():
        s = e["steering"]
        cells = [spearman_cell(s["objectives"][o]) for o in objectives]
        corr = ", ".join(f"{v:.2f}" for v in s["score_correlation"].values() if v is not None)
        verdict = "reference" if not s["expected_to_steer"] else ("yes" if s["steers"] else "no")
        bar = "-" if not s["expected_to_steer"] else (", ".join(e["misses_issue_12_bar"]) or "met")
        train = e["timing_s"]["train"]
        decode = sum(e["timing_s"][p] or 0.0 for p in ("generate", "score")) / 60
        reused = " (reused)" if e["train_reused_from"] else ""
        train_cell = "-" if train is None else f"{train / 60:.1f}{reused}"
        hv_lo, hv_hi = e["ci"]["hv"]
        mip_lo, mip_hi = e["ci"]["mip"]
        changed = s["answers_changed"]
        vs_base = e.get("paired_vs_base")
        if vs_base is None:
            diff = "-"
        else:
            diff = "; ".join(
                f"{d['diff']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
                for d in (vs_base["hv"], vs_base["mip"])
            )
        print(
            f"| {method} | {' | '.join(cells)} | {changed['prompts']} / {changed['of']} | {corr} "
            f"| {e['hv']:.2f} [{hv_lo:.2f}, {hv_hi:.2f}] | {e['mip']:.3f} [{mip_lo:.3f}, "
            f"{mip_hi:.3f}] | {diff} | {verdict} | {bar} | {train_cell} | {decode:.1f} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])
