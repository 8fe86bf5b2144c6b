"""The fitted preset probe on the stored task-half features (layer 20, response mean) of the
300 evaluation pairs, plus a check on 10 pairs that the stored features equal the scorer's."""

import json
import sys

import numpy as np
from mobench.tasks.probe_scorer import ProbeScorer
from mobench.tasks.trained_scorer import load_labelled_pairs

folder = sys.argv[1]
d = np.load("/tmp/scorer_work/pku.npz")
li = list(d["layers"]).index(20)
s = ProbeScorer(folder, "harmless")
X = d["eval_X"][:, :, 0, li].astype(np.float64)
lab = d["eval_label"]
i = np.arange(len(lab))
ch, rj = s.raw_from_features(X[i, lab]), s.raw_from_features(X[i, 1 - lab])
pairs = {
    p.id: p
    for p in load_labelled_pairs(
        "/work/shared/data/pku-saferlhf/pku_saferlhf_test_safety_pairs_5135.jsonl.gz", "harmless"
    )
}
ev = [pairs[k] for k in d["eval_id"][:10]]
direct = s.raw_scores([p.prompt for p in ev], [p.responses[p.labels["harmless"]] for p in ev])
lens = np.concatenate([d["eval_nch"][i, lab], d["eval_nch"][i, 1 - lab]])
print(
    json.dumps(
        {
            "n": len(lab),
            "acc": float(np.mean(ch > rj)),
            "wins": int(np.sum(ch > rj)),
            "lencorr": float(np.corrcoef(np.concatenate([ch, rj]), lens)[0, 1]),
            "max_abs_diff_stored_vs_scorer": float(np.abs(direct - ch[:10]).max()),
            "meta": {
                k: s.meta[k]
                for k in (
                    "heldout_accuracy",
                    "heldout_pairs",
                    "train_pairs",
                    "heldout_length_correlation",
                    "train_s",
                    "standardize",
                )
            },
        },
        indent=1,
    )
)
