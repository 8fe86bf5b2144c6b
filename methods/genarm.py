"""GenARM: one independent LoRA autoregressive reward model (ARM) per objective (METHODS §3).

Training (METHODS §2, §3.1): each ARM_i is the guide backbone plus a peft LoRA on q/k/v, trained
with the reference-free Bradley–Terry loss on its own objective's labels and its own beta_r.

Decoding (METHODS §3.2): guide(alpha) = sum_i alpha_i log pi_ARM_i(v | x, y_<t), all log-softmaxed
in fp32 over the shared vocabulary; the loop adds it to log pi_base (beta = 1).

Cost per token: 1 base forward + k ARM forwards in the reference code. Here, when the ARMs are
LoRAs on the base model itself, the base rows and the k ARMs' rows go through ONE forward of the
base's weights (:class:`GenARMFusedGuide`, mobench.fused); with a smaller guide model the k ARMs
share one forward of it (:class:`GenARMLaneGuide`); ``ModelContext.fuse=False`` keeps the
reference structure, one model copy and forward per ARM (:class:`GenARMGuide`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobench.config import ConfigError, RunSpec
from mobench.data import Splits
from mobench.decoding import CausalLMStepper, LaneStepper, prompt_groups
from mobench.fused import inject_multi_lora, read_peft_lora
from mobench.interfaces import FusedGuide, Guide, Method, Task
from mobench.models import (
    ModelContext,
    ModelError,
    load_causal_lm,
    load_tokenizer,
    safetensors_numel,
    source_fingerprint,
)
from mobench.registry import register_method
from mobench.training import (
    ARMTrainingConfig,
    bradley_terry_loss,
    sequence_logprobs,
    tokenize_pairs,
    train_pairs,
)

GUIDE_CONFIG = "guide_config.json"
#: size of the random LoRA deltas of :func:`save_random_lora` (``mobench bench``): large enough
#: that each adapter visibly moves the decoded tokens, small enough that the text stays the base
#: model's kind of text.
RANDOM_LORA_SCALE = 0.1


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


def load_objective_adapters(
    backbone: Any, artifacts: Path, stored: dict[str, Any], names: list[str]
) -> Any:
    """A ``PeftModel`` over ``backbone`` with one adapter per objective, named after it."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(
        backbone, artifacts / stored["adapters"][names[0]], adapter_name=names[0]
    )
    for name in names[1:]:
        model.load_adapter(artifacts / stored["adapters"][name], adapter_name=name)
    model.eval()
    return model


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
    import math

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


def mix_arms(alphas: torch.Tensor, arm_logprobs: Sequence[torch.Tensor]) -> torch.Tensor:
    """GenARM's guidance (METHODS §3.2): ``sum_i alpha_i log pi_ARM_i``, ``(B, V)`` fp32, with
    ``alphas (B, k)`` and one ``(B, V)`` log-prob tensor per ARM in objective order."""
    total = alphas[:, 0:1] * arm_logprobs[0]
    for i in range(1, len(arm_logprobs)):
        total = total + alphas[:, i : i + 1] * arm_logprobs[i]
    return total


class GenARMGuide(Guide):
    """sum_i alpha_i log pi_ARM_i with every ARM a separate model: one backbone copy and one
    forward per ARM per token, each with its own KV cache. This is the reference code's cost
    structure, kept as the unfused path (``ModelContext.fuse=False``)."""

    def __init__(self, arms: list[Any], vocab_size: int, pad_token_id: int) -> None:
        self.arms = arms  # in the task's objective (= alpha) order
        self.steppers = [CausalLMStepper(m, vocab_size, pad_token_id) for m in arms]
        self.forwards_per_token = {"guide": len(arms)}
        self.alphas: torch.Tensor | None = None

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        self.alphas = alphas.to(self.steppers[0].device, torch.float32)
        groups = prompt_groups(prompt_ids)  # an ARM has no per-row state: one prefill per prompt
        return mix_arms(self.alphas, [s.prefill(prompt_ids, groups) for s in self.steppers])

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        assert self.alphas is not None, "prefill first"
        return mix_arms(self.alphas, [s.step(token_ids) for s in self.steppers])

    def drop(self, keep: torch.Tensor) -> None:
        assert self.alphas is not None, "prefill first"
        self.alphas = self.alphas.index_select(0, keep.to(self.alphas.device))
        for s in self.steppers:
            s.drop(keep)


class GenARMLaneGuide(Guide):
    """The k ARMs as k lanes of ONE forward of one guide backbone (weak-to-strong: the guide
    model differs from the base, so the base runs separately)."""

    def __init__(self, model: Any, num_arms: int, vocab_size: int, pad_token_id: int) -> None:
        model.lane_layout.set(n_plain=0, adapters=range(num_arms))
        self.stepper = LaneStepper(model, num_arms, vocab_size, pad_token_id)
        self.forwards_per_token = {"guide": 1}
        self.lanes = self.stepper.lanes
        self.alphas: torch.Tensor | None = None

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        self.alphas = alphas.to(self.stepper.device, torch.float32)
        lanes = self.stepper.lanes
        groups = [prompt_groups(prompt_ids)] * lanes  # one prefill per prompt and ARM
        return mix_arms(self.alphas, list(self.stepper.prefill([prompt_ids] * lanes, groups)))

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        assert self.alphas is not None, "prefill first"
        return mix_arms(self.alphas, list(self.stepper.step(token_ids)))

    def drop(self, keep: torch.Tensor) -> None:
        assert self.alphas is not None, "prefill first"
        self.alphas = self.alphas.index_select(0, keep.to(self.alphas.device))
        self.stepper.drop(keep)


class GenARMFusedGuide(FusedGuide):
    """Base and k ARMs in ONE forward of the base model's own weights: lane 0 the base (no
    adapter), lane 1 + i the LoRA of ARM i (same backbone: guide model = base model)."""

    def __init__(self, model: Any, num_arms: int, vocab_size: int, pad_token_id: int) -> None:
        model.lane_layout.set(n_plain=1, adapters=range(num_arms))
        self.stepper = LaneStepper(model, 1 + num_arms, vocab_size, pad_token_id)
        self.lanes = 1 + num_arms
        self.forwards_per_token = {"fused": 1}
        self.alphas: torch.Tensor | None = None

    def _split(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.alphas is not None, "prefill first"
        return logprobs[0], mix_arms(self.alphas, list(logprobs[1:]))

    def prefill(
        self, prompt_ids: list[list[int]], guide_prompt_ids: list[list[int]], alphas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.alphas = alphas.to(self.stepper.device, torch.float32)
        arms = [guide_prompt_ids] * (self.lanes - 1)
        # one prefill per prompt and lane: the same groups in every lane keep the lanes equal
        groups = [prompt_groups(prompt_ids, guide_prompt_ids)] * self.lanes
        return self._split(self.stepper.prefill([prompt_ids, *arms], groups))

    def step(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split(self.stepper.step(token_ids))

    def drop(self, keep: torch.Tensor) -> None:
        assert self.alphas is not None, "prefill first"
        self.alphas = self.alphas.index_select(0, keep.to(self.alphas.device))
        self.stepper.drop(keep)


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
        from peft import get_peft_model
        from transformers import set_seed

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
            )
            peft_model.save_pretrained(str(out_dir / objective), safe_serialization=True)
            report[objective] = {
                "pairs": len(labelled),
                "beta_r": beta_r,
                **dataclasses.asdict(result),
            }
            del peft_model, model
        write_lora_guide_config(out_dir, self.name, task.objectives, spec.guide_model, cfg, report)

    def guide(self, artifacts: Path, task: Task, models: ModelContext) -> Guide | FusedGuide:
        """The guide for ``models``: fused into the base's forward when the ARMs sit on the base
        model itself; the k ARMs as lanes of one guide-backbone forward when the guide model is
        another (weak-to-strong); one separate copy per ARM when ``models.fuse`` is False."""
        stored = json.loads((artifacts / GUIDE_CONFIG).read_text())
        check_objectives(stored["objectives"], task, artifacts)
        check_guide_backbone(stored["guide_model"], models, artifacts)
        names = list(task.objectives)
        paths = [artifacts / stored["adapters"][name] for name in names]
        vocab, pad = models.vocab_size, models.guide_tokenizer.pad_token_id
        if not models.fuse:
            from peft import PeftModel

            arms = [PeftModel.from_pretrained(models.load_guide_backbone(), p) for p in paths]
            return GenARMGuide(arms, vocab, pad)
        adapters = [read_peft_lora(p, name) for p, name in zip(paths, names, strict=True)]
        if models.fused:
            inject_multi_lora(models.base, adapters)
            return GenARMFusedGuide(models.base, len(names), vocab, pad)
        backbone = models.load_guide_backbone()
        inject_multi_lora(backbone, adapters)
        return GenARMLaneGuide(backbone, len(names), vocab, pad)

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
