"""MOD: multi-objective decoding with per-objective DPO policies (Shi et al., NeurIPS 2024;
METHODS §6.1, §12.2).

Training (:mod:`mobench.methods.dpo_policies`, shared with Rewarded Soups and MOD-w2s through the
guide cache): one LoRA DPO policy pi_i per objective on the base model itself.

Decoding: for reverse-KL policies with a common reference, MOD's closed form on the simplex is
pi* ∝ prod_i pi_i^alpha_i (the reference term pi_ref^(1 - sum_i alpha_i) cancels), so the
next-token score is

    score(v) = sum_i alpha_i log pi_i(v | x, y_<t)

every term a log-softmax over the shared vocabulary in fp32. This REPLACES the base model's
distribution (the base is not a term of it); MOD's code takes the argmax of
``sum_i w_i [logit_i(v) + C_i]`` over raw logits plus running sequence scores, which has the
same argmax because the softmax normalisers and C_i do not depend on v (METHODS §6.1). A policy
whose alpha_i is 0 is not run.

Cost per token: k policy forwards, run by the engine as k lanes of one forward of the base
model's weights (no base rows).
"""

from __future__ import annotations

from pathlib import Path

import torch
from mobench.methods.dpo_policies import DPOPolicies

from mobench.config import RunSpec
from mobench.engine import GuideSpec
from mobench.interfaces import Task
from mobench.models import ModelContext
from mobench.registry import register_method


def lane_weights(alphas: torch.Tensor) -> torch.Tensor:
    """MOD's next-token score, the one place its formula is written: ``sum_i alpha_i log pi_i``
    as lanes ``[policy_1..k]`` with weights ``w_i = alpha_i``; ``alphas (B, k) -> (k, B)``."""
    return alphas.T


@register_method("mod")
class MOD(DPOPolicies):
    """MOD: the base replaced by sum_i alpha_i log pi_i over per-objective DPO policies."""

    name = "mod"
    replaces_base = True

    def guide_spec(self, artifacts: Path, task: Task, models: ModelContext) -> GuideSpec:
        return GuideSpec(
            self.policy_lanes(artifacts, task, models), lane_weights, replaces_base=True
        )

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        """k policy evaluations per token and no base forward (MOD replaces the base)."""
        return {"guide": len(spec.objectives)}
