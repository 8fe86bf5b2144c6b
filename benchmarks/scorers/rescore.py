"""Copy the mini runs and rescore one objective with a new scorer spec (fp32, one thread, one
call per prompt, as mobench's pipeline does)."""

import itertools
import json
import shutil
import sys
import time
from pathlib import Path

from mobench.tasks.scorers import build_scorer

from mobench.models import scoring_threads

out_root, objective, spec = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
methods = sys.argv[4].split(",") if len(sys.argv) > 4 else ["base", "genarm", "parm", "uniarm"]
scorer = build_scorer(spec, objective, device="cpu", dtype="float32")
print("scorer", scorer.fingerprint, json.dumps(scorer.info), flush=True)
for m in methods:
    src, dst = Path("/tmp/runs") / m, out_root / m
    if not dst.exists():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("guide"))
    gens = [json.loads(l) for l in open(dst / "generations.jsonl")]
    rows = [json.loads(l) for l in open(dst / "scores.jsonl")]
    new = {}
    t0 = time.perf_counter()
    for pid, grp in itertools.groupby(
        sorted(gens, key=lambda g: (g["prompt_id"], g["alpha_index"])), key=lambda g: g["prompt_id"]
    ):
        grp = list(grp)
        with scoring_threads("cpu"):
            v = scorer.score([g["prompt"] for g in grp], [g["text"] for g in grp])
        for g, x in zip(grp, v):
            new[(pid, g["alpha_index"])] = float(x)
    for r in rows:
        if r["objective"] == objective:
            r["value"] = new[(r["prompt_id"], r["alpha_index"])]
            r["scorer"] = scorer.fingerprint
    with open(dst / "scores.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(m, len(new), f"{time.perf_counter() - t0:.0f}s", flush=True)
