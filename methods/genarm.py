"""GenARM: one independent LoRA autoregressive reward model (ARM) per objective (METHODS §3).

Training (METHODS §2, §3.1): each ARM_i is the guide backbone plus a peft LoRA on q/k/v, trained
with the reference-free Bradley–Terry loss on its own objective's labels and its own beta_r.

Decoding (METHODS §3.2): guide(alpha) = sum_i alpha_i log pi_ARM_i(v | x, y_<t), all log-softmaxed
in fp32 over the shared vocabulary; the loop adds it to log pi_base (beta = 1).

Cost per token: 1 base forward + k ARM forwards in the reference code. The method only states
its lanes (one LoRA per ARM) and their weights (:func:`lane_weights`); the core's engine
(mobench.engine) runs them fused with the base, on a weak-to-strong guide backbone, or as
separate copies, and skips an ARM whose alpha is 0 for the whole batch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mobench.methods.shared import (
    GUIDE_CONFIG,
    check_guide_backbone,
    check_objectives,
    lora_config,
    save_random_lora_guide,
    tokenized_training_pairs,
    write_lora_guide_config,
)

from mobench.config import RunSpec
from mobench.data import Splits
from mobench.engine import GuideSpec, Lane, LoRA
from mobench.interfaces import Method, Task
from mobench.models import ModelContext, load_causal_lm, safetensors_numel
from mobench.registry import register_method
from mobench.training import (
    ARMTrainingConfig,
    TrainerSettings,
    bradley_terry_loss,
    sequence_logprobs,
    train_pairs,
)


@dataclass(frozen=True)
class GenARMConfig(ARMTrainingConfig):
    """GenARM defaults (official code, METHODS §3.1 and §12.4)."""

    lora_r: int = field(default=8, metadata={"help": "GenARM: r=8"})
    lora_alpha: int = field(default=16, metadata={"help": "GenARM: lora_alpha=16 (scale 2)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "GenARM: 0.05"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj"),
        metadata={"help": "GenARM's list names more, but on LLaMA only q/k/v exist (§10.15)"},
    )
    beta_r: dict[str, float] = field(
        default_factory=lambda: {"helpful": 0.5, "harmless": 0.01},
        metadata={"help": "per-objective beta_r; GenARM PKU script: helpful 0.5, harmless 0.01"},
    )
    beta_r_default: float = field(
        default=0.05, metadata={"help": "beta_r of objectives not in beta_r (GenARM HH ARM: 0.05)"}
    )


def lane_weights(alphas: torch.Tensor) -> torch.Tensor:
    """GenARM's guidance (METHODS §3.2) as lane weights: ``sum_i alpha_i log pi_ARM_i``, one
    lane per ARM (objective order) with weight ``w_i = alpha_i``; ``alphas (B, k) -> (k, B)``."""
    return alphas.T


@register_method("genarm")
class GenARM(Method):
    """GenARM: one LoRA ARM per objective, mixed at decoding as sum_i alpha_i log pi_i."""

    name = "genarm"
    config_cls = GenARMConfig

    def __init__(self, config: GenARMConfig) -> None:
        super().__init__(config)
        self.config: GenARMConfig = config

    def beta_r(self, objective: str) -> float:
        return self.config.beta_r.get(objective, self.config.beta_r_default)

    def train(
        self,
        task: Task,
        splits: Splits,
        spec: RunSpec,
        out_dir: Path,
        trainer: TrainerSettings | None = None,
    ) -> None:
        from peft import get_peft_model
        from transformers import set_seed

        cfg = self.config
        tok, pairs = tokenized_training_pairs(task, splits, spec, cfg)
        report: dict[str, Any] = {}
        for i, objective in enumerate(task.objectives):
            labelled = [p for p in pairs if p.labels[i] >= 0]
            model, _ = load_causal_lm(spec.guide_model, dtype="float32", device=spec.device)
            lora = lora_config(cfg)
            # the LoRA init draws random numbers: seed it as the official scripts do
            # (set_seed(42) before the model is built), so every process and every run
            # starts from the same adapter
            set_seed(cfg.seed)
            peft_model = get_peft_model(model, lora)
            beta_r = self.beta_r(objective)

            def pair_loss(
                m: Any,
                batch: dict[str, torch.Tensor],
                step: int,
                i: int = i,
                beta_r: float = beta_r,
            ) -> Any:
                logps = sequence_logprobs(
                    m, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
                ).view(-1, 2)
                loss, n = bradley_terry_loss(logps, batch["labels"][:, i], beta_r)
                return loss, {"pairs": float(n)}

            result = train_pairs(
                peft_model,
                labelled,
                pair_loss,
                cfg,
                pad_token_id=tok.pad_token_id,
                bf16=spec.dtype == "bfloat16",
                output_dir=str(out_dir / ".trainer"),
                trainer=trainer,
            )
            peft_model.save_pretrained(str(out_dir / objective), safe_serialization=True)
            report[objective] = {
                "pairs": len(labelled),
                "beta_r": beta_r,
                **dataclasses.asdict(result),
            }
            del peft_model, model
        write_lora_guide_config(out_dir, self.name, task.objectives, spec.guide_model, cfg, report)

    def guide_spec(self, artifacts: Path, task: Task, models: ModelContext) -> GuideSpec:
        """One lane per ARM (the guide backbone plus that objective's LoRA), weighted by
        :func:`lane_weights`."""
        stored = json.loads((artifacts / GUIDE_CONFIG).read_text())
        check_objectives(stored["objectives"], task, artifacts)
        check_guide_backbone(stored["guide_model"], models, artifacts)
        lanes = tuple(
            Lane(LoRA(artifacts / stored["adapters"][name], name)) for name in task.objectives
        )
        return GuideSpec(lanes, lane_weights)

    def random_guide(self, task: Task, models: ModelContext, out_dir: Path, seed: int) -> None:
        """k LoRA ARMs of the configured shape with random weights, saved as :meth:`train`
        saves them."""
        save_random_lora_guide(self, task, models, out_dir, seed)

    def trainable_parameters(self, artifacts: Path) -> int:
        return safetensors_numel(sorted(artifacts.glob("*/adapter_model.safetensors")))

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        """1 base + one ARM evaluation per objective per token (METHODS §3.3), as separate
        forwards or lanes of one fused forward."""
        return {"base": 1, "guide": len(spec.objectives)}
