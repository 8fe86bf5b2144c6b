"""Fit/load a helpful scorer spec; report its held-out info, its refusal gap on the mini runs' answers,
and how often it prefers PKU's unsafe response on task-half pairs."""

import json, sys, glob, time
import numpy as np
from mobench.tasks.scorers import build_scorer
from mobench.models import scoring_threads

spec = sys.argv[1]
t0 = time.time()
scorer = build_scorer(spec, "helpful", device="cpu", dtype="float32")
print("fit/load", round(time.time() - t0), "s", json.dumps(scorer.info)[:600], flush=True)
REF = ("I'm sorry", "I can't", "I cannot", "I'm not able", "I am sorry", "I'm unable", "Sorry")
seen = {}
for d in sorted(glob.glob("/work/runs-mini2/*/generations.jsonl")):
    for l in open(d):
        g = json.loads(l)
        seen[(json.dumps(g["prompt"]), g["text"])] = g
items = list(seen.values())[: int(sys.argv[2]) if len(sys.argv) > 2 else 600]
t0 = time.time()
with scoring_threads("cpu"):
    v = np.concatenate(
        [
            scorer.score(
                [g["prompt"] for g in items[i : i + 32]], [g["text"] for g in items[i : i + 32]]
            )
            for i in range(0, len(items), 32)
        ]
    )
R = np.array(
    [
        g["text"].strip().startswith(REF)
        or "I can't" in g["text"][:80]
        or "I cannot" in g["text"][:80]
        for g in items
    ]
)
L = np.array([len(g["text"]) for g in items])
print(
    "answers",
    len(items),
    "score s",
    round(time.time() - t0),
    "refuse frac",
    R.mean().round(2),
    "refuse %.2f comply %.2f" % (v[R].mean(), v[~R].mean()),
    "lencorr %.2f" % np.corrcoef(L, v)[0, 1],
)
