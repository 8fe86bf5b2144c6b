"""MOD-w2s: small per-objective DPO policies steering a (larger) frozen base (METHODS §6.2, §12.2).

Training (METHODS §6.1, :mod:`mobench.methods.dpo_policies`, shared with MOD and Rewarded
Soups): for each objective i, one LoRA policy pi_i^S on the guide backbone, trained with trl's
``DPOTrainer`` on the pairs labelled for i (chosen = the response preferred for i). The DPO
reference is the guide backbone without adapter, pi_ref^S.

Decoding (METHODS §6.2, a reconstruction [RECON]): MOD's closed form for reverse-KL policies is
pi* ∝ pi_ref^(1 - sum_i alpha_i) prod_i pi_i^alpha_i; swapping the small reference for the large
base (emulated fine-tuning) gives

    log pi~(v) = log pi_L(v) + sum_i alpha_i [ log pi_i^S(v) - log pi_ref^S(v) ] - log Z_t

so the guide returns sum_i alpha_i (log pi_i^S - log pi_ref^S), every term a log-softmax over the
shared vocabulary in fp32; the decoding loop adds log pi_L (beta = 1). With the guide backbone
equal to the base and alpha on the simplex, this is plain MOD, sum_i alpha_i log pi_i.

Cost per token: 1 base forward + (k + 1) small forwards (k policies and the reference) in the
reference structure. The method states the lanes and weights (:func:`lane_weights`); the core's
engine (mobench.engine) runs them as lanes of one forward of the small backbone, or fused into the
base's forward when the guide backbone is the base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from mobench.methods.dpo_policies import DPOPolicies

from mobench.config import RunSpec
from mobench.engine import GuideSpec, Lane
from mobench.interfaces import Task
from mobench.models import ModelContext
from mobench.registry import register_method


def lane_weights(alphas: torch.Tensor) -> torch.Tensor:
    """MOD-w2s's guidance (METHODS §6.2), the one place its formula is written:
    ``sum_i alpha_i (log pi_i^S - log pi_ref^S)`` as lanes ``[reference, policy_1..k]`` with
    weights ``w_ref = -sum_i alpha_i`` and ``w_i = alpha_i``; ``alphas (B, k) -> (1 + k, B)``."""
    return torch.cat([-alphas.sum(dim=1, keepdim=True).T, alphas.T])


@register_method("mod_w2s")
class MODw2s(DPOPolicies):
    """MOD-w2s: per-objective DPO policies mixed as sum_i alpha_i (log pi_i - log pi_ref)."""

    name = "mod_w2s"

    def guide_spec(self, artifacts: Path, task: Task, models: ModelContext) -> GuideSpec:
        """Lanes ``[reference, policy_1..k]``: pi_ref^S is the guide backbone without adapter
        (when it is the base model, the engine reuses the base's own rows), each policy the
        backbone plus its LoRA; weighted by :func:`lane_weights`."""
        return GuideSpec((Lane(), *self.policy_lanes(artifacts, task, models)), lane_weights)

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        """1 large-base + (k + 1) small evaluations per token: k policies and the reference
        (METHODS §6.2), as separate forwards or lanes of one forward."""
        return {"base": 1, "guide": len(spec.objectives) + 1}
