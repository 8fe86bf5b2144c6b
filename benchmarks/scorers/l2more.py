import sys

import numpy as np
from mobench.tasks.preference import first_user_turn
from mobench.tasks.probe_scorer import fit_bradley_terry
from mobench.tasks.trained_scorer import load_labelled_pairs

d = np.load("/tmp/scorer_work/pku.npz")
pairs = {
    p.id: p
    for p in load_labelled_pairs(
        "/work/shared/data/pku-saferlhf/pku_saferlhf_test_safety_pairs_5135.jsonl.gz", "harmless"
    )
}
tr = [pairs[i] for i in d["train_id"]]
import hashlib

groups = np.array([hashlib.sha256(first_user_turn(p.prompt).encode()).digest()[0] % 5 for p in tr])
li = list(d["layers"]).index(int(sys.argv[1]))
X = d["train_X"][:, :, 0, li].astype(np.float64)
lab = d["train_label"]
idx = np.arange(len(lab))
c, r = X[idx, lab], X[idx, 1 - lab]
Xe = d["eval_X"][:, :, 0, li].astype(np.float64)
le = d["eval_label"]
ie = np.arange(len(le))
ce, re_ = Xe[ie, le], Xe[ie, 1 - le]
for l2 in (1.0, 3.0, 10.0, 30.0):
    cv = []
    for g in range(5):
        m = groups != g
        sd = np.concatenate([c[m], r[m]]).std(0)
        w = fit_bradley_terry((c[m] - r[m]) / sd, l2)
        cv.append(np.mean(((c[~m] - r[~m]) / sd) @ w > 0))
    sd = np.concatenate([c, r]).std(0)
    w = fit_bradley_terry((c - r) / sd, l2)
    print(
        sys.argv[1],
        l2,
        "cv",
        round(float(np.mean(cv)), 4),
        "heldout",
        float(np.mean(((ce - re_) / sd) @ w > 0)),
    )
# learning curve at l2=1: train on first n pairs
for n in (100, 160, 300, 500, 700):
    sd = np.concatenate([c[:n], r[:n]]).std(0)
    w = fit_bradley_terry((c[:n] - r[:n]) / sd, 1.0)
    print("n", n, "heldout", float(np.mean(((ce - re_) / sd) @ w > 0)))
