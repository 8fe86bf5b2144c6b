"""MOD-w2s: small per-objective DPO policies steering a (larger) frozen base (METHODS §6.2, §12.2).

Training (METHODS §6.1): for each objective i, one LoRA policy pi_i^S on the guide backbone,
trained with trl's ``DPOTrainer`` on the pairs labelled for i (chosen = the response preferred
for i). The DPO reference is the guide backbone without adapter, pi_ref^S.

Decoding (METHODS §6.2, a reconstruction [RECON]): MOD's closed form for reverse-KL policies is
pi* ∝ pi_ref^(1 - sum_i alpha_i) prod_i pi_i^alpha_i; swapping the small reference for the large
base (emulated fine-tuning) gives

    log pi~(v) = log pi_L(v) + sum_i alpha_i [ log pi_i^S(v) - log pi_ref^S(v) ] - log Z_t

so the guide returns sum_i alpha_i (log pi_i^S - log pi_ref^S), every term a log-softmax over the
shared vocabulary in fp32; the decoding loop adds log pi_L (beta = 1). With the guide backbone
equal to the base and alpha on the simplex, this is plain MOD, sum_i alpha_i log pi_i.

Cost per token: 1 base forward + (k + 1) small forwards (k policies and the reference), each
with its own KV cache. The k adapters share one copy of the small backbone; the reference is a
second, adapter-free copy (or the base itself when the guide backbone is the base model).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mobench.methods.genarm import (
    GUIDE_CONFIG,
    check_guide_backbone,
    check_objectives,
    load_objective_adapters,
    lora_config,
    save_random_lora_guide,
    write_lora_guide_config,
)

from mobench.config import RunSpec
from mobench.data import DataError, Splits
from mobench.decoding import CausalLMStepper, LaneStepper, prompt_groups
from mobench.fused import inject_multi_lora, read_peft_lora
from mobench.interfaces import FusedGuide, Guide, Method, Task
from mobench.models import ModelContext, load_causal_lm, load_tokenizer, safetensors_numel
from mobench.registry import register_method
from mobench.training import (
    ARMTrainingConfig,
    TokenizedPair,
    TrainResult,
    current_trainer_arguments,
    data_parallel_batches,
    launched_processes,
    progress_callbacks,
    tokenize_pairs,
)

#: what the saved guide config says about pi_ref^S
REFERENCE = "guide_model with the adapters disabled (the DPO reference)"


@dataclass(frozen=True)
class MODw2sConfig(ARMTrainingConfig):
    """MOD-w2s defaults: MOD's DPO settings for the safety task (official code, METHODS §6.1).

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
    config: MODw2sConfig,
    *,
    bf16: bool,
    output_dir: str,
) -> tuple[Any, TrainResult]:
    """Train one LoRA policy on ``model`` with trl's DPO loss; returns ``(peft model, result)``.

    With ``peft_config``, trl wraps ``model`` itself and uses it with the adapter disabled as the
    DPO reference, so no second copy is made.
    """
    from datasets import Dataset
    from trl import DPOConfig

    use_cpu = next(model.parameters()).device.type == "cpu"
    # the config's batch is the global batch on any number of processes, as in train_pairs
    per_device, accum = data_parallel_batches(config, launched_processes())
    settings: dict[str, Any] = dict(
        output_dir=output_dir,
        beta=config.dpo_beta,
        loss_type=["sigmoid"],  # the standard (reverse-KL) DPO loss MOD's closed form assumes
        # tokenize_pairs already fits every sequence into max_length; a second cut in trl's
        # collator (which keeps the start) would only drop response tokens
        max_length=None,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        seed=config.seed,
        data_seed=config.seed,
        # trl 1.16 defaults: bf16=True (refused on CPU without use_cpu), gradient checkpointing
        # on (slower on CPU), checkpoints saved (not needed: the pipeline saves the adapter)
        bf16=bf16,
        use_cpu=use_cpu,
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    settings.update(current_trainer_arguments())  # --trainer-config (checked)
    args = DPOConfig(**settings)
    lora = lora_config(config)
    trainer = _dpo_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=progress_callbacks(),
    )
    trainer.train()
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    result = TrainResult(
        steps=int(trainer.state.global_step),
        first_loss=losses[0] if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan,
        losses=losses,
    )
    return trainer.model, result


class MODw2sGuide(Guide):
    """sum_i alpha_i (log pi_i^S - log pi_ref^S): k LoRA policies on one shared small backbone and
    the reference (the same small model without adapter), each with its own KV cache.

    The reference is a separate frozen model rather than the policies' backbone inside peft's
    ``disable_adapter()``: that context walks every module on each call (about 60 ms per token
    for SmolLM2-135M on the project CPU, close to a forward pass).
    """

    def __init__(
        self,
        policies: Any,
        adapter_names: list[str],
        reference: Any,
        vocab_size: int,
        pad_token_id: int,
    ) -> None:
        """
        Args:
            policies: a ``PeftModel`` holding one adapter per objective, named after it.
            adapter_names: the adapters in the task's objective (= alpha) order.
            reference: the small model without adapter (pi_ref^S, the DPO reference).
            vocab_size / pad_token_id: the shared vocabulary; the guide tokenizer's pad id.
        """
        self.model = policies
        self.adapter_names = adapter_names
        self.policies = [CausalLMStepper(policies, vocab_size, pad_token_id) for _ in adapter_names]
        self.reference = CausalLMStepper(reference, vocab_size, pad_token_id)
        self.forwards_per_token = {"guide": len(adapter_names) + 1}
        self.alphas: torch.Tensor | None = None

    def _mix(self, run: Callable[[CausalLMStepper], torch.Tensor]) -> torch.Tensor:
        assert self.alphas is not None
        reference = run(self.reference).to(self.alphas.device)
        total = torch.zeros_like(reference)
        for i, (name, stepper) in enumerate(zip(self.adapter_names, self.policies, strict=True)):
            self.model.set_adapter(name)
            total += self.alphas[:, i : i + 1] * (run(stepper) - reference)
        return total

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        self.alphas = alphas.to(self.policies[0].device, torch.float32)
        groups = prompt_groups(prompt_ids)  # no per-row state: one prefill per prompt
        return self._mix(lambda s: s.prefill(prompt_ids, groups))

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self._mix(lambda s: s.step(token_ids))

    def drop(self, keep: torch.Tensor) -> None:
        assert self.alphas is not None
        self.alphas = self.alphas.index_select(0, keep.to(self.alphas.device))
        for s in [*self.policies, self.reference]:
            s.drop(keep)


def mix_policies(
    alphas: torch.Tensor, reference: torch.Tensor, policies: torch.Tensor
) -> torch.Tensor:
    """MOD-w2s guidance ``sum_i alpha_i (log pi_i^S - log pi_ref^S)`` from the reference's
    ``(B, V)`` log-probs and the policies' ``(k, B, V)`` (METHODS §6.2)."""
    total = torch.zeros_like(reference)
    for i in range(policies.shape[0]):
        total += alphas[:, i : i + 1] * (policies[i] - reference)
    return total


class MODw2sLaneGuide(Guide):
    """The reference and the k policies as lanes of ONE forward of one small backbone (lane 0:
    no adapter = pi_ref^S; lane 1 + i: policy i's LoRA), for a guide model other than the base."""

    def __init__(self, model: Any, num_policies: int, vocab_size: int, pad_token_id: int) -> None:
        model.lane_layout.set(n_plain=1, adapters=range(num_policies))
        self.stepper = LaneStepper(model, 1 + num_policies, vocab_size, pad_token_id)
        self.forwards_per_token = {"guide": 1}
        self.lanes = self.stepper.lanes
        self.alphas: torch.Tensor | None = None

    def _mix(self, logprobs: torch.Tensor) -> torch.Tensor:
        assert self.alphas is not None, "prefill first"
        return mix_policies(self.alphas, logprobs[0], logprobs[1:])

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        self.alphas = alphas.to(self.stepper.device, torch.float32)
        lanes = self.stepper.lanes
        groups = [prompt_groups(prompt_ids)] * lanes  # one prefill per prompt and model
        return self._mix(self.stepper.prefill([prompt_ids] * lanes, groups))

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self._mix(self.stepper.step(token_ids))

    def drop(self, keep: torch.Tensor) -> None:
        assert self.alphas is not None, "prefill first"
        self.alphas = self.alphas.index_select(0, keep.to(self.alphas.device))
        self.stepper.drop(keep)


class MODw2sFusedGuide(FusedGuide):
    """Base, reference and policies in ONE forward of the base model's weights (guide backbone =
    base). The reference is the base model without adapter, so when both get the same prompt
    tokens the base lane serves as the reference (lanes: base, policies); with different
    templates it gets its own plain lane (lanes: base, reference, policies)."""

    def __init__(self, model: Any, num_policies: int, vocab_size: int, pad_token_id: int) -> None:
        self.model, self.num_policies = model, num_policies
        self.vocab_size, self.pad_token_id = vocab_size, pad_token_id
        self.forwards_per_token = {"fused": 1}
        self.lanes = 1 + num_policies
        self.stepper: LaneStepper | None = None
        self.alphas: torch.Tensor | None = None

    def _split(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.alphas is not None, "prefill first"
        reference = logprobs[self.lanes - 1 - self.num_policies]
        return logprobs[0], mix_policies(self.alphas, reference, logprobs[-self.num_policies :])

    def prefill(
        self, prompt_ids: list[list[int]], guide_prompt_ids: list[list[int]], alphas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        plain = [prompt_ids] if guide_prompt_ids == prompt_ids else [prompt_ids, guide_prompt_ids]
        self.model.lane_layout.set(n_plain=len(plain), adapters=range(self.num_policies))
        self.lanes = len(plain) + self.num_policies
        self.stepper = LaneStepper(self.model, self.lanes, self.vocab_size, self.pad_token_id)
        self.alphas = alphas.to(self.stepper.device, torch.float32)
        policies = [guide_prompt_ids] * self.num_policies
        # one prefill per prompt and lane: the same groups in every lane keep the lanes equal
        groups = [prompt_groups(prompt_ids, guide_prompt_ids)] * self.lanes
        return self._split(self.stepper.prefill([*plain, *policies], groups))

    def step(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.stepper is not None, "prefill first"
        return self._split(self.stepper.step(token_ids))

    def drop(self, keep: torch.Tensor) -> None:
        assert self.stepper is not None and self.alphas is not None, "prefill first"
        self.alphas = self.alphas.index_select(0, keep.to(self.alphas.device))
        self.stepper.drop(keep)


@register_method("mod_w2s")
class MODw2s(Method):
    """MOD-w2s: per-objective DPO policies mixed as sum_i alpha_i (log pi_i - log pi_ref)."""

    name = "mod_w2s"
    config_cls = MODw2sConfig

    def __init__(self, config: MODw2sConfig) -> None:
        super().__init__(config)
        self.config: MODw2sConfig = config

    def train(self, task: Task, splits: Splits, spec: RunSpec, out_dir: Path) -> None:
        cfg = self.config
        tok = load_tokenizer(spec.guide_model)
        template = spec.templates.get(spec.guide_model)
        pairs = tokenize_pairs(
            splits.train, lambda p: task.render(p.prompt, tok, template), tok, task.objectives, cfg
        )
        report: dict[str, Any] = {}
        for i, objective in enumerate(task.objectives):
            rows = dpo_rows(pairs, i)
            if not rows:
                raise DataError(
                    f"no training pair has a '{objective}' label: MOD-w2s needs preference pairs "
                    "for every objective (check the data source and --limit)"
                )
            model, _ = load_causal_lm(spec.guide_model, dtype="float32", device=spec.device)
            policy, result = train_dpo_policy(
                model,
                tok,
                rows,
                cfg,
                bf16=spec.dtype == "bfloat16",
                output_dir=str(out_dir / ".trainer"),
            )
            policy.save_pretrained(out_dir / objective, safe_serialization=True)
            report[objective] = {"pairs": len(rows), **dataclasses.asdict(result)}
            del policy, model
        write_lora_guide_config(
            out_dir, self.name, task.objectives, spec.guide_model, cfg, report, reference=REFERENCE
        )

    def guide(self, artifacts: Path, task: Task, models: ModelContext) -> Guide | FusedGuide:
        """The guide for ``models``: policies and reference as lanes of one forward, of the base
        model itself when it is the guide backbone (fused with the base rows), else of one copy
        of the small backbone; with ``models.fuse`` False, separate forwards (peft adapters on
        one copy, the reference on another)."""
        stored = json.loads((artifacts / GUIDE_CONFIG).read_text())
        check_objectives(stored["objectives"], task, artifacts)
        check_guide_backbone(stored["guide_model"], models, artifacts)
        names = list(task.objectives)
        if models.fuse:
            paths = [artifacts / stored["adapters"][name] for name in names]
            adapters = [read_peft_lora(p, name) for p, name in zip(paths, names, strict=True)]
            vocab, pad = models.vocab_size, models.guide_tokenizer.pad_token_id
            if models.fused:
                inject_multi_lora(models.base, adapters)
                return MODw2sFusedGuide(models.base, len(names), vocab, pad)
            backbone = models.load_guide_backbone()
            inject_multi_lora(backbone, adapters)
            return MODw2sLaneGuide(backbone, len(names), vocab, pad)
        policies = load_objective_adapters(models.load_guide_backbone(), artifacts, stored, names)
        # pi_ref^S is the guide backbone itself: when it is the base model, share its weights
        reference = models.base if models.same_backbone else models.load_guide_backbone()
        return MODw2sGuide(
            policies, names, reference, models.vocab_size, models.guide_tokenizer.pad_token_id
        )

    def random_guide(self, task: Task, models: ModelContext, out_dir: Path, seed: int) -> None:
        """k LoRA policies of the configured shape with random weights, saved as :meth:`train`
        saves them."""
        save_random_lora_guide(self, task, models, out_dir, seed, reference=REFERENCE)

    def trainable_parameters(self, artifacts: Path) -> int:
        return safetensors_numel(sorted(artifacts.glob("*/adapter_model.safetensors")))

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        """1 large-base + (k + 1) small evaluations per token: k policies and the reference
        (METHODS §6.2), as separate forwards or lanes of one forward."""
        return {"base": 1, "guide": len(spec.objectives) + 1}
