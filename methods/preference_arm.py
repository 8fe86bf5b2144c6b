"""What PARM and UniARM share: the per-row preference state their adapter layers read, injecting,
saving and loading those layers, and the training, saving and decoding lane of a
preference-conditioned ARM (:class:`PreferenceARM`). Each method's own equation lives in its own
module: PBLoRA in ``parm.py`` (METHODS §4.1), the affine-modulated LoRA in ``uniarm.py`` (§5).

Both layers wrap a frozen ``nn.Linear`` W0 (out n x in m) and add a low-rank update that
depends on a preference vector alpha (one weight per objective). alpha is a *per-row* input:
every wrapped layer of one model reads the current ``(B, k)`` alphas from one shared
:class:`PreferenceContext`, so the rows of a batch can carry different alphas (the whole
Pareto front of a prompt decodes in one batch, ARCHITECTURE "Performance design").

No layer ever builds a dense n x m delta-W (the official PBLoRA forward does, METHODS §4.3):
the update is computed right to left, ``B (W(alpha) (A x))``, with rank-sized matrices only.
Rows whose ``active`` flag is False get exactly ``W0 x``, so base-model rows and adapter rows
can share one backbone forward (the engine sets the rows, mobench.engine).

Adapter tensors are the ones whose name starts with ``pblora_`` or ``moslora_`` (the saved key
names; UniARM's layer keeps the ``moslora_`` prefix so saved guides still load)
(:func:`adapter_state_dict`); the alpha order is NOT stored here — the method that saves an
adapter writes its objective order next to it (METHODS §10.1, §12.3).
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from mobench.methods.shared import GUIDE_CONFIG, check_objectives, tokenized_training_pairs
from torch import Tensor, nn

from mobench.config import ConfigError, RunSpec
from mobench.data import Splits
from mobench.engine import Conditioned, GuideSpec, Lane
from mobench.interfaces import Method, Task
from mobench.models import ModelContext, load_causal_lm, source_fingerprint
from mobench.training import (
    ARMTrainingConfig,
    PairLoss,
    TrainerSettings,
    bradley_terry_loss,
    sequence_logprobs,
    train_pairs,
)

#: every adapter tensor (parameter or buffer) has a name starting with one of these; this is
#: what :func:`adapter_state_dict` keeps (PARM's save filter keeps "pblora_" keys, §4.3).
ADAPTER_KEY_PREFIXES = ("pblora_", "moslora_")
#: adapter tensors that are saved but never trained (MoSLoRA's frozen descriptors E).
FROZEN_ADAPTER_KEYS = ("moslora_E",)
#: attribute under which :func:`inject_adapters` registers the shared context on the model.
CONTEXT_ATTR = "preference_context"
#: LLaMA attention projections, the modules PARM and GenARM adapt (METHODS §4.1, §10.15).
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj")


def _is_adapter_key(key: str) -> bool:
    return key.rpartition(".")[2].startswith(ADAPTER_KEY_PREFIXES)


class PreferenceContext(nn.Module):
    """The per-forward preference state that every adapter layer of one model reads.

    Holds the current alphas, ``(B, k)`` (one row per batch row) or ``(k,)`` (the same alpha for
    every row, as in training where one alpha is drawn per micro-batch, METHODS §4.2), and an
    optional boolean ``active`` mask ``(B,)``: rows with ``active=False`` get exactly ``W0 x``.

    It is an ``nn.Module`` because MoSLoRA keeps two model-wide tensors here, so that they are
    stored once rather than once per layer: the frozen objective descriptors E ``(k, d)``
    (buffer ``moslora_E``) and, for ``modulation="shared"``, the shared modulation matrix G
    (parameter ``moslora_G``). :func:`inject_adapters` registers the context on the model as
    ``model.preference_context``; layers only keep a plain (unregistered) reference to it.

    Args:
        num_objectives: k, the length of alpha.
        descriptors: E ``(k, d)``, MoSLoRA's objective descriptor embeddings (METHODS §5 step 1);
            stored in fp32. Not needed for PBLoRA.
    """

    moslora_E: Tensor | None
    moslora_G: nn.Parameter | None

    def __init__(self, num_objectives: int, descriptors: Tensor | None = None) -> None:
        super().__init__()
        if num_objectives < 1:
            raise ValueError(f"num_objectives must be >= 1, got {num_objectives}")
        self.num_objectives = num_objectives
        if descriptors is not None and (
            descriptors.ndim != 2 or descriptors.shape[0] != num_objectives
        ):
            raise ValueError(
                f"descriptors must have shape (num_objectives={num_objectives}, d), "
                f"got {tuple(descriptors.shape)}"
            )
        E = None if descriptors is None else descriptors.detach().to(torch.float32).clone()
        self.register_buffer("moslora_E", E)
        self.register_parameter("moslora_G", None)
        self.alphas: Tensor | None = None
        self.active: Tensor | None = None
        self.off = False
        #: bumped whenever alphas or active change: layers cache what they derive from them
        self.version = 0
        self._tail: tuple[int, int | None] | None = None

    def _assign(self, alphas: Tensor | None, active: Tensor | None, off: bool = False) -> None:
        self.alphas, self.active = alphas, active
        #: every row inactive (exactly W0 x), whatever the batch: set by :meth:`switch_off`
        self.off = off
        self.version += 1

    def switch_off(self) -> None:
        """Make every row of every forward plain (``W0 x``) until the next :meth:`set`: the
        engine's state when this adapter's lane is not run in a batch (its weight is 0)."""
        self._assign(None, None, off=True)

    def active_tail(self) -> int | None:
        """Where the active rows start when they are exactly the rows from some index on (all
        rows: 0), as in a lane-major fused batch of base rows then guide rows; None for any
        other mask or no alphas. Computed once per change of the mask (one host sync)."""
        if self._tail is None or self._tail[0] != self.version:
            tail: int | None = None
            if self.alphas is not None:
                if self.active is None:
                    tail = 0
                else:
                    n_inactive = int((~self.active).sum())
                    if not bool(self.active[:n_inactive].any()):
                        tail = n_inactive
            self._tail = (self.version, tail)
        return self._tail[1]

    def set(self, alphas: Tensor, active: Tensor | None = None) -> None:
        """Set the alphas (``(B, k)`` or ``(k,)``) and optional ``active`` mask for the next
        forwards. They stay until changed, so a KV-cached decode sets them once per prefill."""
        if not torch.is_floating_point(alphas):
            raise TypeError(f"alphas must be a floating tensor, got {alphas.dtype}")
        if alphas.ndim not in (1, 2) or alphas.shape[-1] != self.num_objectives:
            raise ValueError(
                f"alphas must have shape (B, {self.num_objectives}) or ({self.num_objectives},), "
                f"got {tuple(alphas.shape)}"
            )
        if active is not None:
            if active.dtype != torch.bool or active.ndim != 1:
                raise ValueError(
                    f"active must be a 1-D bool tensor (B,), got {active.dtype} "
                    f"of shape {tuple(active.shape)}"
                )
            if alphas.ndim == 2 and active.shape[0] != alphas.shape[0]:
                raise ValueError(
                    f"active has {active.shape[0]} rows but alphas has {alphas.shape[0]}"
                )
        self._assign(alphas, active)

    def clear(self) -> None:
        """Forget the alphas; a forward through an adapter layer then raises."""
        self._assign(None, None)

    @contextmanager
    def use(self, alphas: Tensor, active: Tensor | None = None) -> Iterator[PreferenceContext]:
        """``with ctx.use(alphas, active): model(...)``; restores the previous state on exit.

        With gradient checkpointing the backward pass re-runs layer forwards, so call
        ``backward()`` inside the block (or use :meth:`set`, which persists)."""
        saved = (self.alphas, self.active)
        self.set(alphas, active)
        try:
            yield self
        finally:
            self._assign(*saved)

    def select(self, keep: Tensor) -> None:
        """Keep only the rows ``keep`` (1-D long indices), e.g. when finished rows leave a
        batch (``Guide.drop``)."""
        alphas, active = self.alphas, self.active
        if alphas is not None and alphas.ndim == 2:
            alphas = alphas[keep.to(alphas.device)]
        if active is not None:
            active = active[keep.to(active.device)]
        self._assign(alphas, active)

    def rows(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The ``(B, k)`` alphas and the ``(B,)`` active mask (or None), on x's device, for an
        input x whose first dimension is the batch. alphas keep their dtype: the rank-sized
        alpha-dependent cores are built in the adapter's dtype, then cast to x's."""
        if self.alphas is None:
            raise RuntimeError(
                "no preference set: wrap the forward in `with context.use(alphas):` "
                "(alphas of shape (B, k), one row per batch row); with gradient checkpointing "
                "keep them set through backward()"
            )
        if x.ndim < 2:
            raise ValueError(f"adapter input must be batched (B, ..., m), got {tuple(x.shape)}")
        batch = x.shape[0]
        alphas = self.alphas
        if alphas.ndim == 1:
            alphas = alphas.expand(batch, -1)
        elif alphas.shape[0] != batch:
            raise ValueError(
                f"input has batch size {batch} but the preference context holds "
                f"{alphas.shape[0]} alpha rows; set one alpha row per batch row"
            )
        active = self.active
        if active is not None:
            if active.shape[0] != batch:
                raise ValueError(
                    f"input has batch size {batch} but the active mask has {active.shape[0]} rows"
                )
            active = active.to(x.device)
        return alphas.to(x.device), active

    @property
    def descriptors(self) -> Tensor:
        """E ``(k, d)``; raises if the context was built without descriptors."""
        if self.moslora_E is None:
            raise ValueError(
                "MoSLoRA needs objective descriptor embeddings: "
                "PreferenceContext(num_objectives, descriptors=E) with E of shape (k, d)"
            )
        return self.moslora_E

    def shared_modulation(self, rank: int) -> nn.Parameter:
        """The model-wide G ``(2 rank, d)`` for ``modulation="shared"``, created (zeros) on
        first use; every module sharing it must have the same rank."""
        E = self.descriptors
        shape = (2 * rank, E.shape[1])
        if self.moslora_G is None:
            self.moslora_G = nn.Parameter(torch.zeros(shape, device=E.device))
        elif tuple(self.moslora_G.shape) != shape:
            raise ValueError(
                f"shared modulation G has shape {tuple(self.moslora_G.shape)}, but a module of "
                f"rank {rank} needs {shape}: every MoSLoRA module must use the same rank"
            )
        return self.moslora_G


def add_on_active_rows(out: Tensor, update: Tensor, active: Tensor | None) -> Tensor:
    # the sum in the update's (the adapter's, fp32) dtype, rounded once to the backbone's: as
    # peft adds an fp32 LoRA update to a bf16 base output (PEER-CHECKS, difference 2)
    added = (out.to(update.dtype) + update).to(out.dtype)
    if active is None:
        return added
    # where (not a multiply by 0) so inactive rows are bit-identical to W0 x, inf/nan-safe,
    # and with no data-dependent shapes (no host sync on GPU).
    mask = active.view(-1, *([1] * (out.ndim - 1)))
    return torch.where(mask, added, out)


def accumulate_update(out_rows: Tensor, u: Tensor, b_t: Tensor) -> None:
    """``out_rows += u @ b_t`` in place, computed in ``u``'s dtype (the adapter's, fp32) and
    rounded once to ``out_rows``' dtype: on a bf16 backbone the update is never rounded to bf16
    before it is added (peft's fp32 LoRA on a bf16 base does the same)."""
    if out_rows.dtype == u.dtype:
        out_rows.addmm_(u, b_t)
    else:
        out_rows.copy_(torch.addmm(out_rows.to(u.dtype), u, b_t))


class PreferenceAdapterLinear(nn.Module):
    """Shared plumbing of PARM's and UniARM's adapter layers: the frozen base layer, the
    context reference, dropout, and the per-row state cached per alpha change."""

    context: PreferenceContext

    def __init__(self, base: nn.Linear, context: PreferenceContext, dropout: float) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"can only wrap nn.Linear, got {type(base).__name__}")
        self.base_layer = base.requires_grad_(False)
        # A plain attribute, not a submodule: the context is registered once on the model, not
        # once per layer (that would duplicate E and G in every state_dict).
        object.__setattr__(self, "context", context)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._derived: tuple[tuple[int, torch.dtype, int], tuple[Tensor, ...]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """``W0 x`` plus the layer's preference update (:meth:`update`) on the rows whose
        adapter is active; decoding takes the cached inference path (:meth:`_inference_forward`)."""
        out = self.base_layer(x)
        if self.context.off:  # no row of this forward runs the adapter
            return out
        tail = self._inference_tail(x)
        if tail is not None:
            return self._inference_forward(x, out, tail)
        alphas, active = self.context.rows(x)
        return add_on_active_rows(out, self.update(x, alphas).reshape(out.shape), active)

    def update(self, x: Tensor, alphas: Tensor) -> Tensor:
        """The layer's equation: its low-rank update of ``x`` (B, ..., in) for per-row
        ``alphas`` (B, k), in the adapter's own dtype (fp32 also on a bf16 backbone)."""
        raise NotImplementedError

    def _inference_forward(self, x: Tensor, out: Tensor, tail: int) -> Tensor:
        """:meth:`update` added to ``out`` on the active tail rows ``x[tail:]``, decoding only."""
        raise NotImplementedError

    def _inference_tail(self, x: Tensor) -> int | None:
        """Start of the active rows when this forward may take the inference path: no
        gradients, no dropout, and the active rows a tail of the batch (see
        :meth:`PreferenceContext.active_tail`); None for the general path."""
        if torch.is_grad_enabled() or (self.training and not isinstance(self.dropout, nn.Identity)):
            return None
        alphas = self.context.alphas
        if alphas is not None and alphas.ndim == 2 and alphas.shape[0] != x.shape[0]:
            return None  # the general path raises the error
        return self.context.active_tail()

    @staticmethod
    def _tail_rows(x: Tensor, out: Tensor, tail: int) -> tuple[Tensor, Tensor]:
        """Views of the active tail rows flattened over positions: ``x`` as ``(n*T, in)`` and
        ``out`` as ``(n*T, out)``, so the update can be accumulated into ``out`` in place by one
        ``addmm_`` (no update tensor, no separate add). Both are contiguous: ``x`` is the layer
        input and ``out`` the base layer's fresh output."""
        return x[tail:].reshape(-1, x.shape[-1]), out[tail:].view(-1, out.shape[-1])

    def _cached(
        self, dtype: torch.dtype, rows: int, build: Callable[[], tuple[Tensor, ...]]
    ) -> tuple[Tensor, ...]:
        """Per-row tensors derived from the context's alphas for ``rows`` active rows, rebuilt
        when the alphas, the mask or the row count change."""
        key = (self.context.version, dtype, rows)
        if self._derived is None or self._derived[0] != key:
            self._derived = (key, build())
        return self._derived[1]

    def _new_parameter(self, *shape: int, dtype: torch.dtype) -> nn.Parameter:
        """Uninitialised (see ``reset_parameters``), on the base layer's device."""
        return nn.Parameter(torch.empty(shape, device=self.base_layer.weight.device, dtype=dtype))


def inject_adapters(
    model: nn.Module,
    factory: Callable[[nn.Linear], PreferenceAdapterLinear],
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES,
) -> dict[str, PreferenceAdapterLinear]:
    """Replace every ``nn.Linear`` whose name ends with a target (``...self_attn.q_proj``) by
    ``factory(linear)``, freeze every non-adapter parameter, and register the adapters' shared
    :class:`PreferenceContext` on the model as ``model.preference_context``.

    Args:
        model: e.g. a ``LlamaForCausalLM``; modified in place.
        factory: builds the wrapper, e.g.
            ``functools.partial(PBLoRALinear, context=ctx, r1=4, r2=4, lora_alpha=8)``.
        target_modules: last name components to adapt.

    Returns:
        Module name -> wrapper, in model order.
    """
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in target_modules
    ]
    if not targets:
        linears = sorted(
            {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"no nn.Linear named {list(target_modules)} in {type(model).__name__}; "
            f"its linear layers are named: {', '.join(linears) or '(none)'}"
        )
    for name, p in model.named_parameters():
        if not _is_adapter_key(name):
            p.requires_grad_(False)
    wrapped: dict[str, PreferenceAdapterLinear] = {}
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        wrapper = factory(linear)
        setattr(model.get_submodule(parent_name), child, wrapper)
        wrapped[name] = wrapper
    contexts = {id(w.context): w.context for w in wrapped.values()}
    existing = getattr(model, CONTEXT_ATTR, None)
    if existing is not None:
        contexts[id(existing)] = existing
    if len(contexts) != 1:
        raise ValueError("all adapters of one model must share one PreferenceContext")
    setattr(model, CONTEXT_ATTR, next(iter(contexts.values())))
    return wrapped


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors only (names ending in ``pblora_*`` / ``moslora_*``, including
    MoSLoRA's descriptors E and a shared G), as contiguous CPU copies ready for
    ``safetensors.torch.save_file``."""
    state = {
        key: value.detach().to("cpu", copy=True).contiguous()
        for key, value in model.state_dict().items()
        if _is_adapter_key(key)
    }
    if not state:
        raise ValueError(f"{type(model).__name__} has no adapter tensors; run inject_adapters")
    return state


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy adapter tensors into a model with the same adapters injected. Strict: missing or
    unexpected keys and shape mismatches raise, naming the keys."""
    own = {k: v for k, v in model.state_dict(keep_vars=True).items() if _is_adapter_key(k)}
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(
            f"adapter state does not match the model's adapters: missing {missing[:5]} "
            f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)"
        )
    with torch.no_grad():
        for key, target in own.items():
            if target.shape != state[key].shape:
                raise ValueError(
                    f"{key}: model has shape {tuple(target.shape)}, "
                    f"state has {tuple(state[key].shape)}"
                )
            target.copy_(state[key])


def save_adapters(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write :func:`adapter_state_dict` to a safetensors file, with string metadata (e.g. the
    objective order, METHODS §12.3)."""
    from safetensors.torch import save_file

    save_file(adapter_state_dict(model), str(path), metadata=metadata)


def load_adapters(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load a :func:`save_adapters` file into the model; returns its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    load_adapter_state_dict(model, load_file(str(path)))
    return dict(metadata)


def count_adapter_parameters(model: nn.Module) -> int:
    """Trainable adapter parameters (each shared tensor once). PBLoRA: per module
    ``(r1+r2)(m+n) + r1^2 + k r2^2`` (METHODS §4.1, :class:`~mobench.methods.parm.PBLoRALinear`);
    UniARM: see :class:`~mobench.methods.uniarm.ModulatedLoRALinear`."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and _is_adapter_key(name)
    )


def count_saved_adapter_parameters(path: str | Path) -> int:
    """Trainable parameters in a :func:`save_adapters` file: every stored tensor except the
    frozen ones (:data:`FROZEN_ADAPTER_KEYS`); equals :func:`count_adapter_parameters` of the
    model that was saved."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            if key.rpartition(".")[2] in FROZEN_ADAPTER_KEYS:
                continue
            total += math.prod(f.get_slice(key).get_shape())
    return total


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


def lane_weights(alphas: torch.Tensor) -> torch.Tensor:
    """PARM's and UniARM's guidance (METHODS §4.3, §5 step 4): ``log pi_theta(. | alpha)`` itself,
    one alpha-conditioned lane with weight 1 for every row; ``alphas (B, k) -> (1, B)``."""
    return alphas.new_ones(1, alphas.shape[0])


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

    def train(
        self,
        task: Task,
        splits: Splits,
        spec: RunSpec,
        out_dir: Path,
        trainer: TrainerSettings | None = None,
    ) -> None:
        cfg = self.config
        objectives = list(task.objectives)
        tok, pairs = tokenized_training_pairs(task, splits, spec, cfg)
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
            trainer=trainer,
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

    def guide_spec(self, artifacts: Path, task: Task, models: ModelContext) -> GuideSpec:
        """One lane: the guide backbone with this method's adapter, conditioned on each row's
        alpha (weights :func:`lane_weights`)."""
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

        def install(model: Any) -> None:
            trained.inject(model, stored["objectives"], tokenizer=None)
            load_adapters(model, artifacts / ADAPTER_FILE)
            # the adapters stay in fp32 on a bf16 backbone (computed there, x cast up), as the
            # official PARM (peft) keeps them: bf16 adapters moved the guide's log-probs by 0.26
            # against fp32, the official code's by 0.17 (PEER-CHECKS, difference 2)
            model.eval()

        # map by name: the adapters read alpha in the stored order (never mirror the front)
        columns = tuple(task.objectives.index(o) for o in stored["objectives"])
        return GuideSpec((Lane(Conditioned(install, columns)),), lane_weights)

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
