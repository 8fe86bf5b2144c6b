"""Rewarded Soups: the policy interpolated in weight space (Ramé et al., NeurIPS 2023).

Training (:mod:`mobench.methods.dpo_policies`, shared with MOD and MOD-w2s through the guide
cache): one LoRA DPO policy per objective on the base model, ``Delta W_i = s_i B_i A_i`` on each
adapted layer.

Decoding: the interpolated policy ALONE, which replaces the base (it is not a guide added to it):

    W(alpha) = W0 + sum_i alpha_i Delta W_i = W0 + sum_i alpha_i s_i B_i A_i

on every adapted layer, so each row decodes ``log pi_{W(alpha)}``. This is the interpolation of
full weights. It is not the interpolation of the LoRA factors,
``(sum_i alpha_i B_i)(sum_i alpha_i A_i)``, which adds cross terms ``alpha_i alpha_j B_i A_j``
(tests/test_paper_baselines.py shows the two differ). It equals peft's
``add_weighted_adapter(..., combination_type="cat")``, the factors concatenated along the rank.

Cost per token: 1 forward of the base weights with a per-row weighted adapter
(:class:`InterpolatedLoRALinear`): ``x -> [A_1; ..; A_k] x`` (rank k r), each row's rank block i
scaled by its alpha_i, then ``[s_1 B_1 | .. | s_k B_k]``; never a dense n x m Delta W, so the
rows of one batch carry different alphas and the whole front of a prompt decodes in one batch
(merging W(alpha) per alpha would need one forward per alpha).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from mobench.methods.dpo_policies import DPOPolicies
from mobench.methods.preference_arm import (
    CONTEXT_ATTR,
    PreferenceAdapterLinear,
    PreferenceContext,
    accumulate_update,
)
from torch import Tensor, nn

from mobench.config import RunSpec
from mobench.engine import Conditioned, GuideSpec, Lane, LoRA
from mobench.fused import (
    LayerAdapter,
    LoRAWeights,
    adapted_layers,
    read_peft_lora,
    replace_module,
    stack_adapters,
)
from mobench.interfaces import Task
from mobench.models import ModelContext
from mobench.registry import register_method


class InterpolatedLoRALinear(PreferenceAdapterLinear):
    """``W0 x + sum_i alpha_i s_i B_i A_i x`` per row (alpha from the model's preference context).

    The k adapters are stacked along the rank (zero-padded to the largest rank: exact), in fp32
    with each scale folded into its B; on a bf16 backbone the input is cast up and the update
    added in fp32, rounded once (as peft's fp32 LoRA on a bf16 base).

    Args:
        base: the frozen W0.
        context: the model's :class:`PreferenceContext` (k = number of adapters).
        adapters: per objective, ``(A (r, in), B (out, r), s)``, or None when that objective's
            LoRA does not touch this layer (a zero Delta W).
    """

    rs_A: Tensor
    rs_B: Tensor

    def __init__(
        self,
        base: nn.Linear,
        context: PreferenceContext,
        adapters: Sequence[LayerAdapter],
    ) -> None:
        super().__init__(base, context, dropout=0.0)
        if len(adapters) != context.num_objectives:
            raise ValueError(
                f"{len(adapters)} adapters for a context of {context.num_objectives} objectives"
            )
        k = len(adapters)
        stack_a, stack_b = stack_adapters(base, adapters)  # (k, r, in), (k, out, s r)
        rank = stack_a.shape[1]
        self.rank = rank
        # [A_1; ..; A_k] (k r, in) and [s_1 B_1 | .. | s_k B_k] (out, k r)
        self.register_buffer("rs_A", stack_a.reshape(k * rank, -1), persistent=False)
        self.register_buffer(
            "rs_B", stack_b.permute(1, 0, 2).reshape(-1, k * rank).contiguous(), persistent=False
        )

    def rank_weights(self, alphas: Tensor) -> Tensor:
        """Each row's alpha_i repeated over adapter i's rank block: ``(B, k) -> (B, k r)``."""
        return alphas.to(self.rs_A.dtype).repeat_interleave(self.rank, dim=-1)

    def update(self, x: Tensor, alphas: Tensor) -> Tensor:
        u = F.linear(x.to(self.rs_A.dtype), self.rs_A)  # (B, ..., k r)
        w = self.rank_weights(alphas)
        u = u * w.view(w.shape[0], *([1] * (u.ndim - 2)), w.shape[1])
        return F.linear(u, self.rs_B)

    def _inference_forward(self, x: Tensor, out: Tensor, tail: int) -> Tensor:
        """The same update on the active rows ``x[tail:]``, each row's rank weights built once
        per alpha change: two thin matmuls and one scaling per layer."""
        n = x.shape[0] - tail
        if n == 0:
            return out
        dt = self.rs_A.dtype

        def build() -> tuple[Tensor, ...]:
            alphas = self.context.alphas
            assert alphas is not None
            rows = alphas.expand(n, -1) if alphas.ndim == 1 else alphas[tail:]
            return (self.rank_weights(rows.to(self.rs_A.device))[:, None, :],)

        (w,) = self._cached(dt, n, build)
        x_rows, out_rows = self._tail_rows(x, out, tail)
        u = F.linear(x_rows.to(dt), self.rs_A).view(n, -1, self.rs_A.shape[0]) * w
        accumulate_update(out_rows, u.view(-1, self.rs_A.shape[0]), self.rs_B.t())
        return out

    def extra_repr(self) -> str:
        return f"adapters={self.context.num_objectives}, rank={self.rank}"


def install_interpolated_loras(model: nn.Module, loras: Sequence[LoRAWeights]) -> None:
    """Wrap every linear layer any of ``loras`` (one per objective, in alpha order) touches in
    an :class:`InterpolatedLoRALinear`, sharing one :class:`PreferenceContext` registered as
    ``model.preference_context`` (the engine sets each row's alpha there).

    Raises:
        AdapterFormatError: a LoRA names a module the model lacks or one that is not linear.
    """
    context = PreferenceContext(len(loras))
    for module, linear, parts in adapted_layers(model, loras):
        replace_module(model, module, InterpolatedLoRALinear(linear, context, parts))
    for p in model.parameters():
        p.requires_grad_(False)
    setattr(model, CONTEXT_ATTR, context)


def lane_weights(alphas: torch.Tensor) -> torch.Tensor:
    """One lane, the interpolated policy, with weight 1: its log-probs are the whole score."""
    return torch.ones(1, alphas.shape[0], dtype=torch.float32)


@register_method("rs")
class RewardedSoups(DPOPolicies):
    """Rewarded Soups: decode with W0 + sum_i alpha_i s_i B_i A_i, the policies' weights
    interpolated per row."""

    name = "rs"
    replaces_base = True

    def guide_spec(self, artifacts: Path, task: Task, models: ModelContext) -> GuideSpec:
        lanes = self.policy_lanes(artifacts, task, models)
        paths = [lane.adapter for lane in lanes if isinstance(lane.adapter, LoRA)]

        def install(model: nn.Module) -> None:
            install_interpolated_loras(model, [read_peft_lora(a.path, a.name) for a in paths])

        # the policies are in the task's objective order, so alpha's columns as they are
        soup = Conditioned(install, tuple(range(len(task.objectives))))
        return GuideSpec((Lane(soup),), lane_weights, name="soup", replaces_base=True)

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        """One forward of the interpolated policy per token, no base forward."""
        return {"soup": 1}
