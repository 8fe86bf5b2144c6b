"""PARM: one preference-aware ARM for every objective, built from PBLoRA (METHODS §4).

The guide is the guide backbone with a PBLoRA adapter (:class:`PBLoRALinear`, below) on q/k/v.
Its low-rank core is ``blockdiag(W1, W2(alpha))`` with ``W2(alpha) = reshape(alpha^T Theta)``,
so one set of weights serves every preference vector.

Training (``preference_arm.PreferenceARM.train``, shared with UniARM; Algorithm 1 as the
official code runs it, METHODS §4.2):

* ONE shared batch in which every pair carries all k labels (not one batch per objective);
* per micro-batch, alpha ~ Dirichlet(p 1_k), p = ``pref_sample_p`` = 0.5, drawn from a generator
  seeded with ``(seed, micro_step)``, where ``micro_step`` is the single-process micro-batch
  index the trainer reports (mobench.training.PairLoss), so a multi-GPU run draws the same alpha
  for the same pairs as one process (the official code seeds numpy identically on every rank,
  so its ranks share each step's alpha instead, METHODS §10.10), and written into the model's
  :class:`~mobench.methods.preference_arm.PreferenceContext` before the forward;
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

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from mobench.methods.preference_arm import (
    PreferenceAdapterLinear,
    PreferenceARM,
    PreferenceARMConfig,
    PreferenceContext,
    accumulate_update,
    inject_adapters,
)
from torch import Tensor, nn

from mobench.config import ConfigError
from mobench.registry import register_method


class PBLoRALinear(PreferenceAdapterLinear):
    """PARM's preference-aware bilinear LoRA (METHODS §4.1).

    ``W2(alpha) = reshape_{r2 x r2}(alpha @ Theta)``, ``W(alpha) = blockdiag(W1, W2(alpha))``,
    ``h = W0 x + s * B W(alpha) A dropout(x)`` with ``s = lora_alpha / r2`` (r2 only, as in the
    official code). W(alpha) = I gives plain LoRA of rank r1 + r2.

    Trainable parameters per module: ``(r1+r2)(m+n) + r1^2 + k r2^2``.

    Args:
        base: the frozen W0 (out n x in m); its bias, if any, is kept.
        context: the model's :class:`PreferenceContext` (k = ``context.num_objectives``).
        r1: rank of the preference-agnostic core W1 (official run: 4).
        r2: rank of the preference-aware core W2(alpha) (official run: 4).
        lora_alpha: scale numerator; official run 8, so s = 2.
        dropout: dropout on the adapter's input (official run: 0.05).
        dtype: dtype of the adapter parameters (fp32 by default, also for a bf16 base); the
            forward computes in this dtype too (the input is cast up) and adds the update to the
            base output in it, rounding once to the base's dtype.
    """

    pblora_A: nn.Parameter
    pblora_B: nn.Parameter
    pblora_W1: nn.Parameter
    pblora_Theta: nn.Parameter

    def __init__(
        self,
        base: nn.Linear,
        context: PreferenceContext,
        r1: int = 4,
        r2: int = 4,
        lora_alpha: float = 8.0,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(base, context, dropout)
        if r1 < 0 or r2 < 1:
            raise ValueError(f"PBLoRA needs r1 >= 0 and r2 >= 1, got r1={r1}, r2={r2}")
        self.r1, self.r2 = r1, r2
        self.scaling = lora_alpha / r2  # §4.1: divides by r2 only, not r1 + r2
        k, rank = context.num_objectives, r1 + r2
        new = self._new_parameter
        self.pblora_A = new(rank, self.in_features, dtype=dtype)  # rows: A1 ; A2
        self.pblora_B = new(self.out_features, rank, dtype=dtype)  # columns: B1 | B2
        self.pblora_W1 = new(r1, r1, dtype=dtype)
        self.pblora_Theta = new(k, r2 * r2, dtype=dtype)  # row i = vec(W2(e_i))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """§4.1 init: A, W1, Theta kaiming-uniform(a=sqrt 5) (nn.Linear's default); B = 0, so
        the layer starts as W0 x exactly."""
        for p in (self.pblora_A, self.pblora_W1, self.pblora_Theta):
            if p.numel():
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        nn.init.zeros_(self.pblora_B)

    def preference_core(self, alphas: Tensor) -> Tensor:
        """W2(alpha) for each row: ``(B, k) -> (B, r2, r2)``; linear in alpha (§4.1)."""
        theta = self.pblora_Theta
        return (alphas.to(theta.dtype) @ theta).view(-1, self.r2, self.r2)

    def update(self, x: Tensor, alphas: Tensor) -> Tensor:
        # the adapter's own dtype (fp32 by default, also on a bf16 backbone; x is cast up)
        dt, batch = self.pblora_A.dtype, x.shape[0]
        # A first: everything after this is rank-sized, never an n x m delta-W.
        u = F.linear(self.dropout(x.to(dt)), self.pblora_A).reshape(batch, -1, self.r1 + self.r2)
        u1, u2 = u.split([self.r1, self.r2], dim=-1)
        # W(alpha) is block diagonal: W(alpha) u = [W1 u1 ; W2(alpha_b) u2], the second block a
        # batched (r2 x r2) matmul with one core per row.
        w2 = self.preference_core(alphas).to(dt)
        v = torch.cat([F.linear(u1, self.pblora_W1.to(dt)), u2 @ w2.transpose(1, 2)], dim=-1)
        return F.linear(v * self.scaling, self.pblora_B.to(dt))

    def _inference_forward(self, x: Tensor, out: Tensor, tail: int) -> Tensor:
        """The same update for decoding: only on the active rows ``x[tail:]``, with each row's
        ``s W(alpha)`` built once per alpha change (an r x r block-diagonal core), so a layer
        costs two thin matmuls and one batched r x r product."""
        n = x.shape[0] - tail
        if n == 0:
            return out
        # each row's (s W)^T, contiguous for bmm, built once per alpha change
        # computed in the adapter's dtype (fp32 by default) whatever the backbone's
        dt, rank = self.pblora_A.dtype, self.r1 + self.r2
        (core_t,) = self._cached(
            dt, n, lambda: (self._scaled_cores(tail, n, dt).transpose(1, 2).contiguous(),)
        )
        x_rows, out_rows = self._tail_rows(x, out, tail)
        u = torch.bmm(F.linear(x_rows.to(dt), self.pblora_A).view(n, -1, rank), core_t)
        accumulate_update(out_rows, u.view(-1, rank), self.pblora_B.t())
        return out

    def _scaled_cores(self, tail: int, n: int, dtype: torch.dtype) -> Tensor:
        """``s blockdiag(W1, W2(alpha_b))`` for the n active rows, ``(n, r1+r2, r1+r2)``."""
        alphas = self.context.alphas
        assert alphas is not None
        rows = alphas.expand(n, -1) if alphas.ndim == 1 else alphas[tail:]
        w2 = self.preference_core(rows.to(self.pblora_Theta.device))
        core = w2.new_zeros(len(rows), self.r1 + self.r2, self.r1 + self.r2)
        core[:, : self.r1, : self.r1] = self.pblora_W1
        core[:, self.r1 :, self.r1 :] = w2
        return (core * self.scaling).to(dtype)

    def extra_repr(self) -> str:
        return f"r1={self.r1}, r2={self.r2}, scaling={self.scaling:g}"


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
