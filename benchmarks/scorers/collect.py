"""Collect the probe study's outputs (under /tmp/scorer_work, made by the scripts beside this
one) into one results file: benchmarks/scorers/probe-study-20261130.json."""

import json
import re
import sys
from pathlib import Path

W = Path("/tmp/scorer_work")


def last_json(path):
    for line in reversed(Path(path).read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)


def bow(path):
    return {
        float(m.group(1)): float(m.group(2))
        for m in re.finditer(r"BoW l2 (\S+) heldout (\S+)", Path(path).read_text())
    }


def longer(path):
    return float(
        re.search(r"longer response chosen \(eval\): (\S+)", Path(path).read_text()).group(1)
    )


def diag(path):
    out = {}
    for m, r in json.loads(Path(path).read_text())["runs"].items():
        s = r["steering"]
        out[m] = {
            "objectives": {
                o: {k: e[k] for k in ("spearman", "spearman_ci", "span", "noise")}
                for o, e in s["objectives"].items()
            },
            "answers_changed": s["answers_changed"],
            "score_correlation": s["score_correlation"],
            "steers": s["steers"],
            "hv": r["hv"],
            "hv_ci": r["ci"]["hv"],
            "mip": r["mip"],
            "mip_ci": r["ci"]["mip"],
        }
    return out


res = {
    "date": "2026-11-30",
    "commands": [
        "OMP_NUM_THREADS=1 python benchmarks/scorers/feat.py pku 700 300 /tmp/scorer_work/pku.npz",
        "OMP_NUM_THREADS=1 python benchmarks/scorers/feat.py hh 400 200 /tmp/scorer_work/hh.npz",
        "python benchmarks/scorers/fit.py pku /tmp/scorer_work/pku.npz > /tmp/scorer_work/pku_fit.log (and hh)",
        "python benchmarks/scorers/eval_trained.py pku /tmp/scorer_work/pku.npz ~/.cache/mobench/scorers/harmless-ebe53f84a383a424 (the mini preset's trained harmless scorer; hh: helpful-e1efd9840c18e99b)",
        'python benchmarks/scorers/rescore.py /tmp/scorer_work/rescored harmless "$(MINI_HARMLESS_SCORER with data-dir: resolved)"  (fits the probe on first use; its scorer.json is quoted under preset_probe_same_pairs.meta)',
        "python benchmarks/scorers/eval_probe_npz.py ~/.cache/mobench/scorers/probe-harmless-2f7dc339397282a9 > /tmp/scorer_work/eval_probe.json",
        "python benchmarks/scorers/rescore.py /tmp/scorer_work/rescored_both helpful 'probe:smollm2-135m-instruct?data=../shared/data/hh-rlhf/helpful-base/test.jsonl.gz&train_pairs=400&heldout_pairs=200&layer=20&pool=last&l2=0.1' (on a copy of rescored)",
        "python benchmarks/scorers/diag.py OUT.json RUNS_ROOT  (RUNS_ROOT: /tmp/runs before, rescored, rescored_both)",
        "python benchmarks/scorers/collect.py benchmarks/scorers/probe-study-20261130.json",
    ],
    "machine": "2 shared CPU cores, one torch thread, fp32",
    "data": "../shared/data (PKU-SafeRLHF 5135-pair test file; HH-RLHF helpful-base test)",
    "split": "train: a seeded sample of the 'scorer' half of the first-user-turn partition; evaluation: a seeded sample of the 'task' half (no shared first user turn)",
    "pku_harmless": {
        "eval_pairs": 300,
        "train_pairs": 700,
        "probe_grid": json.loads((W / "pku_fit.json").read_text()),
        "bow_logreg_same_pairs": bow(W / "pku_fit.log"),
        "longer_response_is_safe": longer(W / "pku_fit.log"),
        "trained_mini_scorer_same_pairs": last_json(W / "trained_pku.log"),
        "preset_probe_same_pairs": json.loads((W / "eval_probe.json").read_text()),
    },
    "hh_helpful": {
        "eval_pairs": 200,
        "train_pairs": 400,
        "probe_grid": json.loads((W / "hh_fit.json").read_text()),
        "bow_logreg_same_pairs": bow(W / "hh_fit.log"),
        "longer_response_is_chosen": longer(W / "hh_fit.log"),
        "trained_mini_scorer_same_pairs": last_json(W / "trained_hh.log"),
    },
    "rescored_mini_runs": {
        "runs": "copies of the safety mini runs (SmolLM2-135M, 32 PKU test prompts x 11 alphas, 64 new tokens)",
        "before_trained_scorers": diag(W / "diag_before.json"),
        "after_harmless_probe": diag(W / "diag_after.json"),
    },
}
if (W / "diag_after_both.json").is_file():
    res["rescored_mini_runs"]["after_harmless_and_helpful_probes"] = diag(
        W / "diag_after_both.json"
    )
if (W / "helpful_probe.json").is_file():
    res["hh_helpful"]["helpful_probe_recipe_fit"] = json.loads(
        (W / "helpful_probe.json").read_text()
    )
if (W / "hh_harmless_check.json").is_file():
    res["hh_harmless_base_task_half"] = json.loads((W / "hh_harmless_check.json").read_text())
    res["commands"].append(
        "python benchmarks/scorers/hh_harmless_check.py PROBE_FOLDER TRAINED_FOLDER"
    )
Path(sys.argv[1]).write_text(json.dumps(res, indent=1) + "\n")
