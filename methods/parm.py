"""PARM: one preference-aware ARM for every objective, built from PBLoRA (METHODS §4).

The guide is the guide backbone with a PBLoRA adapter (:class:`~mobench.methods.adapters.
PBLoRALinear`) on q/k/v. Its low-rank core is ``blockdiag(W1, W2(alpha))`` with
``W2(alpha) = reshape(alpha^T Theta)``, so one set of weights serves every preference vector.

Training (:meth:`PreferenceARM.train`, Algorithm 1 as the official code runs it, METHODS §4.2):

* ONE shared batch in which every pair carries all k labels (not one batch per objective);
* per micro-batch, alpha ~ Dirichlet(p 1_k), p = ``pref_sample_p`` = 0.5, drawn from a generator
  seeded with ``(seed, micro_step)``, where ``micro_step`` is the single-process micro-batch
  index the trainer reports (mobench.training.PairLoss), so a multi-GPU run draws the same alpha
  for the same pairs as one process (the official code seeds numpy identically on every rank,
  so its ranks share each step's alpha instead, METHODS §10.10), and written into the model's
  :class:`~mobench.methods.adapters.PreferenceContext` before the forward;
* loss ``sum_i alpha_i L_i`` with ``L_i`` the reference-free Bradley–Terry loss (METHODS §2) of
  objective i's label with its own beta_r (0.01 for both PKU objectives in run.sh; the
  ``--beta=0.5`` flag there is unused, §10.7).

Decoding (METHODS §4.3, §12.2): guide(alpha) = log pi_theta(v | x, y_<t; alpha), log-softmaxed in
fp32 over the shared vocabulary; the loop adds it to log pi_base (beta = 1). Every row of a batch
carries its own alpha, so the whole Pareto front of a prompt decodes in one batch: 1 guide
forward per token whatever k is. The PBLoRA forward never builds a dense delta-W (the official
unmerged forward does, §4.3), so no merge is needed for timing.

Saved artifacts: ``adapters.safetensors`` (the adapter tensors only) and ``guide_config.json``
with the objective order, the architecture (ranks, scale, target modules, parameter count),
the guide/base model ids, the full config and the training losses. The objective order is
checked on load: a task with the same objectives in another order is mapped by name (alpha
columns permuted into the stored order), a task with other objectives is refused (§10.1, §12.3).

Defaults and their sources (:class:`PARMConfig`): r1 = r2 = 4, lora_alpha 8 (s = lora_alpha/r2
= 2), dropout 0.05, q/k/v, beta_r 0.01 per objective, Dirichlet concentration 0.5, 2 epochs,
lr 5e-4, cosine, 20 warm-up steps, weight decay 0.05, effective batch 32, seed 42 — all from the
official PARM code/run.sh (METHODS §4.1-§4.2, §12.4).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from mobench.methods.adapters import (
    PBLoRALinear,
    PreferenceContext,
    count_adapter_parameters,
    count_saved_adapter_parameters,
    inject_adapters,
    load_adapters,
    save_adapters,
)
from mobench.methods.genarm import GUIDE_CONFIG, check_objectives

from mobench.config import ConfigError, RunSpec
from mobench.data import Splits
from mobench.decoding import CausalLMStepper, LaneStepper, prompt_groups
from mobench.interfaces import FusedGuide, Guide, Method, Task
from mobench.models import ModelContext, load_causal_lm, load_tokenizer, source_fingerprint
from mobench.registry import register_method
from mobench.training import (
    ARMTrainingConfig,
    PairLoss,
    bradley_terry_loss,
    sequence_logprobs,
    tokenize_pairs,
    train_pairs,
)

ADAPTER_FILE = "adapters.safetensors"
#: std of the random B of :meth:`PreferenceARM.random_guide` (``mobench bench``), and the size
#: of UniARM's random FiLM scale and shift G o(alpha) there (so that alpha visibly matters)
RANDOM_SCALE = 0.02
RANDOM_FILM = 0.5


@dataclass(frozen=True)
class PreferenceARMConfig(ARMTrainingConfig):
    """Settings shared by the preference-conditioned ARMs (PARM and UniARM)."""

    epochs: float = field(default=2.0, metadata={"help": "PARM run.sh: 2 epochs"})
    lora_dropout: float = field(default=0.05, metadata={"help": "PARM run.sh: 0.05"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj"),
        metadata={"help": "PARM: q/k/v of every layer (METHODS §4.1)"},
    )
    beta_r: dict[str, float] = field(
        default_factory=lambda: {"helpful": 0.01, "harmless": 0.01},
        metadata={"help": "per-objective beta_r; PARM run.sh: beta_help = beta_safe = 0.01"},
    )
    beta_r_default: float = field(
        default=0.01,
        metadata={"help": "beta_r of objectives not in beta_r (assumption: PARM's PKU value)"},
    )
    pref_sample_p: float = field(
        default=0.5,
        metadata={
            "help": "alpha ~ Dirichlet(p 1_k) per micro-batch; PARM run.sh 0.5 (code default 1.0 "
            "= uniform on the simplex)"
        },
    )

    def __post_init__(self) -> None:
        if self.pref_sample_p <= 0:
            raise ConfigError(
                f"pref_sample_p must be > 0 (the Dirichlet concentration), got {self.pref_sample_p}"
            )


@dataclass(frozen=True)
class PARMConfig(PreferenceARMConfig):
    """PARM defaults (official code and run.sh, METHODS §4 and §12.4)."""

    r1: int = field(
        default=4, metadata={"help": "rank of the preference-agnostic core W1; PARM: 4"}
    )
    r2: int = field(default=4, metadata={"help": "rank of the preference-aware core W2; PARM: 4"})
    lora_alpha: float = field(
        default=8.0, metadata={"help": "PARM: 8; scale s = lora_alpha / r2 (r2 only) = 2"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r1 < 0 or self.r2 < 1:
            raise ConfigError(f"PARM needs r1 >= 0 and r2 >= 1, got r1={self.r1}, r2={self.r2}")


def draw_alpha(seed: int, micro_step: int, num_objectives: int, concentration: float) -> np.ndarray:
    """alpha ~ Dirichlet(concentration 1_k) from a generator seeded with ``(seed, micro_step)``.

    The draw depends only on these numbers, and the trainer numbers micro-batches as one
    process would (mobench.training.PairLoss), so a distributed run uses the same alpha for the
    same pairs as a single-process run.
    """
    if concentration <= 0:
        raise ConfigError(f"pref_sample_p must be > 0, got {concentration}")
    rng = np.random.default_rng([seed, micro_step])
    return rng.dirichlet(np.full(num_objectives, concentration))


def alpha_weighted_winners(
    labels: torch.Tensor, alpha: torch.Tensor, tol: float = 1e-9
) -> torch.Tensor:
    """The winner of the alpha-weighted preference per pair (UniARM's global label, METHODS §5.3).

    Response 0 wins if ``sum_i alpha_i (2 [z_i = 0] - 1) > 0``, response 1 if it is < 0; ties
    (and pairs without any label) give -1, which :func:`bradley_terry_loss` skips. Objectives
    whose label is unknown (-1) do not vote.

    Args:
        labels: (B, k) per-objective winners (0, 1, or -1 = unknown).
        alpha: (k,) preference vector.
    """
    votes = torch.where(labels == 0, 1.0, torch.where(labels == 1, -1.0, 0.0))
    score = votes.to(alpha.dtype) @ alpha.to(labels.device)
    winners = torch.where(score > tol, 0, torch.where(score < -tol, 1, -1))
    return winners.to(torch.long)


def preference_loss(
    model: Any,
    context: PreferenceContext,
    batch: dict[str, torch.Tensor],
    alpha: torch.Tensor,
    betas: Sequence[float],
    global_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``sum_i alpha_i L_i (+ global_weight * L_global)`` on one shared batch (METHODS §4.2, §5.3).

    Sets ``alpha`` (k,) into ``context`` (it stays set through ``backward()``, which gradient
    checkpointing needs), computes the summed response log-probs once, and takes one
    Bradley–Terry loss per objective with that objective's label and beta_r. With
    ``global_weight > 0`` (UniARM) it adds the BT loss of the alpha-weighted winner
    (:func:`alpha_weighted_winners`) with beta ``sum_i alpha_i beta_i``.

    Returns:
        (loss, logs): logs hold each term's value as ``loss_<i>`` / ``loss_global``.
    """
    context.set(alpha.to(batch["input_ids"].device))  # once, not once per adapted layer
    logps = sequence_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    ).view(-1, 2)
    weights = alpha.to(device=logps.device, dtype=logps.dtype)
    labels = batch["labels"]
    if labels.shape[1] != len(betas):
        raise ValueError(
            f"batch has {labels.shape[1]} label columns but {len(betas)} beta_r values"
        )
    total = logps.new_zeros(())
    logs: dict[str, float] = {}
    for i, beta in enumerate(betas):
        loss_i, _ = bradley_terry_loss(logps, labels[:, i], beta)
        total = total + weights[i] * loss_i
        logs[f"loss_{i}"] = float(loss_i.detach())
    if global_weight:
        winners = alpha_weighted_winners(labels, weights)
        beta_global = float(weights @ weights.new_tensor(list(betas)))
        loss_g, _ = bradley_terry_loss(logps, winners, beta_global)
        total = total + global_weight * loss_g
        logs["loss_global"] = float(loss_g.detach())
    return total, logs


class PreferenceARMGuide(Guide):
    """log pi_theta(v | x, y_<t; alpha_row): one adapted backbone, one KV cache, per-row alphas.

    Args:
        model: the guide backbone with preference adapters injected.
        alpha_columns: for each objective in the STORED (training) order, its column in the
            task's alphas; ``alphas[:, alpha_columns]`` is what the adapters were trained with.
        vocab_size / pad_token_id: the shared vocabulary and the guide tokenizer's pad id.
    """

    def __init__(
        self, model: Any, alpha_columns: Sequence[int], vocab_size: int, pad_token_id: int
    ) -> None:
        self.model = model
        self.context: PreferenceContext = model.preference_context
        self.alpha_columns = list(alpha_columns)
        self.stepper = CausalLMStepper(model, vocab_size, pad_token_id)
        self.forwards_per_token = {"guide": 1}

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        columns = torch.tensor(self.alpha_columns, device=alphas.device)
        # set once: the rows' alphas stay in the context for every step of this decode
        self.context.set(alphas.index_select(1, columns).to(self.stepper.device, torch.float32))
        return self.stepper.prefill(prompt_ids)

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.stepper.step(token_ids)

    def drop(self, keep: torch.Tensor) -> None:
        self.context.select(keep)  # keep each row's alpha with its KV cache row
        self.stepper.drop(keep)


class PreferenceARMFusedGuide(FusedGuide):
    """Base rows and guide rows in ONE forward of the base model's own weights (guide model =
    base model): lane 0 the base (adapters inactive: exactly W0 x), lane 1 the preference ARM
    with each row's alpha. One copy of the backbone, one KV cache for both lanes.

    Args:
        model: the base model with this method's preference adapters injected and loaded.
        alpha_columns / vocab_size / pad_token_id: as :class:`PreferenceARMGuide`.
    """

    def __init__(
        self, model: Any, alpha_columns: Sequence[int], vocab_size: int, pad_token_id: int
    ) -> None:
        self.context: PreferenceContext = model.preference_context
        self.alpha_columns = list(alpha_columns)
        self.stepper = LaneStepper(model, 2, vocab_size, pad_token_id)
        self.lanes = 2
        self.forwards_per_token = {"fused": 1}

    def prefill(
        self, prompt_ids: list[list[int]], guide_prompt_ids: list[list[int]], alphas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        columns = torch.tensor(self.alpha_columns, device=alphas.device)
        rows = alphas.index_select(1, columns).to(self.stepper.device, torch.float32)
        # lane-major: the base rows (adapters inactive), then the guide rows
        lane_alphas = rows.repeat(2, 1)
        active = torch.zeros(2 * len(rows), dtype=torch.bool, device=rows.device)
        active[len(rows) :] = True

        def encoded(index: torch.Tensor) -> None:  # the rows the prefill encodes
            self.context.set(lane_alphas[index], active[index])

        # base rows of one prompt share a prefill; guide rows depend on their alpha
        groups = [prompt_groups(prompt_ids), None]
        base, guide = self.stepper.prefill([prompt_ids, guide_prompt_ids], groups, encoded)
        self.context.set(lane_alphas, active)  # every row again, for the steps
        return base, guide

    def step(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base, guide = self.stepper.step(token_ids)
        return base, guide

    def drop(self, keep: torch.Tensor) -> None:
        self.context.select(self.stepper.lane_rows(keep))
        self.stepper.drop(keep)


ConfigT = TypeVar("ConfigT", bound=PreferenceARMConfig)


def config_from_json(cls: type[ConfigT], values: dict[str, Any]) -> ConfigT:
    """Rebuild a config dataclass from its JSON form (lists back to tuples), strictly."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"stored {cls.__name__} has unknown field(s) {unknown}; retrain the guide"
        )
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kwargs)


class PreferenceARM(Method):
    """Shared training, saving and loading of a preference-conditioned ARM (PARM, UniARM).

    A subclass chooses the adapter (:meth:`inject`) and, optionally, a global-loss weight.
    """

    config: PreferenceARMConfig

    @abstractmethod
    def inject(
        self, model: Any, objectives: Sequence[str], tokenizer: Any | None
    ) -> dict[str, Any]:
        """Inject this method's adapters into ``model`` (objectives in alpha order) and return
        the architecture facts to store in the guide config. ``tokenizer`` is the guide
        tokenizer when training, None when the adapters are about to be loaded from disk."""

    @property
    def global_loss_weight(self) -> float:
        """Weight of the alpha-weighted global BT term (0 for PARM)."""
        return 0.0

    def beta_r(self, objective: str) -> float:
        return self.config.beta_r.get(objective, self.config.beta_r_default)

    def pair_loss(self, context: PreferenceContext, objectives: Sequence[str]) -> PairLoss:
        """The loss of one micro-batch as the trainer calls it: draws alpha for ``micro_step``
        (:func:`draw_alpha`), then :func:`preference_loss`."""
        cfg = self.config
        betas = [self.beta_r(o) for o in objectives]

        def loss(model: Any, batch: dict[str, torch.Tensor], micro_step: int) -> Any:
            alpha = draw_alpha(cfg.seed, micro_step, len(objectives), cfg.pref_sample_p)
            return preference_loss(
                model,
                context,
                batch,
                torch.as_tensor(alpha, dtype=torch.float32),
                betas,
                self.global_loss_weight,
            )

        return loss

    def train(self, task: Task, splits: Splits, spec: RunSpec, out_dir: Path) -> None:
        cfg = self.config
        objectives = list(task.objectives)
        tok = load_tokenizer(spec.guide_model)
        template = spec.templates.get(spec.guide_model)
        pairs = tokenize_pairs(
            splits.train, lambda p: task.render(p.prompt, tok, template), tok, objectives, cfg
        )
        model, _ = load_causal_lm(spec.guide_model, dtype="float32", device=spec.device)
        torch.manual_seed(cfg.seed)  # reproducible adapter initialisation
        architecture = self.inject(model, objectives, tok)
        result = train_pairs(
            model,
            pairs,
            self.pair_loss(model.preference_context, objectives),
            cfg,
            pad_token_id=tok.pad_token_id,
            bf16=spec.dtype == "bfloat16",
            output_dir=str(out_dir / ".trainer"),
        )
        training = {
            "pairs": len(pairs),
            "beta_r": {o: self.beta_r(o) for o in objectives},
            "alpha_distribution": f"Dirichlet({cfg.pref_sample_p})",
            **dataclasses.asdict(result),
        }
        self.save_guide(
            model,
            out_dir,
            objectives,
            architecture,
            guide_model=spec.guide_model,
            base_model=spec.base_model,
            training=training,
        )

    def save_guide(
        self,
        model: Any,
        out_dir: Path,
        objectives: Sequence[str],
        architecture: dict[str, Any],
        *,
        guide_model: str,
        base_model: str,
        training: dict[str, Any] | None = None,
    ) -> None:
        """Write ``adapters.safetensors`` and ``guide_config.json`` (objective order, ranks,
        parameter count, model ids, config, training record) into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        save_adapters(
            model,
            out_dir / ADAPTER_FILE,
            metadata={"method": self.name, "objectives": json.dumps(list(objectives))},
        )
        config = {
            "method": self.name,
            "objectives": list(objectives),
            "guide_model": guide_model,
            "base_model": base_model,
            "architecture": {
                **architecture,
                "trainable_parameters": count_adapter_parameters(model),
            },
            "config": dataclasses.asdict(self.config),
            "training": training or {},
        }
        (out_dir / GUIDE_CONFIG).write_text(json.dumps(config, indent=2))

    def guide(self, artifacts: Path, task: Task, models: ModelContext) -> Guide | FusedGuide:
        """The preference ARM for ``models``: fused into the base model's forward when the guide
        model is the base (``models.fused``), else on its own copy of the guide backbone."""
        stored = json.loads((artifacts / GUIDE_CONFIG).read_text())
        if stored.get("method") != self.name:
            raise ConfigError(
                f"guide in {artifacts} was trained by method '{stored.get('method')}', "
                f"not '{self.name}'; load it with that method"
            )
        check_objectives(stored["objectives"], task, artifacts)
        # fingerprints: "./m" and "/abs/m" name the same folder (a reused cached guide)
        if source_fingerprint(stored["guide_model"]) != source_fingerprint(models.guide_source):
            raise ConfigError(
                f"guide in {artifacts} was trained on backbone '{stored['guide_model']}' but the "
                f"run's guide model is '{models.guide_source}'; use the same guide model"
            )
        # the architecture comes from the artifact's own config, not from today's defaults
        trained = type(self)(config_from_json(type(self.config), stored["config"]))
        # fused: the adapters go onto the base model itself, base and guide rows share forwards
        model = models.base if models.fused else models.load_guide_backbone()
        trained.inject(model, stored["objectives"], tokenizer=None)
        load_adapters(model, artifacts / ADAPTER_FILE)
        # the adapters stay in fp32 on a bf16 backbone (computed there, x cast up), as the
        # official PARM (peft) keeps them: bf16 adapters moved the guide's log-probs by 0.26
        # against fp32, the official code's by 0.17 (PEER-CHECKS, difference 2)
        model.eval()
        # map by name: the adapters read alpha in the stored order (never mirror the front)
        columns = [task.objectives.index(o) for o in stored["objectives"]]
        guide_cls = PreferenceARMFusedGuide if models.fused else PreferenceARMGuide
        return guide_cls(model, columns, models.vocab_size, models.guide_tokenizer.pad_token_id)

    def random_guide(self, task: Task, models: ModelContext, out_dir: Path, seed: int) -> None:
        """The adapter of the configured shape with its training init (A, W1, Theta) and random,
        non-zero B and G (both start at zero in training, which would make the guide the
        backbone itself and alpha irrelevant), saved as :meth:`train` saves it."""
        objectives = list(task.objectives)
        model = models.load_guide_backbone()
        torch.manual_seed(seed)
        architecture = self.inject(model, objectives, models.guide_tokenizer)
        generator = torch.Generator().manual_seed(seed)
        E = model.preference_context.moslora_E
        # G o(alpha) of order RANDOM_FILM whatever the scale of the embeddings behind E
        film_std = 0.0 if E is None else RANDOM_FILM / float(E.norm(dim=1).mean())
        with torch.no_grad():
            for name, param in model.named_parameters():
                kind = name.rpartition(".")[2]
                if kind in ("pblora_B", "moslora_B", "moslora_G"):
                    std = film_std if kind == "moslora_G" else RANDOM_SCALE
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
        self.save_guide(
            model,
            out_dir,
            objectives,
            architecture,
            guide_model=models.guide_source,
            base_model=models.base_source,
            training={"random": "no training: random weights (mobench bench)"},
        )

    def trainable_parameters(self, artifacts: Path) -> int:
        return count_saved_adapter_parameters(artifacts / ADAPTER_FILE)

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        """1 base + 1 preference-ARM evaluation per token, whatever the number of objectives
        (separate forwards, or two lanes of one fused forward)."""
        return {"base": 1, "guide": 1}


@register_method("parm")
class PARM(PreferenceARM):
    """PARM: one PBLoRA ARM conditioned on alpha; guide(alpha) = log pi_theta(. | alpha)."""

    name = "parm"
    config_cls = PARMConfig

    def __init__(self, config: PARMConfig) -> None:
        super().__init__(config)
        self.config: PARMConfig = config

    def inject(
        self, model: Any, objectives: Sequence[str], tokenizer: Any | None
    ) -> dict[str, Any]:
        cfg = self.config
        context = PreferenceContext(len(objectives))
        factory = functools.partial(
            PBLoRALinear,
            context=context,
            r1=cfg.r1,
            r2=cfg.r2,
            lora_alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
        )
        wrapped = inject_adapters(model, factory, cfg.target_modules)
        return {
            "adapter": "pblora",
            "r1": cfg.r1,
            "r2": cfg.r2,
            "lora_alpha": cfg.lora_alpha,
            "scaling": cfg.lora_alpha / cfg.r2,
            "target_modules": list(cfg.target_modules),
            "adapted_modules": len(wrapped),
            "num_objectives": len(objectives),
        }
