"""How often does a helpful scorer prefer PKU's unsafe (usually compliant) response over the safe one?"""

import json, sys, gzip, random
import numpy as np
from mobench.tasks.scorers import build_scorer
from mobench.models import scoring_threads

spec = sys.argv[1]
n = int(sys.argv[2])
scorer = build_scorer(spec, "helpful", device="cpu", dtype="float32")
rows = [
    json.loads(l)
    for l in gzip.open(
        "/work/shared/data/pku-saferlhf/pku_saferlhf_test_safety_pairs_5135.jsonl.gz", "rt"
    )
]
random.Random(1).shuffle(rows)
rows = rows[:n]
conv = [[{"role": "user", "content": r["prompt"]}] for r in rows]
with scoring_threads("cpu"):
    s0 = np.concatenate(
        [
            scorer.score(conv[i : i + 32], [r["response_0"] for r in rows[i : i + 32]])
            for i in range(0, n, 32)
        ]
    )
    s1 = np.concatenate(
        [
            scorer.score(conv[i : i + 32], [r["response_1"] for r in rows[i : i + 32]])
            for i in range(0, n, 32)
        ]
    )
print(
    "pairs",
    n,
    "prefers unsafe",
    (s1 > s0).mean().round(3),
    "mean gap unsafe-safe %.2f" % (s1 - s0).mean(),
)
