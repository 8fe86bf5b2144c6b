"""What several methods share: the guide config file and its checks, and guides made of one
peft LoRA folder per objective (GenARM's ARMs, MOD-w2s's policies). No method module imports
another; what two of them need sits here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mobench.config import ConfigError, RunSpec
from mobench.data import Splits
from mobench.interfaces import Method, Task
from mobench.models import ModelContext, ModelError, load_tokenizer, source_fingerprint
from mobench.training import ARMTrainingConfig, TokenizedPair, tokenize_pairs

GUIDE_CONFIG = "guide_config.json"
#: size of the random LoRA deltas of :func:`save_random_lora` (``mobench bench``): large enough
#: that each adapter visibly moves the decoded tokens, small enough that the text stays the base
#: model's kind of text.
RANDOM_LORA_SCALE = 0.1


def tokenized_training_pairs(
    task: Task, splits: Splits, spec: RunSpec, config: ARMTrainingConfig
) -> tuple[Any, list[TokenizedPair]]:
    """The guide backbone's tokenizer and the training split tokenized for it: each prompt
    rendered in the guide's template (the preset's for that model, else the task's), every
    objective's label kept, sequences cut to ``config``'s lengths."""
    tok = load_tokenizer(spec.guide_model)
    template = spec.templates.get(spec.guide_model)
    pairs = tokenize_pairs(
        splits.train, lambda p: task.render(p.prompt, tok, template), tok, task.objectives, config
    )
    return tok, pairs


def check_objectives(stored: list[str], task: Task, artifacts: Path) -> None:
    """Refuse a guide trained on other objectives; a different ORDER is fine because every
    adapter is stored and looked up by objective name (never by position, METHODS §10.1)."""
    if sorted(stored) != sorted(task.objectives):
        raise ConfigError(
            f"guide in {artifacts} was trained for objectives {stored}, but task "
            f"'{task.name}' has {list(task.objectives)}; train a guide for this task"
        )


def check_guide_backbone(stored: str, models: ModelContext, artifacts: Path) -> None:
    """Refuse to load adapters onto another backbone than the one they were trained on (in
    weak-to-strong runs the guide backbone differs from the base, and a same-shape model would
    load without any error). Two spellings of one local folder count as the same backbone, as
    in the guide cache's key."""
    same = stored == models.guide_source or (
        source_fingerprint(stored) == source_fingerprint(models.guide_source)
    )
    if not same:
        raise ModelError(
            f"guide in {artifacts} was trained on '{stored}' but is being loaded onto "
            f"'{models.guide_source}'; pass --guide-model {stored} or train a new guide"
        )


def lora_config(cfg: Any) -> Any:
    """peft's ``LoraConfig`` for a causal LM from a method config with ``lora_r``,
    ``lora_alpha``, ``lora_dropout`` and ``target_modules`` (GenARM's ARMs, MOD-w2s's policies)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )


def write_lora_guide_config(
    out_dir: Path,
    method: str,
    objectives: Sequence[str],
    guide_model: str,
    cfg: Any,
    training: Any,
    **extra: Any,
) -> None:
    """``GUIDE_CONFIG`` of a guide made of one peft LoRA folder per objective (named after it):
    what :meth:`GenARM.guide` and :meth:`MODw2s.guide` read back; ``extra`` adds method facts."""
    config = {
        "method": method,
        "objectives": list(objectives),
        "guide_model": guide_model,
        "adapters": {o: o for o in objectives},
        **extra,
        "config": dataclasses.asdict(cfg),
        "training": training,
    }
    (out_dir / GUIDE_CONFIG).write_text(json.dumps(config, indent=2))


def save_random_lora_guide(
    method: Method, task: Task, models: ModelContext, out_dir: Path, seed: int, **extra: Any
) -> None:
    """A LoRA-per-objective guide of ``method``'s configured shape with random weights
    (:func:`save_random_lora`), saved as its ``train`` saves it (``mobench bench``)."""
    lora = lora_config(method.config)
    for i, objective in enumerate(task.objectives):
        save_random_lora(models.load_guide_backbone(), lora, out_dir / objective, seed + i)
    write_lora_guide_config(
        out_dir,
        method.name,
        task.objectives,
        models.guide_source,
        method.config,
        "none: random weights (mobench bench)",
        **extra,
    )


def save_random_lora(backbone: Any, lora: Any, out_dir: Path, seed: int) -> None:
    """Save a peft LoRA of config ``lora`` on ``backbone`` with random weights: A as peft
    initialises it, B ~ N(0, sigma^2) with ``sigma = RANDOM_LORA_SCALE / (scaling sqrt(r))``
    instead of peft's zeros, so the adapter moves every adapted layer's output by a similar
    small amount whatever its rank and scale (``mobench bench``: cost, not quality)."""
    from peft import get_peft_model

    torch.manual_seed(seed)  # peft draws A from the global generator
    model = get_peft_model(backbone, lora)
    scaling = lora.lora_alpha / (math.sqrt(lora.r) if lora.use_rslora else lora.r)
    sigma = RANDOM_LORA_SCALE / (scaling * math.sqrt(lora.r))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * sigma)
    model.save_pretrained(str(out_dir), safe_serialization=True)
