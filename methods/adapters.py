"""Preference-conditioned low-rank adapters: PBLoRA (PARM) and MoSLoRA (UniARM).

Both wrap a frozen ``nn.Linear`` W0 (out n x in m) and add a low-rank update that
depends on a preference vector alpha (one weight per objective). alpha is a *per-row* input:
every wrapped layer of one model reads the current ``(B, k)`` alphas from one shared
:class:`PreferenceContext`, so the rows of a batch can carry different alphas (the whole
Pareto front of a prompt decodes in one batch, ARCHITECTURE "Performance design").

No layer ever builds a dense n x m delta-W (the official PBLoRA forward does, METHODS §4.3):
the update is computed right to left, ``B (W(alpha) (A x))``, with rank-sized matrices only.
Rows whose ``active`` flag is False get exactly ``W0 x``, so base-model rows and adapter rows
can share one backbone forward.

Typical use::

    ctx = PreferenceContext(num_objectives=2)
    inject_adapters(model, functools.partial(PBLoRALinear, context=ctx, r1=4, r2=4, lora_alpha=8))
    with ctx.use(alphas):  # (B, 2), one row per batch row
        logits = model(input_ids).logits

Adapter tensors are the ones whose name starts with ``pblora_`` or ``moslora_``
(:func:`adapter_state_dict`); the alpha order is NOT stored here — the method that saves an
adapter writes its objective order next to it (METHODS §10.1, §12.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        #: bumped whenever alphas or active change: layers cache what they derive from them
        self.version = 0
        self._tail: tuple[int, int | None] | None = None

    def _assign(self, alphas: Tensor | None, active: Tensor | None) -> None:
        self.alphas, self.active = alphas, active
        self.version += 1

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


def _add_on_active_rows(out: Tensor, update: Tensor, active: Tensor | None) -> Tensor:
    # the sum in the update's (the adapter's, fp32) dtype, rounded once to the backbone's: as
    # peft adds an fp32 LoRA update to a bf16 base output (PEER-CHECKS, difference 2)
    added = (out.to(update.dtype) + update).to(out.dtype)
    if active is None:
        return added
    # where (not a multiply by 0) so inactive rows are bit-identical to W0 x, inf/nan-safe,
    # and with no data-dependent shapes (no host sync on GPU).
    mask = active.view(-1, *([1] * (out.ndim - 1)))
    return torch.where(mask, added, out)


def _accumulate_update(out_rows: Tensor, u: Tensor, b_t: Tensor) -> None:
    """``out_rows += u @ b_t`` in place, computed in ``u``'s dtype (the adapter's, fp32) and
    rounded once to ``out_rows``' dtype: on a bf16 backbone the update is never rounded to bf16
    before it is added (peft's fp32 LoRA on a bf16 base does the same)."""
    if out_rows.dtype == u.dtype:
        out_rows.addmm_(u, b_t)
    else:
        out_rows.copy_(torch.addmm(out_rows.to(u.dtype), u, b_t))


class _AdapterLinear(nn.Module):
    """Shared plumbing: the frozen base layer, the context reference, dropout."""

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


class PBLoRALinear(_AdapterLinear):
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

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        tail = self._inference_tail(x)
        if tail is not None:
            return self._inference_forward(x, out, tail)
        alphas, active = self.context.rows(x)
        # the adapter's own dtype (fp32 by default, also on a bf16 backbone; x is cast up)
        dt, batch = self.pblora_A.dtype, x.shape[0]
        # A first: everything after this is rank-sized, never an n x m delta-W.
        u = F.linear(self.dropout(x.to(dt)), self.pblora_A).reshape(batch, -1, self.r1 + self.r2)
        u1, u2 = u.split([self.r1, self.r2], dim=-1)
        # W(alpha) is block diagonal: W(alpha) u = [W1 u1 ; W2(alpha_b) u2], the second block a
        # batched (r2 x r2) matmul with one core per row.
        w2 = self.preference_core(alphas).to(dt)
        v = torch.cat([F.linear(u1, self.pblora_W1.to(dt)), u2 @ w2.transpose(1, 2)], dim=-1)
        update = F.linear(v * self.scaling, self.pblora_B.to(dt))
        return _add_on_active_rows(out, update.reshape(out.shape), active)

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
        _accumulate_update(out_rows, u.view(-1, rank), self.pblora_B.t())
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


class MoSLoRALinear(_AdapterLinear):
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

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        tail = self._inference_tail(x)
        if tail is not None:
            return self._inference_forward(x, out, tail)
        alphas, active = self.context.rows(x)
        # the adapter's own dtype (fp32 by default, also on a bf16 backbone; x is cast up)
        dt, batch = self.moslora_A.dtype, x.shape[0]
        u = F.linear(self.dropout(x.to(dt)), self.moslora_A).reshape(batch, -1, self.r)
        gamma, delta = (t.to(dt) for t in self.film(alphas))
        u = (1 + gamma[:, None]) * u + delta[:, None]  # per-row scale and shift of the features
        update = F.linear(u * self.scaling, self.moslora_B.to(dt))
        return _add_on_active_rows(out, update.reshape(out.shape), active)

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
        _accumulate_update(out_rows, u.view(-1, self.r), self.moslora_B.t())
        return out

    def _scaled_film(self, tail: int, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        alphas = self.context.alphas
        assert alphas is not None
        rows = alphas.expand(n, -1) if alphas.ndim == 1 else alphas[tail:]
        gamma, delta = self.film(rows.to(self.moslora_A.device))
        return ((1 + gamma) * self.scaling).to(dtype), (delta * self.scaling).to(dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, modulation={self.modulation}"


AdapterLinear = PBLoRALinear | MoSLoRALinear


def inject_adapters(
    model: nn.Module,
    factory: Callable[[nn.Linear], AdapterLinear],
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES,
) -> dict[str, AdapterLinear]:
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
    wrapped: dict[str, AdapterLinear] = {}
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
    ``(r1+r2)(m+n) + r1^2 + k r2^2`` (METHODS §4.1); MoSLoRA: see :class:`MoSLoRALinear`."""
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
