"""The existing trained scorers on the same task-half held-out pairs as the probe measurement."""

import json
import sys

import numpy as np
import torch

torch.set_num_threads(1)
from mobench.tasks.trained_scorer import TrainedRewardScorer, load_labelled_pairs

which, npz, folder = sys.argv[1], sys.argv[2], sys.argv[3]
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
ev = [pairs[i] for i in d["eval_id"]]
s = TrainedRewardScorer(folder, obj, dtype="float32")
lab = [p.labels[obj] for p in ev]
ch = s.raw_scores([p.prompt for p in ev], [p.responses[l] for p, l in zip(ev, lab)])
rj = s.raw_scores([p.prompt for p in ev], [p.responses[1 - l] for p, l in zip(ev, lab)])
lens = np.array(
    [len(p.responses[l]) for p, l in zip(ev, lab)]
    + [len(p.responses[1 - l]) for p, l in zip(ev, lab)]
)
print(
    json.dumps(
        {
            "folder": folder,
            "n": len(ev),
            "acc": float(np.mean(ch > rj)),
            "lencorr": float(np.corrcoef(np.concatenate([ch, rj]), lens)[0, 1]),
        }
    )
)
