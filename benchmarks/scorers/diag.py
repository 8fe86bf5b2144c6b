import json
import sys
from pathlib import Path

import numpy as np

from mobench.metrics import paired_differences, summarize
from mobench.steering import gain_over_base, steering_diagnostics

ROOT = sys.argv[2] if len(sys.argv) > 2 else "/tmp/runs"
runs = {m: Path(f"{ROOT}/{m}") for m in ("base", "genarm", "parm", "uniarm")}


def load(d):
    spec = json.load(open(d / "spec.json"))
    ids = json.load(open(d / "split.json"))["test"]
    lim = spec.get("test_limit")
    ids = ids[:lim] if lim else ids
    objs = spec["objectives"]
    A = len(spec["alphas"])
    sc = {}
    for l in open(d / "scores.jsonl"):
        r = json.loads(l)
        sc[(r["prompt_id"], r["alpha_index"], r["objective"])] = r["value"]
    gen = {}
    for l in open(d / "generations.jsonl"):
        r = json.loads(l)
        gen[(r["prompt_id"], r["alpha_index"])] = r["text"]
    cube = np.array([[[sc[(p, a, o)] for o in objs] for a in range(A)] for p in ids])
    texts = [[gen[(p, a)] for a in range(A)] for p in ids]
    timing = json.load(open(d / "timing.json"))
    return spec, ids, cube, texts, timing


data = {m: load(d) for m, d in runs.items()}
out = {
    "command": "mobench run --method M --task safety --preset mini --data-dir ../shared/data (M = base, genarm, parm, uniarm), run directories evaluated with mobench.steering.steering_diagnostics and mobench.metrics (n_boot 1000, seed 0)",
    "runs": {},
}
base_cube = data["base"][2]
base_point = base_cube.mean(axis=(0, 1))
for m, (spec, ids, cube, texts, timing) in data.items():
    alphas = np.array(spec["alphas"])
    met = summarize(cube, alphas, np.array(spec["hv_ref_point"]), spec["objectives"])
    st = steering_diagnostics(
        cube, alphas, spec["objectives"], texts, expected_to_steer=(m != "base")
    )
    rec = {
        "hv": met["hv"],
        "mip": met["mip"],
        "ci": {"hv": met["ci"]["hv"], "mip": met["ci"]["mip"]},
        "steering": st,
        "n_prompts": len(ids),
        "timing_s": {
            k: timing.get(k, {}).get("wall_s") for k in ("data", "train", "generate", "score")
        },
        "train_reused_from": timing.get("train", {}).get("reused_from"),
    }
    if m != "base":
        assert data["base"][1] == ids
        rec["gain_over_base"] = gain_over_base(np.array(met["points"]), base_point)
        rec["paired_vs_base"] = paired_differences(
            cube, base_cube, alphas, np.array(spec["hv_ref_point"])
        )
    out["runs"][m] = rec
json.dump(out, open(sys.argv[1], "w"), indent=1)
for m, r in out["runs"].items():
    s = r["steering"]
    o = s["objectives"]
    f = lambda e: (
        (
            "n/a"
            if e["spearman"] is None
            else f"{e['spearman']:+.2f} [{e['spearman_ci'][0]:+.2f}, {e['spearman_ci'][1]:+.2f}]"
            if e["spearman_ci"]
            else f"{e['spearman']:+.2f}"
        )
        + f"; span {e['span']:.3f} vs {e['noise']:.3f}"
    )
    t = r["timing_s"]
    tot = sum(v for v in t.values() if v)
    print(
        f"| {m} | {f(o['helpful'])} | {f(o['harmless'])} | {s['answers_changed']['prompts']}/{s['answers_changed']['of']} | {s['score_correlation']['helpful/harmless']:.2f} | {r['hv']:.2f} [{r['ci']['hv'][0]:.2f}, {r['ci']['hv'][1]:.2f}] | {r['mip']:.3f} [{r['ci']['mip'][0]:.3f}, {r['ci']['mip'][1]:.3f}] | {'yes' if s['steers'] else ('reference' if m == 'base' else 'no')} | {tot / 60:.1f} |",
        t,
        r.get("paired_vs_base", {}).get("hv"),
        r.get("paired_vs_base", {}).get("mip"),
    )
