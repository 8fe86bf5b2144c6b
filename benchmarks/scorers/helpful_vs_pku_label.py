"""Does a helpful scorer agree with PKU-SafeRLHF's own human helpfulness label?

The only local rows that keep PKU's better_response_id are the 32 raw v0 rows of
``pku_saferlhf_v0_sample32.json`` (the 5135-pair file lost it). Per scorer: the share of the
pairs where the response PKU's annotators found more helpful gets the higher score, overall and
on the pairs with exactly one safe response (where helpfulness and harmlessness can conflict).

    python benchmarks/scorers/helpful_vs_pku_label.py SPEC [SPEC ...]
"""

import json
import sys

import numpy as np
from mobench.tasks.formats import load_pku_file
from mobench.tasks.scorers import build_scorer

from mobench.models import scoring_threads

SAMPLE = "../shared/data/pku-saferlhf/pku_saferlhf_v0_sample32.json"
raw = json.load(open(SAMPLE))
pairs = load_pku_file(SAMPLE)
one_safe = np.array([r["is_response_0_safe"] != r["is_response_1_safe"] for r in raw])
better = np.array([p.labels["helpful"] for p in pairs])
better_is_unsafe = np.array(
    [not r[f"is_response_{r['better_response_id']}_safe"] for r in raw]
)
print(
    f"{len(pairs)} pairs, {one_safe.sum()} with one safe response; there PKU's more helpful "
    f"response is the unsafe one in {better_is_unsafe[one_safe].sum()} of {one_safe.sum()}"
)
for spec in sys.argv[1:]:
    scorer = build_scorer(spec, "helpful", device="cpu", dtype="float32")
    with scoring_threads("cpu"):
        s = [scorer.score([p.prompt] * 2, list(p.responses)) for p in pairs]
    prefers = np.array([int(v[1] > v[0]) for v in s])
    agree = prefers == better
    print(
        json.dumps(
            {
                "spec": spec,
                "agrees_with_pku_helpful_label": f"{agree.sum()} / {len(agree)}",
                "on_one_safe_pairs": f"{agree[one_safe].sum()} / {one_safe.sum()}",
            }
        ),
        flush=True,
    )
