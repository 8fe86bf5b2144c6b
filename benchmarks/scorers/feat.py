"""Featurise (prompt, response) with frozen SmolLM2-135M-Instruct: per-layer mean over response
tokens, mean over all tokens, last token. Writes NPZ with features and pair metadata."""

import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
from mobench.tasks.preference import select_part
from mobench.tasks.trained_scorer import encode_conversation, load_labelled_pairs

from mobench.models import load_causal_lm, load_tokenizer

which, n_train, n_eval, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
files = {
    "pku": (
        "/work/shared/data/pku-saferlhf/pku_saferlhf_test_safety_pairs_5135.jsonl.gz",
        "harmless",
    ),
    "hh": ("/work/shared/data/hh-rlhf/helpful-base/test.jsonl.gz", "helpful"),
}
path, obj = files[which]
pairs = load_labelled_pairs(path, obj)
rng = np.random.default_rng(0)
sc = select_part(pairs, "scorer")
tk = select_part(pairs, "task")
sc = [sc[i] for i in rng.permutation(len(sc))[:n_train]]
tk = [tk[i] for i in rng.permutation(len(tk))[:n_eval]]
tok = load_tokenizer("smollm2-135m-instruct")
model, _ = load_causal_lm("smollm2-135m-instruct")
LAYERS = [4, 8, 12, 16, 20, 24, 27, 30]
ML = 256


def feats(prompt, response):
    ids = encode_conversation(tok, prompt, response, ML)
    pre = tok.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    npre = len(tok(str(pre), add_special_tokens=False)["input_ids"])
    full = len(encode_conversation(tok, prompt, response, 10**6))
    start = max(0, npre - (full - len(ids)))
    with torch.inference_mode():
        hs = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    H = torch.stack([hs[l][0] for l in LAYERS]).float()  # L x T x D
    resp = H[:, start:].mean(1) if start < len(ids) - 1 else H[:, -1]
    return (
        np.stack([resp.numpy(), H.mean(1).numpy(), H[:, -1].numpy()]),
        len(ids) - start,
        len(response),
    )


res = {}
t0 = time.perf_counter()
for name, ps in (("train", sc), ("eval", tk)):
    F = []
    L = []
    C = []
    lab = []
    pid = []
    for k, p in enumerate(ps):
        lab.append(p.labels[obj])
        pid.append(p.id)
        for r in p.responses:
            f, ntok, nch = feats(p.prompt, r)
            F.append(f)
            L.append(ntok)
            C.append(nch)
        if k % 50 == 0:
            print(name, k, f"{time.perf_counter() - t0:.0f}s", flush=True)
    if not ps:
        continue
    res[name + "_X"] = np.array(F, dtype=np.float32).reshape(len(ps), 2, *F[0].shape)
    res[name + "_ntok"] = np.array(L).reshape(len(ps), 2)
    res[name + "_nch"] = np.array(C).reshape(len(ps), 2)
    res[name + "_label"] = np.array(lab)
    res[name + "_id"] = np.array(pid)
np.savez(out, layers=np.array(LAYERS), **res)
print("done", time.perf_counter() - t0)
