"""Reward models that mobench trains itself, for tasks (or scales) without a ready reward model.

One scorer per objective: a small causal LM (SmolLM2-135M-Instruct in the ``mini`` presets) with
a scalar sequence-classification head, trained with trl's ``RewardTrainer`` (Bradley–Terry loss
on the reward difference of the chosen and rejected response) on real preference pairs. To fit a
2-core CPU, LoRA adapts only the last ``lora_layers`` transformer layers (q/k/v/o) and the head
is trained in full, so the backward pass stops ``lora_layers`` layers deep.

A recipe (:class:`ScorerRecipe`) names the backbone, the data files (HH-RLHF or PKU-SafeRLHF, in
their upstream schemas; the objective's label is read from each row) and the sizes. Its hash
(data by content, not by path) names the scorer's folder in ``<mobench cache>/scorers/``, so
the same recipe is trained once. The folder holds the adapter and head (safetensors) and
``scorer.json``: the recipe, the held-out pair accuracy, the training losses and the
standardisation statistics.

Held-out pairs are whole conversations kept apart from training (grouped by first user turn).
Scores are standardised, ``(raw - mean) / std`` with the mean and standard deviation of the raw
rewards of the held-out responses, so that scorers and HV reference points share one scale;
this changes no ranking and no accuracy.

Scorer spec strings: ``trained:BACKBONE?data=FILE[,FILE...]&KEY=VALUE...`` (a recipe; keys are
:class:`ScorerRecipe` fields) or ``trained:DIR`` (a folder made by ``mobench train-scorer``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobench.config import ConfigError
from mobench.data import Conversation, DataError, PreferencePair, iter_records
from mobench.interfaces import Scorer

log = logging.getLogger("mobench")

SCORER_FILE = "scorer.json"


@dataclass(frozen=True)
class ScorerRecipe:
    """How to train one objective's reward model (every field is part of the cache hash)."""

    objective: str = field(metadata={"help": "the label read from each row (helpful, harmless)"})
    data: tuple[str, ...] = field(
        default=(), metadata={"help": "HH-RLHF / PKU-SafeRLHF files in their upstream schema"}
    )
    backbone: str = field(
        default="smollm2-135m-instruct", metadata={"help": "causal LM under the reward head"}
    )
    part: str | None = field(
        default="scorer",
        metadata={"help": "train on this half of the first-user-turn partition (task options)"},
    )
    train_pairs: int = field(default=400, metadata={"help": "training pairs (at most)"})
    heldout_pairs: int = field(default=150, metadata={"help": "held-out pairs for the accuracy"})
    max_length: int = field(
        default=256, metadata={"help": "tokens per rendered conversation; cut from the left"}
    )
    epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs"})
    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW, linear decay"})
    batch_size: int = field(default=8, metadata={"help": "pairs per optimiser step"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (lora_alpha = 2 r)"})
    lora_layers: int = field(default=4, metadata={"help": "LoRA on the last N layers only"})
    seed: int = field(default=0, metadata={"help": "held-out choice, order, head init"})

    def to_json(self) -> dict[str, Any]:
        obj = dataclasses.asdict(self)
        obj["data"] = list(self.data)
        return obj


_INT_FIELDS = {
    "train_pairs",
    "heldout_pairs",
    "max_length",
    "batch_size",
    "lora_r",
    "lora_layers",
    "seed",
}
_FLOAT_FIELDS = {"epochs", "learning_rate"}


def parse_recipe(source: str, objective: str) -> ScorerRecipe:
    """``BACKBONE?data=F1,F2&train_pairs=600...`` -> a recipe for ``objective``."""
    backbone, _, query = source.partition("?")
    fields = {f.name for f in dataclasses.fields(ScorerRecipe)} - {"objective", "backbone"}
    values: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(
                f"trained scorer '{source}': cannot use '{item}'; keys: {', '.join(sorted(fields))}"
            )
        try:
            if key == "data":
                values[key] = tuple(v for v in raw.split(",") if v)
            elif key == "part":
                values[key] = None if raw in ("", "none", "null") else raw
            elif key in _INT_FIELDS:
                values[key] = int(raw)
            elif key in _FLOAT_FIELDS:
                values[key] = float(raw)
        except ValueError:
            raise ConfigError(f"trained scorer '{source}': {key}={raw} is not a number") from None
    recipe = ScorerRecipe(objective=objective, backbone=backbone, **values)
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: ScorerRecipe) -> None:
    if not recipe.data:
        raise ConfigError(
            f"trained scorer for {recipe.objective}: no data; give data=FILE[,FILE] (HH-RLHF or "
            "PKU-SafeRLHF files)"
        )
    if recipe.part not in (None, "task", "scorer"):
        raise ConfigError(f"trained scorer: part={recipe.part!r}; use scorer, task or none")
    for name in sorted(_INT_FIELDS - {"seed"}):  # sizes and counts
        if getattr(recipe, name) < 1:
            raise ConfigError(f"trained scorer: {name} must be at least 1")
    if recipe.epochs <= 0 or recipe.learning_rate <= 0:
        raise ConfigError("trained scorer: epochs and learning_rate must be positive")


# ------------------------------------------------------------------------------------ data


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe_hash(recipe: ScorerRecipe) -> str:
    """Hash of the recipe with every data file replaced by its content hash."""
    for f in recipe.data:
        if not Path(f).is_file():
            raise DataError(f"trained scorer data file {f} does not exist")
    obj = recipe.to_json()
    obj["data"] = [file_digest(f) for f in recipe.data]
    # the backbone's weights, not its name: an alias can stand for two copies
    from mobench.models import model_identity

    obj["backbone"] = model_identity(recipe.backbone)
    text = json.dumps(obj, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_labelled_pairs(path: str | Path, objective: str) -> list[PreferencePair]:
    """The pairs of an HH-RLHF or PKU-SafeRLHF file that carry a label for ``objective``.

    HH rows label their subset's objective (helpful-base -> helpful); upstream rows that are not
    usable pairs (about 1 %) are skipped and counted in the log. PKU rows label helpful
    (better_response_id) and harmless (safer_response_id).
    """
    from mobench.tasks.formats import load_hh_file, load_pku_file

    first = next(iter_records(path), None)
    if first is None:
        raise DataError(f"{path}: no rows")
    rec = first[1]
    if "chosen" in rec and "rejected" in rec:
        pairs, _ = load_hh_file(path, skip_malformed=True)
    elif "response_0" in rec:
        pairs = load_pku_file(path)
    else:
        raise DataError(
            f"{path}: row 1 is neither HH-RLHF (chosen, rejected) nor PKU-SafeRLHF (prompt, "
            f"response_0, response_1, ...); found columns {', '.join(sorted(rec))}"
        )
    labelled = [p for p in pairs if objective in p.labels]
    if not labelled:
        raise DataError(
            f"{path}: no row labels objective '{objective}' (HH subsets label helpful or "
            "harmless by their folder; PKU rows label helpful and harmless)"
        )
    return labelled


def heldout_split(
    pairs: Sequence[PreferencePair], n_heldout: int, n_train: int, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, heldout): whole first-user-turn groups go to held-out until it has n_heldout."""
    from mobench.tasks.preference import first_user_turn

    groups: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        groups.setdefault(first_user_turn(p.prompt), []).append(p)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    heldout: list[PreferencePair] = []
    train: list[PreferencePair] = []
    for i in order:
        target = heldout if len(heldout) < n_heldout else train
        target.extend(groups[keys[i]])
    rng = np.random.default_rng(seed + 1)
    train = [train[i] for i in rng.permutation(len(train))][:n_train]
    return train, heldout[:n_heldout]


def encode_conversation(
    tokenizer: Any, prompt: Conversation, response: str, max_length: int
) -> list[int]:
    """The (prompt, response) conversation in the backbone's chat template, as token ids, cut
    from the left to ``max_length`` (the response end, where the reward is read, survives)."""
    messages = [*prompt, {"role": "assistant", "content": response}]
    if getattr(tokenizer, "chat_template", None):
        text = str(tokenizer.apply_chat_template(messages, tokenize=False))
    else:
        from mobench.tasks.formats import render_hh_query

        text = render_hh_query(prompt) + " " + response
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[-max_length:]


# ---------------------------------------------------------------------------------- scorer


def _load_backbone_classifier(backbone: str, dtype: Any) -> tuple[Any, Any]:
    """(sequence-classification model with a fresh 1-output head, tokenizer) for a causal LM."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from mobench.models import load_tokenizer, resolve_model_source

    location = resolve_model_source(backbone).location
    tokenizer = load_tokenizer(backbone)
    tokenizer.padding_side = "right"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            location, num_labels=1, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


class TrainedRewardScorer(Scorer):
    """A reward model trained by :func:`train_reward_model`, loaded from its folder."""

    def __init__(
        self,
        folder: str | Path,
        objective: str,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
    ) -> None:
        import torch
        from peft import PeftModel

        from mobench.models import torch_dtype

        self.folder = Path(folder)
        meta_file = self.folder / SCORER_FILE
        if not meta_file.is_file():
            raise ConfigError(
                f"{self.folder} has no {SCORER_FILE}; train it with mobench train-scorer"
            )
        self.meta = json.loads(meta_file.read_text())
        recipe = self.meta["recipe"]
        if recipe["objective"] != objective:
            raise ConfigError(
                f"trained scorer {self.folder} scores '{recipe['objective']}', not '{objective}'"
            )
        self.objective = objective
        self.max_length = int(recipe["max_length"])
        self.batch_size = batch_size
        self.device = device
        model, self.tokenizer = _load_backbone_classifier(recipe["backbone"], torch.float32)
        model = PeftModel.from_pretrained(model, self.folder).merge_and_unload()
        self.model = model.to(device=device, dtype=torch_dtype(dtype)).eval()
        self.mean = float(self.meta["standardize"]["mean"])
        self.std = float(self.meta["standardize"]["std"])
        self.fingerprint = f"trained:{self.folder.name}|dtype={dtype}"

    @property
    def info(self) -> dict[str, Any]:
        m = self.meta
        return {
            "kind": "trained (mobench RewardTrainer)",
            "folder": str(self.folder),
            "heldout_accuracy": m["heldout_accuracy"],
            "heldout_pairs": m["heldout_pairs"],
            "train_pairs": m["train_pairs"],
            "data": m["data"],
            "backbone": m["recipe"]["backbone"],
        }

    def raw_scores(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        """Rewards before standardisation, shape (N,)."""
        import torch

        ids = [
            encode_conversation(self.tokenizer, p, r, self.max_length)
            for p, r in zip(prompts, responses, strict=True)
        ]
        out = np.zeros(len(ids), dtype=np.float64)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        pad = int(self.tokenizer.pad_token_id)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in idx)
                batch = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    batch[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = self.model(
                    input_ids=batch.to(self.device), attention_mask=mask.to(self.device)
                ).logits
                out[idx] = logits[:, 0].float().cpu().numpy()
        return out

    def score(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> np.ndarray:
        return (self.raw_scores(prompts, responses) - self.mean) / self.std


# -------------------------------------------------------------------------------- training


def scorers_root() -> Path:
    from mobench.models import cache_dir

    return cache_dir() / "scorers"


def recipe_folder(recipe: ScorerRecipe, root: Path | None = None) -> Path:
    return (root or scorers_root()) / f"{recipe.objective}-{recipe_hash(recipe)}"


def ensure_trained(recipe: ScorerRecipe, root: Path | None = None, *, device: str = "cpu") -> Path:
    """The recipe's scorer folder, training it first if the cache does not hold it."""
    folder = recipe_folder(recipe, root)
    if (folder / SCORER_FILE).is_file():
        return folder
    return train_reward_model(recipe, folder, device=device)


def train_reward_model(recipe: ScorerRecipe, out_dir: Path, *, device: str = "cpu") -> Path:
    """Train the recipe's reward model with trl's ``RewardTrainer`` and save it in ``out_dir``.

    Returns ``out_dir``, which then holds ``scorer.json`` (recipe, held-out accuracy, losses,
    standardisation) next to the adapter and head weights.
    """
    import torch
    from datasets import Dataset
    from mobench.tasks.preference import select_part
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from mobench.models import cpu_has_native_bf16

    check_recipe(recipe)
    pairs: list[PreferencePair] = []
    per_file: dict[str, int] = {}
    for f in recipe.data:
        rows = select_part(load_labelled_pairs(f, recipe.objective), recipe.part)
        per_file[str(f)] = len(rows)
        pairs.extend(rows)
    train, heldout = heldout_split(pairs, recipe.heldout_pairs, recipe.train_pairs, recipe.seed)
    if len(heldout) < min(20, recipe.heldout_pairs) or not train:
        raise DataError(
            f"trained scorer for {recipe.objective}: only {len(pairs)} labelled pairs in "
            f"{', '.join(recipe.data)} (part={recipe.part}); need held-out and training pairs"
        )
    log.info(
        "training the %s reward model on %d pairs (%d held out), backbone %s",
        recipe.objective,
        len(train),
        len(heldout),
        recipe.backbone,
    )
    torch.manual_seed(recipe.seed)  # the fresh head's init
    model, tokenizer = _load_backbone_classifier(recipe.backbone, torch.float32)
    n_layers = int(model.config.num_hidden_layers)
    layers = list(range(max(0, n_layers - recipe.lora_layers), n_layers))

    def encode(p: PreferencePair) -> dict[str, list[int]]:
        label = p.labels[recipe.objective]
        chosen, rejected = p.responses[label], p.responses[1 - label]
        return {
            "chosen_ids": encode_conversation(tokenizer, p.prompt, chosen, recipe.max_length),
            "rejected_ids": encode_conversation(tokenizer, p.prompt, rejected, recipe.max_length),
        }

    dataset = Dataset.from_list([encode(p) for p in train])
    on_cpu = device == "cpu"
    bf16 = (not on_cpu) or cpu_has_native_bf16()
    tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=_ensure_parent(out_dir)))
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # transformers 5 warns that trl's gradient_checkpointing argument is renamed
            warnings.simplefilter("ignore", FutureWarning)
            args = RewardConfig(
                output_dir=str(tmp / "trainer"),
                per_device_train_batch_size=recipe.batch_size,
                num_train_epochs=recipe.epochs,
                learning_rate=recipe.learning_rate,
                lr_scheduler_type="linear",
                warmup_steps=0,
                seed=recipe.seed,
                data_seed=recipe.seed,
                bf16=bf16,
                use_cpu=on_cpu,
                gradient_checkpointing=False,  # trl's default (True) recomputes frozen layers
                max_length=None,  # already cut from the left; trl would drop long pairs
                logging_steps=1,
                report_to="none",
                save_strategy="no",
                disable_tqdm=True,
                dataloader_num_workers=0,
            )
            lora = LoraConfig(
                task_type="SEQ_CLS",
                r=recipe.lora_r,
                lora_alpha=2 * recipe.lora_r,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                layers_to_transform=layers,
                modules_to_save=["score"],
            )
            trainer = RewardTrainer(
                model=model,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=lora,
            )
            # trl's printer would print every logged step; log progress via mobench's logger
            trainer.remove_callback(PrinterCallback)
            trainer.add_callback(_progress_logger(recipe.objective))
            trainer.train()
        train_s = time.perf_counter() - t0
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        accuracies = [h["accuracy"] for h in trainer.state.log_history if "accuracy" in h]
        weights = tmp / "model"
        trained: Any = trainer.model  # the PeftModel (adapter + head)
        trained.save_pretrained(weights, safe_serialization=True)
        del trainer, model
        meta: dict[str, Any] = {
            "recipe": recipe.to_json(),
            "recipe_hash": recipe_hash(recipe),
            "data": per_file,
            "train_pairs": len(train),
            "heldout_pairs": len(heldout),
            "train_s": train_s,
            "train_precision": "bf16-autocast" if bf16 else "float32",
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "train_accuracy_last_steps": float(np.mean(accuracies[-10:])) if accuracies else None,
            "losses": losses,
            "standardize": {"mean": 0.0, "std": 1.0},
        }
        (weights / SCORER_FILE).write_text(json.dumps(meta, indent=2))
        # held-out accuracy with the scoring code path itself (what a run will use)
        scorer = TrainedRewardScorer(weights, recipe.objective, device=device, dtype="float32")
        prompts = [p.prompt for p in heldout] * 2
        label = [p.labels[recipe.objective] for p in heldout]
        responses = [p.responses[lab] for p, lab in zip(heldout, label, strict=True)] + [
            p.responses[1 - lab] for p, lab in zip(heldout, label, strict=True)
        ]
        raw = scorer.raw_scores(prompts, responses)
        chosen, rejected = raw[: len(heldout)], raw[len(heldout) :]
        meta["heldout_accuracy"] = float(np.mean(chosen > rejected))
        meta["heldout_ties"] = int(np.sum(chosen == rejected))
        meta["heldout_dtype"] = "float32"
        std = float(raw.std())
        meta["standardize"] = {"mean": float(raw.mean()), "std": std if std > 0 else 1.0}
        meta["standardize_note"] = "mean/std of the raw rewards of the held-out responses"
        (weights / SCORER_FILE).write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        weights.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "%s reward model: held-out pair accuracy %.3f on %d pairs (%s)",
        recipe.objective,
        meta["heldout_accuracy"],
        len(heldout),
        out_dir,
    )
    return out_dir


def _progress_logger(objective: str) -> Any:
    """A TrainerCallback logging the loss every 10 optimiser steps."""
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs and (state.global_step % 10 == 0 or state.global_step == 1):
                log.info(
                    "%s reward model: step %d/%d, loss %.4f",
                    objective,
                    state.global_step,
                    state.max_steps,
                    float(logs["loss"]),
                )

    return _Log()


def _ensure_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def build_trained_scorer(
    objective: str, source: str, *, device: str = "cpu", dtype: str = "float32", **kwargs: Any
) -> TrainedRewardScorer:
    """Scorer kind ``trained``: a folder from ``mobench train-scorer``, or a recipe string that
    is trained on first use (cached)."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        folder = ensure_trained(parse_recipe(source, objective), device=device)
    return TrainedRewardScorer(folder, objective, device=device, dtype=dtype, **kwargs)


def trained_identity(source: str, objective: str) -> str:
    """What identifies a ``trained:`` scorer in caches: its recipe hash or its folder's."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        meta = folder / SCORER_FILE
        if not meta.is_file():
            raise ConfigError(f"{folder} has no {SCORER_FILE}; train it with mobench train-scorer")
        return "folder:" + hashlib.sha256(meta.read_bytes()).hexdigest()[:16]
    return "recipe:" + recipe_hash(parse_recipe(source, objective))
