"""GenARM: one independent LoRA autoregressive reward model (ARM) per objective (METHODS §3).

Training (METHODS §2, §3.1): each ARM_i is the guide backbone plus a peft LoRA on q/k/v, trained
with the reference-free Bradley–Terry loss on its own objective's labels and its own beta_r.

Decoding (METHODS §3.2): guide(alpha) = sum_i alpha_i log pi_ARM_i(v | x, y_<t), all log-softmaxed
in fp32 over the shared vocabulary; the loop adds it to log pi_base (beta = 1).

Cost per token: 1 base forward + k ARM forwards. The k adapters share one copy of the guide
backbone; each keeps its own KV cache.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobench.config import RunSpec
from mobench.data import Splits
from mobench.decoding import CausalLMStepper
from mobench.interfaces import Guide, Method, Task
from mobench.models import ModelContext, load_causal_lm, load_tokenizer, safetensors_numel
from mobench.registry import register_method
from mobench.training import (
    ARMTrainingConfig,
    bradley_terry_loss,
    sequence_logprobs,
    tokenize_pairs,
    train_pairs,
)

GUIDE_CONFIG = "guide_config.json"


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


def check_objectives(stored: list[str], task: Task, artifacts: Path) -> None:
    """Refuse a guide trained on other objectives; a different ORDER is fine because every
    adapter is stored and looked up by objective name (never by position, METHODS §10.1)."""
    if sorted(stored) != sorted(task.objectives):
        raise ValueError(
            f"guide in {artifacts} was trained for objectives {stored}, but task "
            f"'{task.name}' has {list(task.objectives)}; train a guide for this task"
        )


class GenARMGuide(Guide):
    """sum_i alpha_i log pi_ARM_i, one LoRA adapter per objective on one shared backbone."""

    def __init__(self, model: Any, adapter_names: list[str], vocab_size: int, pad_token_id: int):
        self.model = model
        self.adapter_names = adapter_names  # in the task's objective (= alpha) order
        self.steppers = [CausalLMStepper(model, vocab_size, pad_token_id) for _ in adapter_names]
        self.forwards_per_token = {"guide": len(adapter_names)}
        self.alphas: torch.Tensor | None = None

    def _mix(self, run: Any) -> torch.Tensor:
        assert self.alphas is not None
        total = None
        for i, (name, stepper) in enumerate(zip(self.adapter_names, self.steppers)):
            self.model.set_adapter(name)
            term = self.alphas[:, i : i + 1] * run(stepper)
            total = term if total is None else total + term
        assert total is not None
        return total

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        self.alphas = alphas.to(self.steppers[0].device, torch.float32)
        return self._mix(lambda s: s.prefill(prompt_ids))

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self._mix(lambda s: s.step(token_ids))

    def drop(self, keep: torch.Tensor) -> None:
        assert self.alphas is not None
        self.alphas = self.alphas.index_select(0, keep.to(self.alphas.device))
        for s in self.steppers:
            s.drop(keep)


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

    def train(self, task: Task, splits: Splits, spec: RunSpec, out_dir: Path) -> None:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        tok = load_tokenizer(spec.guide_model)
        template = spec.templates.get(spec.guide_model)
        pairs = tokenize_pairs(
            splits.train, lambda p: task.render(p.prompt, tok, template), tok, task.objectives, cfg
        )
        report: dict[str, Any] = {}
        for i, objective in enumerate(task.objectives):
            labelled = [p for p in pairs if p.labels[i] >= 0]
            model, _ = load_causal_lm(spec.guide_model, dtype="float32", device=spec.device)
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.target_modules),
                task_type="CAUSAL_LM",
            )
            peft_model = get_peft_model(model, lora)
            beta_r = self.beta_r(objective)

            def pair_loss(m: Any, batch: dict[str, torch.Tensor], step: int, i: int = i) -> Any:
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
            )
            peft_model.save_pretrained(out_dir / objective, safe_serialization=True)
            report[objective] = {
                "pairs": len(labelled),
                "beta_r": beta_r,
                **dataclasses.asdict(result),
            }
            del peft_model, model
        (out_dir / GUIDE_CONFIG).write_text(
            json.dumps(
                {
                    "method": self.name,
                    "objectives": list(task.objectives),
                    "guide_model": spec.guide_model,
                    "adapters": {o: o for o in task.objectives},
                    "config": dataclasses.asdict(cfg),
                    "training": report,
                },
                indent=2,
            )
        )

    def guide(self, artifacts: Path, task: Task, models: ModelContext) -> Guide:
        from peft import PeftModel

        stored = json.loads((artifacts / GUIDE_CONFIG).read_text())
        check_objectives(stored["objectives"], task, artifacts)
        backbone = models.load_guide_backbone()
        names = list(task.objectives)
        model = PeftModel.from_pretrained(
            backbone, artifacts / stored["adapters"][names[0]], adapter_name=names[0]
        )
        for name in names[1:]:
            model.load_adapter(artifacts / stored["adapters"][name], adapter_name=name)
        model.eval()
        return GenARMGuide(model, names, models.vocab_size, models.guide_tokenizer.pad_token_id)

    def trainable_parameters(self, artifacts: Path) -> int:
        return safetensors_numel(sorted(artifacts.glob("*/adapter_model.safetensors")))

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        """1 base forward + one ARM forward per objective (METHODS §3.3)."""
        return {"base": 1, "guide": len(spec.objectives)}
