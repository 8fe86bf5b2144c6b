"""The PKU harmless probe and the trained harmless scorer on 100 HH harmless-base task-half pairs
(the helpful mini preset relabels every pair, harmlessness included, with MINI_HARMLESS_SCORER)."""

import json
import sys

import numpy as np
import torch

torch.set_num_threads(1)
from mobench.tasks.preference import select_part
from mobench.tasks.probe_scorer import ProbeScorer
from mobench.tasks.trained_scorer import TrainedRewardScorer, load_labelled_pairs

pairs = select_part(
    load_labelled_pairs("/work/shared/data/hh-rlhf/harmless-base/test.jsonl.gz", "harmless"), "task"
)
rng = np.random.default_rng(0)
ev = [pairs[i] for i in rng.permutation(len(pairs))[:100]]
out = {"n": len(ev)}
for name, s in (
    ("probe", ProbeScorer(sys.argv[1], "harmless")),
    ("trained", TrainedRewardScorer(sys.argv[2], "harmless")),
):
    ch = s.raw_scores([p.prompt for p in ev], [p.responses[p.labels["harmless"]] for p in ev])
    rj = s.raw_scores([p.prompt for p in ev], [p.responses[1 - p.labels["harmless"]] for p in ev])
    out[name] = {"folder": sys.argv[1 if name == "probe" else 2], "acc": float(np.mean(ch > rj))}
    print(json.dumps(out), flush=True)
