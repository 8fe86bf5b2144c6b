"""Per-objective DPO policies, the trained part of MOD, Rewarded Soups and MOD-w2s (METHODS §6.1).

For each objective i, one LoRA policy pi_i on the guide backbone, trained with trl's
``DPOTrainer`` on the pairs labelled for i (chosen = the response preferred for i); the DPO
reference is the backbone without adapter. The three methods differ only in how they decode
with the policies (their own modules); their training, its config and its saved form are this
module's, and they share a guide family (:attr:`DPOPolicies.guide_family`), so the guide cache
trains one set of policies per backbone, data and config for all three.

Saved artifacts: one peft LoRA folder per objective (named after it, safetensors) and
``guide_config.json`` (objective order, backbone, config, per-policy training losses).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
from mobench.data import DataError, Splits
from mobench.engine import Lane, LoRA
from mobench.interfaces import Method, Task
from mobench.models import ModelContext, load_causal_lm, safetensors_numel
from mobench.training import (
    ARMTrainingConfig,
    TokenizedPair,
    TrainerSettings,
    TrainResult,
    launched_processes,
    trainer_arguments,
)

#: what the saved guide config says about the DPO reference
REFERENCE = "guide_model with the adapters disabled (the DPO reference)"
#: the guide family of every method decoding with these policies (the guide cache's name)
FAMILY = "dpo-policies"


@dataclass(frozen=True)
class DPOPolicyConfig(ARMTrainingConfig):
    """Per-objective DPO policies: MOD's DPO settings for the safety task (official code,
    METHODS §6.1), shared by MOD, Rewarded Soups and MOD-w2s (one config, so one trained set of
    policies serves all three through the guide cache).

    Fields METHODS §6.1 does not give for MOD keep the shared defaults and say so.
    """

    epochs: float = field(default=3.0, metadata={"help": "MOD safety DPO: 3 epochs"})
    per_device_batch_size: int = field(
        default=2, metadata={"help": "pairs per micro-batch; with 3 accumulation steps = MOD's 6"}
    )
    gradient_accumulation_steps: int = field(
        default=3,
        metadata={"help": "MOD: 1 pair x 2 accumulation x 3 GPUs = 6 pairs per update"},
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "MOD safety DPO: 5e-4"})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "not given for MOD (§6.1); shared mobench default"}
    )
    warmup_steps: int = field(
        default=20, metadata={"help": "not given for MOD (§6.1); shared mobench default"}
    )
    weight_decay: float = field(
        default=0.05, metadata={"help": "not given for MOD (§6.1); shared mobench default"}
    )
    max_length: int = field(default=256, metadata={"help": "MOD safety DPO: max_length 256"})
    max_prompt_length: int = field(
        default=128,
        metadata={"help": "not given for MOD (§6.1); half of max_length, prompt cut from the left"},
    )
    dpo_beta: float = field(default=0.1, metadata={"help": "MOD safety DPO: beta 0.1"})
    lora_r: int = field(default=64, metadata={"help": "MOD: LoRA r=64"})
    lora_alpha: int = field(default=1, metadata={"help": "MOD: lora_alpha=1 (scale 1/64)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "MOD: dropout 0"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"), metadata={"help": "MOD: q, k, v, o"}
    )


def dpo_rows(pairs: list[TokenizedPair], objective_index: int) -> list[dict[str, list[int]]]:
    """The pairs labelled for one objective as DPO rows: chosen = the response it prefers."""
    rows = []
    for p in pairs:
        winner = p.labels[objective_index]
        if winner < 0:
            continue
        rows.append(
            {
                "prompt_ids": p.prompt_ids,
                "chosen_ids": p.response_ids[winner],
                "rejected_ids": p.response_ids[1 - winner],
            }
        )
    return rows


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """trl's DPOTrainer fed with mobench's tokenization (:func:`tokenize_pairs`): prompts
        rendered in the guide's template and encoded exactly as the decoder encodes them (BOS
        once, prompt cut from the left), responses tokenized apart from the prompt and ending
        in EOS. trl would instead tokenize prompt + response jointly and could only cut the end
        of a sequence, so its own dataset preparation is skipped."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

    return PretokenizedDPOTrainer


def train_dpo_policy(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, list[int]]],
    config: DPOPolicyConfig,
    *,
    bf16: bool,
    output_dir: str,
    trainer: TrainerSettings | None = None,
) -> tuple[Any, TrainResult]:
    """Train one LoRA policy on ``model`` with trl's DPO loss; returns ``(peft model, result)``.

    With ``peft_config``, trl wraps ``model`` itself and uses it with the adapter disabled as the
    DPO reference, so no second copy is made.
    """
    from datasets import Dataset
    from trl import DPOConfig

    # the config's batch is the global batch on any number of processes, as in train_pairs; the
    # shared fields also override trl 1.16's defaults bf16=True (refused on CPU without use_cpu)
    # and saved checkpoints
    settings = trainer_arguments(
        model, config, output_dir, bf16=bf16, processes=launched_processes()
    )
    settings.update(
        beta=config.dpo_beta,
        loss_type=["sigmoid"],  # the standard (reverse-KL) DPO loss MOD's closed form assumes
        # tokenize_pairs already fits every sequence into max_length; a second cut in trl's
        # collator (which keeps the start) would only drop response tokens
        max_length=None,
        gradient_checkpointing=False,  # trl's default is on: slower on CPU
    )
    trainer = trainer or TrainerSettings()
    settings.update(trainer.arguments)  # --trainer-config (checked)
    args = DPOConfig(**settings)
    lora = lora_config(config)
    dpo = _dpo_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=trainer.callbacks(),
    )
    dpo.train()
    losses = [float(h["loss"]) for h in dpo.state.log_history if "loss" in h]
    result = TrainResult(
        steps=int(dpo.state.global_step),
        first_loss=losses[0] if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan,
        losses=losses,
    )
    return dpo.model, result


class DPOPolicies(Method):
    """A method whose guide is one DPO policy (LoRA) per objective: training, saving, random
    guides and the policy lanes; subclasses say how the policies are combined
    (:meth:`guide_spec`)."""

    config_cls = DPOPolicyConfig
    guide_family: ClassVar[str | None] = FAMILY

    def __init__(self, config: DPOPolicyConfig) -> None:
        super().__init__(config)
        self.config: DPOPolicyConfig = config

    def train(
        self,
        task: Task,
        splits: Splits,
        spec: RunSpec,
        out_dir: Path,
        trainer: TrainerSettings | None = None,
    ) -> None:
        cfg = self.config
        tok, pairs = tokenized_training_pairs(task, splits, spec, cfg)
        report: dict[str, Any] = {}
        for i, objective in enumerate(task.objectives):
            rows = dpo_rows(pairs, i)
            if not rows:
                raise DataError(
                    f"no training pair has a '{objective}' label: {self.name} needs preference "
                    "pairs for every objective (check the data source and --limit)"
                )
            model, _ = load_causal_lm(spec.guide_model, dtype="float32", device=spec.device)
            policy, result = train_dpo_policy(
                model,
                tok,
                rows,
                cfg,
                bf16=spec.dtype == "bfloat16",
                output_dir=str(out_dir / ".trainer"),
                trainer=trainer,
            )
            policy.save_pretrained(out_dir / objective, safe_serialization=True)
            report[objective] = {"pairs": len(rows), **dataclasses.asdict(result)}
            del policy, model
        write_lora_guide_config(
            out_dir, FAMILY, task.objectives, spec.guide_model, cfg, report, reference=REFERENCE
        )

    @staticmethod
    def policy_lanes(artifacts: Path, task: Task, models: ModelContext) -> tuple[Lane, ...]:
        """One lane per objective, in the task's order: the guide backbone plus its policy."""
        stored = json.loads((artifacts / GUIDE_CONFIG).read_text())
        check_objectives(stored["objectives"], task, artifacts)
        check_guide_backbone(stored["guide_model"], models, artifacts)
        return tuple(
            Lane(LoRA(artifacts / stored["adapters"][name], name)) for name in task.objectives
        )

    def random_guide(self, task: Task, models: ModelContext, out_dir: Path, seed: int) -> None:
        """k LoRA policies of the configured shape with random weights, saved as :meth:`train`
        saves them."""
        save_random_lora_guide(self, task, models, out_dir, seed, reference=REFERENCE)

    def trainable_parameters(self, artifacts: Path) -> int:
        return safetensors_numel(sorted(artifacts.glob("*/adapter_model.safetensors")))
