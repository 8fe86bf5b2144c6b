"""UniARM: one ARM for every objective built from MoSLoRA — a RECONSTRUCTION (METHODS §5).

UniARM has no public code and its paper body could not be read; what is known comes from the
abstract and four ICLR-2026 reviews (METHODS §5): a preference-agnostic module extracts shared
low-rank features, a preference-modulation module applies an affine (scale and shift) map to
them conditioned on a "mixed preference vector" built from the model's own semantic embeddings
of the objectives, and training adds a lambda-weighted global term to the per-dimension losses.
Everything concrete below is mobench's reconstruction (§5 steps 1-4, §12.5); each part is a
config field or a small function, so a better-informed variant is a config change:

1. **Objective descriptors** [RECON]: ``e_i`` = mean of the guide backbone's frozen input
   embeddings over the tokens of a short text description of objective i
   (``objective_descriptions``; defaults "helpfulness", "harmlessness", "humor"). The mixed
   vector is ``o(alpha) = sum_i alpha_i e_i``. mobench scales each ``e_i`` to unit length
   (``unit_descriptors``) and can first subtract their mean (``center_descriptors``, off by
   default); see their help for why. E is computed once at training time and saved
   with the adapters (it is not trained and not counted as a trainable parameter).
2. **MoSLoRA layer** [RECON] (:class:`ModulatedLoRALinear`, below; named so as not to be taken
   for the unrelated "Mixture-of-Subspaces LoRA", also called MoSLoRA) on q/k/v: shared
   ``u = A dropout(x)`` (rank r), ``[gamma; delta] = G o(alpha)``, ``u' = (1 + gamma) * u +
   delta``, output ``+= s B u'`` with ``s = lora_alpha / r``; B = 0 and G = 0 at init (the
   layer starts as the base model with identity modulation).
3. **Shape of G** [RECON] (``modulation``): ``"shared"`` (default) = one G (2r x d) for the
   whole model; ``"linear"`` = one G per adapted module. The default is chosen so that the
   trainable parameters match PARM's budget (UniARM claims its gains come "without extra
   parameters"): with r = r1 + r2 = 8, LLaMA-7B (96 q/k/v modules, d = 4096) has
   96 * 8 * 8192 + 2 * 8 * 4096 = 6,356,992 parameters vs PARM's 6,296,064 (+1.0%); SmolLM2-135M
   (90 modules, d = 576) 654,336 vs PARM's 649,440 (+0.8%). ``"linear"`` doubles the 7B count.
4. **Training** [RECON]: as PARM (alpha ~ Dirichlet(0.5) per micro-batch, one shared batch
   with every label, ``sum_i alpha_i L_i``, METHODS §4.2) plus ``lambda * L_global``, the
   Bradley–Terry loss of the alpha-weighted winner: response 0 wins if
   ``sum_i alpha_i (2 [z_i = 0] - 1) > 0``, response 1 if < 0, ties skipped (§5 step 3). Its
   beta is ``sum_i alpha_i beta_i`` (mobench's choice; the sources give none).
5. **Reward and guidance** [RECON]: the ARM reward is the summed response log-prob (§2) and
   guidance is PARM's: guide(alpha) = log pi_UniARM(v | x, y_<t; alpha), fp32 log-softmax over
   the shared vocabulary, beta = 1 (§5 step 4). 1 guide forward per token.

Defaults and sources (:class:`UniARMConfig`): r = 8 and lora_alpha = 16 (PARM's total rank
r1 + r2 and its scale s = 2, so the two methods differ only in how alpha enters); dropout, target
modules, beta_r, Dirichlet concentration, epochs and optimiser settings are PARM's (official
code, METHODS §4.2), because UniARM's are unknown. ``global_loss_weight`` (lambda) = 1.0 has no
source: it weights the global term like the per-dimension sum (whose alpha weights also sum to 1);
0 gives the architecture-only ablation the reviews mention.

Training, save/load and the objective-order check are shared with PARM
(:class:`~mobench.methods.preference_arm.PreferenceARM`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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


class ModulatedLoRALinear(PreferenceAdapterLinear):
    """UniARM's MoSLoRA layer — a RECONSTRUCTION (METHODS §5; no code or paper body exists).

    A preference-agnostic LoRA extracts shared features ``u = A dropout(x)`` (r of them); a
    preference-modulation module applies a FiLM-style affine map to them, conditioned on the
    alpha-mixed objective representation ``o(alpha) = alpha @ E`` (E: frozen descriptor
    embeddings, ``context.descriptors``)::

        [gamma; delta] = G o(alpha)          G (2r x d), trainable, init 0 (identity modulation)
        u' = (1 + gamma) * u + delta
        h  = W0 x + s * B u',  s = lora_alpha / r,  B init 0, A kaiming-uniform(a=sqrt 5)

    With G = 0 this is plain LoRA of rank r. The modulation is input-independent, so it costs
    one (B, d) x (d, 2r) product per layer and forward.

    Trainable parameters (r, in m, out n, descriptor dim d, M wrapped modules):

    - ``modulation="linear"``: one G per module, ``r(m+n) + 2 r d`` per module. On LLaMA-7B
      (m = n = d = 4096, r = 8) the G's double the LoRA count: about PARM's budget x 2.
    - ``modulation="shared"``: one G for the whole model (owned by the context),
      ``M r(m+n) + 2 r d`` in total — with r = r1 + r2 this matches PARM's budget up to
      2rd - M(r1^2 + k r2^2), the "no extra parameters" reading of UniARM's claim.

    Args:
        base: the frozen W0 (out n x in m).
        context: the model's :class:`PreferenceContext`, built with ``descriptors=E``.
        r: rank of the shared features.
        lora_alpha: scale numerator, s = lora_alpha / r.
        dropout: dropout on the adapter's input.
        modulation: ``"linear"`` (per-module G) or ``"shared"`` (one model-wide G).
        dtype: dtype of the adapter parameters, in which the forward computes (the input is
            cast up; the sum with the base output is rounded once to the base's dtype).
    """

    moslora_A: nn.Parameter
    moslora_B: nn.Parameter
    moslora_G: nn.Parameter | None

    def __init__(
        self,
        base: nn.Linear,
        context: PreferenceContext,
        r: int = 8,
        lora_alpha: float = 16.0,
        dropout: float = 0.0,
        modulation: Literal["linear", "shared"] = "linear",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(base, context, dropout)
        if r < 1:
            raise ValueError(f"MoSLoRA needs r >= 1, got {r}")
        if modulation not in ("linear", "shared"):
            raise ValueError(f"unknown modulation {modulation!r}; known: linear, shared")
        self.r, self.modulation = r, modulation
        self.scaling = lora_alpha / r
        d = context.descriptors.shape[1]
        self.moslora_A = self._new_parameter(r, self.in_features, dtype=dtype)
        self.moslora_B = self._new_parameter(self.out_features, r, dtype=dtype)
        if modulation == "linear":
            self.moslora_G = self._new_parameter(2 * r, d, dtype=dtype)
        else:
            self.register_parameter("moslora_G", None)
            context.shared_modulation(r)  # created once, checked for a matching rank
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """§5 init: A kaiming-uniform(a=sqrt 5); B = 0 and G = 0, so the layer starts as W0 x
        exactly and the modulation as the identity. A shared G is left alone."""
        nn.init.kaiming_uniform_(self.moslora_A, a=math.sqrt(5))
        nn.init.zeros_(self.moslora_B)
        if self.moslora_G is not None:
            nn.init.zeros_(self.moslora_G)

    def modulation_matrix(self) -> Tensor:
        """G ``(2r, d)``: this module's own, or the context's shared one."""
        if self.moslora_G is not None:
            return self.moslora_G
        return self.context.shared_modulation(self.r)

    def film(self, alphas: Tensor) -> tuple[Tensor, Tensor]:
        """(gamma, delta), each ``(B, r)``: ``[gamma; delta] = G (alpha @ E)`` (§5 step 2)."""
        G = self.modulation_matrix()
        mixed = alphas.to(G.dtype) @ self.context.descriptors.to(G.dtype)  # o(alpha), (B, d)
        gamma, delta = F.linear(mixed, G).split(self.r, dim=-1)
        return gamma, delta

    def update(self, x: Tensor, alphas: Tensor) -> Tensor:
        # the adapter's own dtype (fp32 by default, also on a bf16 backbone; x is cast up)
        dt, batch = self.moslora_A.dtype, x.shape[0]
        u = F.linear(self.dropout(x.to(dt)), self.moslora_A).reshape(batch, -1, self.r)
        gamma, delta = (t.to(dt) for t in self.film(alphas))
        u = (1 + gamma[:, None]) * u + delta[:, None]  # per-row scale and shift of the features
        return F.linear(u * self.scaling, self.moslora_B.to(dt))

    def _inference_forward(self, x: Tensor, out: Tensor, tail: int) -> Tensor:
        """The same update for decoding: only on the active rows ``x[tail:]``, with each row's
        scaled FiLM ``s (1 + gamma)`` and ``s delta`` built once per alpha change."""
        n = x.shape[0] - tail
        if n == 0:
            return out
        dt = self.moslora_A.dtype  # fp32 by default, whatever the backbone's dtype
        scale, shift = self._cached(dt, n, lambda: self._scaled_film(tail, n, dt))
        x_rows, out_rows = self._tail_rows(x, out, tail)
        u = F.linear(x_rows.to(dt), self.moslora_A).view(n, -1, self.r)
        u = torch.addcmul(shift[:, None], u, scale[:, None])  # s ((1 + gamma) u + delta)
        accumulate_update(out_rows, u.view(-1, self.r), self.moslora_B.t())
        return out

    def _scaled_film(self, tail: int, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        alphas = self.context.alphas
        assert alphas is not None
        rows = alphas.expand(n, -1) if alphas.ndim == 1 else alphas[tail:]
        gamma, delta = self.film(rows.to(self.moslora_A.device))
        return ((1 + gamma) * self.scaling).to(dtype), (delta * self.scaling).to(dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, modulation={self.modulation}"


#: METHODS §5 step 1's examples of short objective descriptions.
DEFAULT_DESCRIPTIONS = {"helpful": "helpfulness", "harmless": "harmlessness", "humor": "humor"}


@dataclass(frozen=True)
class UniARMConfig(PreferenceARMConfig):
    """UniARM defaults: the METHODS §5 reconstruction; training settings are PARM's."""

    r: int = field(
        default=8, metadata={"help": "rank of the shared features [RECON: PARM's r1 + r2 = 8]"}
    )
    lora_alpha: float = field(
        default=16.0,
        metadata={"help": "scale s = lora_alpha / r = 2 [RECON: PARM's and GenARM's scale]"},
    )
    modulation: Literal["linear", "shared"] = field(
        default="shared",
        metadata={
            "help": "G (2r x d): 'shared' = one for the model (total parameters ~ PARM's, "
            "UniARM's 'no extra parameters'), 'linear' = one per module [RECON]"
        },
    )
    objective_descriptions: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_DESCRIPTIONS),
        metadata={
            "help": "objective -> short text whose mean-pooled input embedding is e_i [RECON, "
            "METHODS §5 step 1]"
        },
    )
    unit_descriptors: bool = field(
        default=True,
        metadata={
            "help": "scale each e_i to unit length [RECON, mobench's choice]: raw mean "
            "embeddings have norm ~2.7 on SmolLM2-135M but ~0.02 on a small random model, and "
            "with G = B = 0 at init the gradient that reaches G is proportional to |o(alpha)|, "
            "so raw descriptors make how fast alpha-conditioning is learned depend on the "
            "backbone's embedding scale (a tiny model then never learns it)"
        },
    )
    center_descriptors: bool = field(
        default=False,
        metadata={
            "help": "subtract the objectives' mean descriptor before the unit scaling, so that "
            "o(alpha) carries only the preference contrast [RECON, an option, off by default]: "
            "raw descriptors share most of their direction (cosine 0.67 for 'helpfulness' / "
            "'harmlessness' on SmolLM2-135M) and G learned one modulation for every alpha "
            "(gamma moved < 0.1 between the extreme alphas); centred, gamma moved by 0.56, but "
            "on the safety mini preset the front still did not steer (harmlessness moved against "
            "its weight), so the default stays the plain mixture "
            "(benchmarks/steering/safety-mini-pilots-20261130.json)"
        },
    )
    global_loss_weight: float = field(
        default=1.0,
        metadata={
            "help": "lambda of L_global (alpha-weighted winner) [RECON, no source: equal weight "
            "to the per-dimension sum; 0 = architecture-only ablation]"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.modulation not in ("linear", "shared"):
            raise ConfigError(
                f"unknown UniARM modulation {self.modulation!r}; use 'shared' or 'linear'"
            )
        if self.r < 1:
            raise ConfigError(f"UniARM needs r >= 1, got {self.r}")
        if self.global_loss_weight < 0:
            raise ConfigError(f"global_loss_weight must be >= 0, got {self.global_loss_weight}")


def objective_descriptors(
    model: Any, tokenizer: Any, texts: Sequence[str], unit: bool = True, center: bool = False
) -> torch.Tensor:
    """E (k, d): per text, the mean of the model's (frozen) input embeddings over its tokens
    (no special tokens), in fp32 (METHODS §5 step 1); minus the rows' mean when ``center``
    (:attr:`UniARMConfig.center_descriptors`), then each row scaled to unit length when
    ``unit`` (:attr:`UniARMConfig.unit_descriptors`).

    Centred, ``o(alpha) = sum_i alpha_i (e_i - mean_j e_j)`` is zero at equal weights and, with
    two objectives, ``(alpha_1 - alpha_2) u`` for one unit direction u."""
    table = model.get_input_embeddings().weight
    rows = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ConfigError(
                f"objective description {text!r} has no tokens; give a non-empty text"
            )
        rows.append(table[torch.tensor(ids, device=table.device)].detach().float().mean(dim=0))
    E = torch.stack(rows)
    if center:
        E = E - E.mean(dim=0, keepdim=True)
    return E / E.norm(dim=1, keepdim=True).clamp_min(1e-12) if unit else E


@register_method("uniarm")
class UniARM(PreferenceARM):
    """UniARM (reconstructed): one MoSLoRA ARM conditioned on alpha through objective embeddings."""

    name = "uniarm"
    config_cls = UniARMConfig

    def __init__(self, config: UniARMConfig) -> None:
        super().__init__(config)
        self.config: UniARMConfig = config

    @property
    def global_loss_weight(self) -> float:
        return self.config.global_loss_weight

    def descriptions(self, objectives: Sequence[str]) -> list[str]:
        missing = [o for o in objectives if o not in self.config.objective_descriptions]
        if missing:
            raise ConfigError(
                f"UniARM needs a text description for objective(s) {missing}; set e.g. "
                f'--set \'method.objective_descriptions={{"{missing[0]}": "..."}}\' '
                "(with one entry per objective)"
            )
        return [self.config.objective_descriptions[o] for o in objectives]

    def inject(
        self, model: Any, objectives: Sequence[str], tokenizer: Any | None
    ) -> dict[str, Any]:
        cfg = self.config
        texts = self.descriptions(objectives)
        embeddings = model.get_input_embeddings().weight
        if tokenizer is not None:
            E = objective_descriptors(
                model,
                tokenizer,
                texts,
                unit=cfg.unit_descriptors,
                center=cfg.center_descriptors,
            )
        else:  # placeholder of the right shape: the saved E is loaded over it
            E = torch.zeros(len(objectives), embeddings.shape[1], device=embeddings.device)
        context = PreferenceContext(len(objectives), descriptors=E)
        factory = functools.partial(
            ModulatedLoRALinear,
            context=context,
            r=cfg.r,
            lora_alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            modulation=cfg.modulation,
        )
        wrapped = inject_adapters(model, factory, cfg.target_modules)
        return {
            "adapter": "moslora",
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "scaling": cfg.lora_alpha / cfg.r,
            "modulation": cfg.modulation,
            "descriptor_dim": int(E.shape[1]),
            "objective_descriptions": dict(zip(objectives, texts, strict=True)),
            "unit_descriptors": cfg.unit_descriptors,
            "center_descriptors": cfg.center_descriptors,
            "global_loss_weight": cfg.global_loss_weight,
            "target_modules": list(cfg.target_modules),
            "adapted_modules": len(wrapped),
            "num_objectives": len(objectives),
        }
