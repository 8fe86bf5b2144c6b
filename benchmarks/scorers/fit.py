"""Choose (layer, pool, l2) by 5-fold CV grouped by first user turn on the scorer-half training
pairs only; then report held-out (task half) pairwise accuracy for every config, the score-length
correlation, and a BoW baseline trained on the same pairs."""

import collections
import json
import re
import sys

import numpy as np
from mobench.tasks.preference import first_user_turn
from mobench.tasks.probe_scorer import fit_bradley_terry
from mobench.tasks.trained_scorer import load_labelled_pairs

which, npz = sys.argv[1], sys.argv[2]
files = {
    "pku": (
        "/work/shared/data/pku-saferlhf/pku_saferlhf_test_safety_pairs_5135.jsonl.gz",
        "harmless",
    ),
    "hh": ("/work/shared/data/hh-rlhf/helpful-base/test.jsonl.gz", "helpful"),
}
path, obj = files[which]
d = np.load(npz)
pairs = {p.id: p for p in load_labelled_pairs(path, obj)}
tr = [pairs[i] for i in d["train_id"]]
ev = [pairs[i] for i in d["eval_id"]]
import hashlib

groups = np.array([hashlib.sha256(first_user_turn(p.prompt).encode()).digest()[0] % 5 for p in tr])


def cm(X, lab):  # chosen-minus-rejected rows
    idx = np.arange(len(lab))
    return X[idx, lab], X[idx, 1 - lab]


layers = list(d["layers"])
pools = ["response", "mean", "last"]
res = []
for li, L in enumerate(layers):
    for pi, pool in enumerate(pools):
        Xtr = d["train_X"][:, :, pi, li].astype(np.float64)
        Xev = d["eval_X"][:, :, pi, li].astype(np.float64)
        c, r = cm(Xtr, d["train_label"])
        ce, re_ = cm(Xev, d["eval_label"])
        for l2 in (0.01, 0.1, 1.0):
            cv = []
            for g in range(5):
                m = groups != g
                allx = np.concatenate([c[m], r[m]])
                mu, sd = allx.mean(0), allx.std(0) + 1e-12
                w = fit_bradley_terry((c[m] - r[m]) / sd, l2)
                cv.append(np.mean(((c[~m] - r[~m]) / sd) @ w > 0))
            allx = np.concatenate([c, r])
            mu, sd = allx.mean(0), allx.std(0) + 1e-12
            w = fit_bradley_terry((c - r) / sd, l2)
            se, sr = ((ce - mu) / sd) @ w, ((re_ - mu) / sd) @ w
            acc = np.mean(se > sr)
            lens = np.concatenate(
                [
                    d["eval_nch"][np.arange(len(ev)), d["eval_label"]],
                    d["eval_nch"][np.arange(len(ev)), 1 - d["eval_label"]],
                ]
            )
            lc = np.corrcoef(np.concatenate([se, sr]), lens)[0, 1]
            res.append(
                dict(
                    layer=int(L),
                    pool=pool,
                    l2=l2,
                    cv=float(np.mean(cv)),
                    heldout=float(acc),
                    lencorr=float(lc),
                )
            )
            print(res[-1], flush=True)
best = max(res, key=lambda r: r["cv"])
print("CHOSEN BY CV:", best, "eval n =", len(ev), "train n =", len(tr))
# BoW baseline on the same train/eval pairs
tok = lambda s: re.findall(r"[a-z']+", s.lower())


def lab_resp(p):
    l = p.labels[obj]
    return p.responses[l], p.responses[1 - l]


cnt = collections.Counter(w for p in tr for s in p.responses for w in set(tok(s)))
vocab = {w: i for i, (w, _) in enumerate(cnt.most_common(3000))}


def feat(s):
    v = np.zeros(len(vocab) + 1)
    ws = tok(s)
    for w in ws:
        if w in vocab:
            v[vocab[w]] = 1
    v[-1] = np.log1p(len(ws))
    return v


def diffs(ps):
    return np.array([feat(a) - feat(b) for a, b in map(lab_resp, ps)])


for l2 in (0.001, 0.01, 0.1):
    w = fit_bradley_terry(diffs(tr), l2)
    print("BoW l2", l2, "heldout", float(np.mean(diffs(ev) @ w > 0)))
lc = [len(a) > len(b) for a, b in map(lab_resp, ev)]
print("longer response chosen (eval):", float(np.mean(lc)))
json.dump({"configs": res, "chosen": best}, open(npz.replace(".npz", "_fit.json"), "w"), indent=1)
