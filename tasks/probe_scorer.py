"""Frozen-feature probes: a linear reward head on a frozen local LM's hidden states.

Why: the ``trained`` scorers (LoRA on the last layers of SmolLM2-135M, trl's RewardTrainer, a
few hundred pairs) did not learn PKU-SafeRLHF's safer label at CPU scale (50 % on the task half,
chance). A probe never backpropagates through the LM: training is one forward per response and
a logistic fit of a few seconds, so it can afford more pairs on 2 CPU cores, and its fit is
convex (no seed- or step-dependent optimisation to go wrong).

Model: ``h(x, y)`` is the hidden state after layer ``layer`` of the frozen backbone over the
(prompt, response) conversation in the backbone's chat template, averaged over the response's
tokens (``pool=response``), over every token (``pool=mean``) or taken at the last token
(``pool=last``). The reward is ``r = w . (h - mu) / sigma`` with ``mu, sigma`` the training
features' per-dimension mean and standard deviation (so the L2 penalty treats the dimensions
alike). ``w`` is fitted by Bradley-Terry maximum likelihood on the training pairs:
``P(chosen > rejected) = sigmoid(r_chosen - r_rejected)``, plus ``l2 / 2 * |w|^2``; ``mu``
cancels in the difference, so it has no intercept. Scores are standardised with the raw rewards
of the held-out responses (mean 0, std 1), as the ``trained`` scorers are.

A recipe (:class:`ProbeRecipe`) is hashed (data by content, backbone by weights) into the
folder ``<mobench cache>/scorers/probe-OBJECTIVE-HASH``, which holds ``probe.safetensors`` (w,
mu, sigma) and ``scorer.json`` (recipe, held-out accuracy, the held-out score-length
correlation, standardisation). Held-out pairs are whole first-user-turn groups kept out of
training; the recipe's ``part`` picks one half of the tasks' partition, so a scorer trained on
``scorer`` never sees a conversation the task's ARMs train or are tested on.

Spec strings: ``probe:BACKBONE?data=FILE[,FILE...]&KEY=VALUE...`` (keys are
:class:`ProbeRecipe` fields) or ``probe:DIR`` (a folder this module made).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobench.config import ConfigError
from mobench.data import Conversation, DataError, PreferencePair
from mobench.interfaces import Scorer

log = logging.getLogger("mobench")

SCORER_FILE = "scorer.json"
WEIGHTS_FILE = "probe.safetensors"
POOLS = ("response", "mean", "last")


@dataclass(frozen=True)
class ProbeRecipe:
    """How to fit one objective's probe (every field is part of the cache hash)."""

    objective: str = field(metadata={"help": "the label read from each row (helpful, harmless)"})
    data: tuple[str, ...] = field(
        default=(), metadata={"help": "HH-RLHF / PKU-SafeRLHF files in their upstream schema"}
    )
    backbone: str = field(
        default="smollm2-135m-instruct", metadata={"help": "frozen causal LM giving the features"}
    )
    part: str | None = field(
        default="scorer",
        metadata={"help": "train on this half of the first-user-turn partition (task options)"},
    )
    train_pairs: int = field(default=600, metadata={"help": "training pairs (at most)"})
    heldout_pairs: int = field(default=200, metadata={"help": "held-out pairs for the accuracy"})
    max_length: int = field(
        default=256, metadata={"help": "tokens per rendered conversation; cut from the left"}
    )
    layer: int = field(
        default=20, metadata={"help": "hidden state after this many layers (0: the embeddings)"}
    )
    pool: str = field(default="response", metadata={"help": "response | mean | last"})
    l2: float = field(default=1.0, metadata={"help": "L2 penalty on the head (standardised)"})
    seed: int = field(default=0, metadata={"help": "held-out choice and training order"})

    def to_json(self) -> dict[str, Any]:
        obj = dataclasses.asdict(self)
        obj["data"] = list(self.data)
        return obj


_INT_FIELDS = {"train_pairs", "heldout_pairs", "max_length", "layer", "seed"}
_FLOAT_FIELDS = {"l2"}


def parse_probe_recipe(source: str, objective: str) -> ProbeRecipe:
    """``BACKBONE?data=F1,F2&layer=12...`` -> a recipe for ``objective``."""
    backbone, _, query = source.partition("?")
    fields = {f.name for f in dataclasses.fields(ProbeRecipe)} - {"objective", "backbone"}
    values: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(
                f"probe scorer '{source}': cannot use '{item}'; keys: {', '.join(sorted(fields))}"
            )
        try:
            if key == "data":
                values[key] = tuple(v for v in raw.split(",") if v)
            elif key == "part":
                values[key] = None if raw in ("", "none", "null") else raw
            elif key == "pool":
                values[key] = raw
            elif key in _INT_FIELDS:
                values[key] = int(raw)
            elif key in _FLOAT_FIELDS:
                values[key] = float(raw)
        except ValueError:
            raise ConfigError(f"probe scorer '{source}': {key}={raw} is not a number") from None
    if not backbone:
        raise ConfigError(f"probe scorer '{source}': no backbone; use probe:MODEL?data=FILE")
    recipe = ProbeRecipe(objective=objective, backbone=backbone, **values)
    check_probe_recipe(recipe)
    return recipe


def check_probe_recipe(recipe: ProbeRecipe) -> None:
    if not recipe.data:
        raise ConfigError(
            f"probe scorer for {recipe.objective}: no data; give data=FILE[,FILE] (HH-RLHF or "
            "PKU-SafeRLHF files)"
        )
    if recipe.part not in (None, "task", "scorer"):
        raise ConfigError(f"probe scorer: part={recipe.part!r}; use scorer, task or none")
    if recipe.pool not in POOLS:
        raise ConfigError(f"probe scorer: pool={recipe.pool!r}; use {', '.join(POOLS)}")
    for name in ("train_pairs", "heldout_pairs", "max_length"):
        if getattr(recipe, name) < 1:
            raise ConfigError(f"probe scorer: {name} must be at least 1")
    if recipe.layer < 0:
        raise ConfigError("probe scorer: layer must be 0 (embeddings) or more")
    if not recipe.l2 > 0:
        raise ConfigError("probe scorer: l2 must be positive (the fit needs the penalty)")


def probe_recipe_hash(recipe: ProbeRecipe) -> str:
    """Hash of the recipe with every data file replaced by its content hash and the backbone by
    its weights' identity."""
    from mobench.tasks.trained_scorer import file_digest

    from mobench.models import model_identity

    for f in recipe.data:
        if not Path(f).is_file():
            raise DataError(f"probe scorer data file {f} does not exist")
    obj = recipe.to_json()
    obj["data"] = [file_digest(f) for f in recipe.data]
    obj["backbone"] = model_identity(recipe.backbone)
    obj["kind"] = "probe"
    text = json.dumps(obj, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- features


class FrozenFeatures:
    """Pooled hidden states of a frozen causal LM over (prompt, response) conversations."""

    def __init__(
        self,
        backbone: str,
        *,
        layer: int,
        pool: str,
        max_length: int,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
    ) -> None:
        from mobench.models import load_causal_lm, load_tokenizer

        self.tokenizer = load_tokenizer(backbone)
        self.model, _ = load_causal_lm(backbone, dtype=dtype, device=device)
        n_layers = int(self.model.config.num_hidden_layers)
        if layer > n_layers:
            raise ConfigError(f"probe scorer: layer={layer}, but {backbone} has {n_layers} layers")
        self.layer, self.pool, self.max_length = layer, pool, max_length
        self.device, self.batch_size = device, batch_size
        self.rows_run = 0  # sequences run through the backbone (duplicates are run once)

    def encode(self, prompt: Conversation, response: str) -> tuple[list[int], int]:
        """(token ids cut from the left to max_length, index of the response's first token)."""
        from mobench.tasks.trained_scorer import encode_conversation

        full = encode_conversation(self.tokenizer, prompt, response, 10**9)
        if getattr(self.tokenizer, "chat_template", None):
            head = str(
                self.tokenizer.apply_chat_template(
                    list(prompt), tokenize=False, add_generation_prompt=True
                )
            )
            n_head = len(self.tokenizer(head, add_special_tokens=False)["input_ids"])
        else:
            n_head = len(encode_conversation(self.tokenizer, prompt, "", 10**9))
        ids = full[-self.max_length :]
        start = n_head - (len(full) - len(ids))
        # an empty (or wholly cut) response: pool its last token, where a reply would begin
        return ids, min(max(start, 0), len(ids) - 1)

    def __call__(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        """Features, shape (N, hidden), float64."""
        feats, inverse = self.distinct(prompts, responses)
        return feats[inverse]

    def distinct(
        self, prompts: Sequence[Conversation], responses: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(features of each distinct (prompt, response), shape (U, hidden); for each input
        row, the index of its distinct row).

        Each distinct pair is run once: a front often repeats an answer across alphas (the
        unguided base, all of them), and rows of one batch can differ in the last bits (GEMM
        and GEMV blocking), which would give identical answers different scores and a flat
        front a spurious rank order. Callers compute on the distinct rows and then copy."""
        keys = [json.dumps([p, r], sort_keys=True) for p, r in zip(prompts, responses, strict=True)]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = list(first.values())
        feats = self._run([prompts[i] for i in unique], [responses[i] for i in unique])
        self.rows_run += len(unique)
        slot = {k: j for j, k in enumerate(first)}
        return feats, np.array([slot[k] for k in keys], dtype=np.int64)

    def _run(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        import torch

        enc = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        width = int(self.model.config.hidden_size)
        out = np.zeros((len(enc), width), dtype=np.float64)
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))
        pad = int(self.tokenizer.pad_token_id)
        backbone = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                n = max(len(enc[i][0]) for i in idx)
                # right padding: a causal LM's real tokens never attend to the pads after them,
                # so a row's features do not depend on the batch it is in
                ids = torch.full((len(idx), n), pad, dtype=torch.long)
                attn = torch.zeros((len(idx), n), dtype=torch.long)
                pool = torch.zeros((len(idx), n), dtype=torch.float32)
                for row, i in enumerate(idx):
                    tokens, start = enc[i]
                    ids[row, : len(tokens)] = torch.tensor(tokens)
                    attn[row, : len(tokens)] = 1
                    lo = {"response": start, "mean": 0, "last": len(tokens) - 1}[self.pool]
                    pool[row, lo : len(tokens)] = 1.0
                hidden = backbone(
                    input_ids=ids.to(self.device),
                    attention_mask=attn.to(self.device),
                    output_hidden_states=True,
                ).hidden_states[self.layer]
                w = (pool / pool.sum(-1, keepdim=True)).to(self.device)
                feats = torch.einsum("bt,btd->bd", w, hidden.float())
                out[idx] = feats.cpu().double().numpy()
        return out


# ---------------------------------------------------------------------------------- the fit


def fit_bradley_terry(diff: np.ndarray, l2: float) -> np.ndarray:
    """argmin_w  mean_i log(1 + exp(-w . diff_i)) + l2 / 2 |w|^2  (diff = chosen - rejected).

    Convex; L-BFGS in float64 from w = 0, so the fit is deterministic."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    n = len(diff)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        m = diff @ w
        value = -float(np.mean(log_expit(m))) + 0.5 * l2 * float(w @ w)
        grad = -(diff.T @ expit(-m)) / n + l2 * w
        return value, grad

    res = minimize(loss, np.zeros(diff.shape[1]), jac=True, method="L-BFGS-B")
    if not res.success:
        raise RuntimeError(f"probe fit did not converge: {res.message}")
    return np.asarray(res.x, dtype=np.float64)


class ProbeScorer(Scorer):
    """A probe fitted by :func:`train_probe`, loaded from its folder."""

    def __init__(
        self,
        folder: str | Path,
        objective: str,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
    ) -> None:
        from safetensors.numpy import load_file

        self.folder = Path(folder)
        meta_file = self.folder / SCORER_FILE
        if not meta_file.is_file() or not (self.folder / WEIGHTS_FILE).is_file():
            raise ConfigError(
                f"{self.folder} has no {SCORER_FILE} and {WEIGHTS_FILE}; not a probe scorer folder"
            )
        self.meta = json.loads(meta_file.read_text())
        recipe = self.meta["recipe"]
        if recipe["objective"] != objective:
            raise ConfigError(
                f"probe scorer {self.folder} scores '{recipe['objective']}', not '{objective}'"
            )
        self.objective = objective
        tensors = load_file(str(self.folder / WEIGHTS_FILE))
        self.w = tensors["w"].astype(np.float64)
        self.mu = tensors["mu"].astype(np.float64)
        self.sigma = tensors["sigma"].astype(np.float64)
        self.features = FrozenFeatures(
            recipe["backbone"],
            layer=int(recipe["layer"]),
            pool=str(recipe["pool"]),
            max_length=int(recipe["max_length"]),
            device=device,
            dtype=dtype,
            batch_size=batch_size,
        )
        self.mean = float(self.meta["standardize"]["mean"])
        self.std = float(self.meta["standardize"]["std"])
        self.fingerprint = f"probe:{self.folder.name}|dtype={dtype}"

    @property
    def info(self) -> dict[str, Any]:
        m = self.meta
        return {
            "kind": "probe (linear Bradley-Terry head on frozen LM features)",
            "folder": str(self.folder),
            "heldout_accuracy": m["heldout_accuracy"],
            "heldout_pairs": m["heldout_pairs"],
            "heldout_length_correlation": m["heldout_length_correlation"],
            "train_pairs": m["train_pairs"],
            "data": m["data"],
            "backbone": m["recipe"]["backbone"],
        }

    def raw_from_features(self, feats: np.ndarray) -> np.ndarray:
        return np.asarray(((feats - self.mu) / self.sigma) @ self.w, dtype=np.float64)

    def raw_scores(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        """Rewards before standardisation, shape (N,)."""
        feats, inverse = self.features.distinct(prompts, responses)
        # score the distinct rows, then copy: identical answers get bit-identical scores
        return self.raw_from_features(feats)[inverse]

    def score(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        return (self.raw_scores(prompts, responses) - self.mean) / self.std


# -------------------------------------------------------------------------------- training


def probe_folder(recipe: ProbeRecipe, root: Path | None = None) -> Path:
    from mobench.tasks.trained_scorer import scorers_root

    return (root or scorers_root()) / f"probe-{recipe.objective}-{probe_recipe_hash(recipe)}"


def ensure_probe(recipe: ProbeRecipe, root: Path | None = None, *, device: str = "cpu") -> Path:
    """The recipe's probe folder, fitting it first if the cache does not hold it."""
    folder = probe_folder(recipe, root)
    if (folder / SCORER_FILE).is_file():
        return folder
    return train_probe(recipe, folder, device=device)


def _pair_arrays(
    pairs: Sequence[PreferencePair], objective: str
) -> tuple[list[Conversation], list[str], int]:
    """Prompts and responses, all chosen first and then all rejected, and the pair count."""
    label = [p.labels[objective] for p in pairs]
    chosen = [p.responses[lab] for p, lab in zip(pairs, label, strict=True)]
    rejected = [p.responses[1 - lab] for p, lab in zip(pairs, label, strict=True)]
    return [p.prompt for p in pairs] * 2, chosen + rejected, len(pairs)


def train_probe(recipe: ProbeRecipe, out_dir: Path, *, device: str = "cpu") -> Path:
    """Featurise the recipe's pairs with the frozen backbone (fp32, one CPU thread, as scoring
    does), fit the Bradley-Terry head and save it in ``out_dir``; returns ``out_dir``."""
    from mobench.tasks.preference import select_part
    from mobench.tasks.trained_scorer import heldout_split, load_labelled_pairs
    from safetensors.numpy import save_file

    from mobench.models import scoring_threads

    check_probe_recipe(recipe)
    pairs: list[PreferencePair] = []
    per_file: dict[str, int] = {}
    for f in recipe.data:
        rows = select_part(load_labelled_pairs(f, recipe.objective), recipe.part)
        per_file[str(f)] = len(rows)
        pairs.extend(rows)
    train, heldout = heldout_split(pairs, recipe.heldout_pairs, recipe.train_pairs, recipe.seed)
    if len(heldout) < min(20, recipe.heldout_pairs) or not train:
        raise DataError(
            f"probe scorer for {recipe.objective}: only {len(pairs)} labelled pairs in "
            f"{', '.join(recipe.data)} (part={recipe.part}); need held-out and training pairs"
        )
    log.info(
        "fitting the %s probe on %d pairs (%d held out), backbone %s layer %d",
        recipe.objective,
        len(train),
        len(heldout),
        recipe.backbone,
        recipe.layer,
    )
    t0 = time.perf_counter()
    features = FrozenFeatures(
        recipe.backbone, layer=recipe.layer, pool=recipe.pool, max_length=recipe.max_length
    )
    prompts, responses, n = _pair_arrays(train, recipe.objective)
    with scoring_threads(device):
        x = features(prompts, responses)
    featurise_s = time.perf_counter() - t0
    mu = x.mean(axis=0)
    sigma = x.std(axis=0)
    sigma[sigma == 0] = 1.0  # a constant dimension carries nothing; keep it out of the fit
    z = (x - mu) / sigma
    w = fit_bradley_terry(z[:n] - z[n:], recipe.l2)
    train_acc = float(np.mean(z[:n] @ w > z[n:] @ w))
    del features
    tmp = Path(tempfile.mkdtemp(prefix=".probe-", dir=_ensure_parent(out_dir)))
    try:
        save_file({"w": w, "mu": mu, "sigma": sigma}, str(tmp / WEIGHTS_FILE))
        meta: dict[str, Any] = {
            "recipe": recipe.to_json(),
            "recipe_hash": probe_recipe_hash(recipe),
            "data": per_file,
            "train_pairs": len(train),
            "heldout_pairs": len(heldout),
            "train_accuracy": train_acc,
            "standardize": {"mean": 0.0, "std": 1.0},
        }
        (tmp / SCORER_FILE).write_text(json.dumps(meta, indent=2))
        # held-out numbers through the scoring code path itself (what a run will use)
        scorer = ProbeScorer(tmp, recipe.objective, device=device, dtype="float32")
        h_prompts, h_responses, m = _pair_arrays(heldout, recipe.objective)
        with scoring_threads(device):
            raw = scorer.raw_scores(h_prompts, h_responses)
        meta["heldout_accuracy"] = float(np.mean(raw[:m] > raw[m:]))
        meta["heldout_ties"] = int(np.sum(raw[:m] == raw[m:]))
        # how much of the score is response length (a reward hack the scorer would pass on)
        lengths = np.array([len(r) for r in h_responses], dtype=np.float64)
        corr = np.corrcoef(raw, lengths)[0, 1] if raw.std() > 0 and lengths.std() > 0 else 0.0
        meta["heldout_length_correlation"] = float(corr)
        meta["heldout_longer_chosen"] = float(np.mean(lengths[:m] > lengths[m:]))
        std = float(raw.std())
        meta["standardize"] = {"mean": float(raw.mean()), "std": std if std > 0 else 1.0}
        meta["standardize_note"] = "mean/std of the raw rewards of the held-out responses"
        meta["train_s"] = time.perf_counter() - t0
        meta["featurise_train_s"] = featurise_s
        (tmp / SCORER_FILE).write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "%s probe: held-out pair accuracy %.3f on %d pairs (%s)",
        recipe.objective,
        meta["heldout_accuracy"],
        len(heldout),
        out_dir,
    )
    return out_dir


def _ensure_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def build_probe_scorer(
    objective: str, source: str, *, device: str = "cpu", dtype: str = "float32", **kwargs: Any
) -> ProbeScorer:
    """Scorer kind ``probe``: a probe folder, or a recipe string fitted on first use (cached)."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        folder = ensure_probe(parse_probe_recipe(source, objective), device=device)
    return ProbeScorer(folder, objective, device=device, dtype=dtype, **kwargs)


def probe_identity(source: str, objective: str) -> str:
    """What identifies a ``probe:`` scorer in caches: its recipe hash or its folder's."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        meta = folder / SCORER_FILE
        weights = folder / WEIGHTS_FILE
        if not meta.is_file() or not weights.is_file():
            raise ConfigError(f"{folder} has no {SCORER_FILE} and {WEIGHTS_FILE}; not a probe")
        digest = hashlib.sha256(meta.read_bytes() + weights.read_bytes()).hexdigest()[:16]
        return "probe-folder:" + digest
    return "probe-recipe:" + probe_recipe_hash(parse_probe_recipe(source, objective))
