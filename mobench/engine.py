"""The guide engine: a method says WHAT its guidance is, the core decides HOW to run it.

A method describes its decoding-time guide as a :class:`GuideSpec`:

* **lanes**, each a model the guide reads next-token log-probs from: the guide backbone as is
  (``Lane()``), the backbone plus a static peft LoRA (``Lane(LoRA(path))``), or the backbone plus
  an alpha-conditioned adapter whose per-row state is built from each row's alpha
  (``Lane(Conditioned(install, columns))``, PBLoRA and the affine-modulated LoRA);
* a **linear weight per lane and row**, ``weights(alphas (B, K)) -> (L, B)``, so that

      guidance = sum_l w_l * log pi_lane_l         (fp32, per row)

  (GenARM: ``w_i = alpha_i``; MOD-w2s: ``w_i = alpha_i`` and ``w_ref = -sum_i alpha_i``;
  PARM/UniARM: one conditioned lane with ``w = 1``);
* whether the guidance **guides** the base (the decoding loop adds it to log pi_base, the
  default) or **replaces** it (``replaces_base``: the next-token scores are the guidance alone
  and the base rows are not run; MOD ``sum_i alpha_i log pi_i``, Rewarded Soups' interpolated
  policy).

:func:`build_guide` then picks how the lanes run, the same way for every method:

* **fused** (guide backbone = base, ``ModelContext.fused``): the base rows and every lane's rows
  in ONE forward of the base model's own weights (:class:`FusedLanes`), each lane's adapter
  applied only to its rows (:class:`mobench.fused.MultiLoRALinear`, or the conditioned adapter's
  ``active`` rows); a plain guide lane fed the base's prompt IS the base lane and is not run twice;
* **weak-to-strong** (another guide backbone): the base alone, the lanes in one forward of one
  copy of the guide backbone (:class:`SeparateLanes` around a :class:`LaneRunner`);
* **replacing** (``replaces_base``, guide backbone = base): the lanes as rows of one forward of
  the base model's own weights, with no base rows (:class:`SeparateLanes` on ``models.base``);
* **separate** (``ModelContext.fuse=False``, the reference cost structure and the equality
  tests' other side): one model copy, one KV cache and one forward per lane, LoRAs run by peft
  (:class:`SeparateModels`).

A lane whose weight is 0 for every row of a batch is not run at all (GenARM's script drops an
ARM with alpha_i = 0); the decision is taken per batch at prefill. Rows without per-row state
(the base, plain and LoRA lanes) share one prefill per prompt; conditioned rows are encoded one
by one. The core owns the KV caches, finished-row drops and the per-row adapter state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobench.decoding import CausalLMStepper, LaneStepper, prompt_groups
from mobench.fused import LaneLayout, inject_multi_lora, read_peft_lora
from mobench.interfaces import FusedGuide, Guide

#: alphas (B, K) in the task's objective order -> lane weights (L, B)
LaneWeights = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LoRA:
    """A static LoRA adapter saved by peft (``save_pretrained``, safetensors) in ``path``."""

    path: Path
    name: str = ""


@dataclass(frozen=True)
class Conditioned:
    """An alpha-conditioned adapter: ``install(model)`` injects its layers into ``model`` and
    loads their weights; they read each row's alpha from ``model.preference_context``
    (:class:`mobench.methods.preference_arm.PreferenceContext`), which the engine sets to the rows'
    ``alphas[:, columns]`` (the order the adapter was trained with) and keeps row by row."""

    install: Callable[[Any], None]
    columns: tuple[int, ...]


@dataclass(frozen=True)
class Lane:
    """One model the guide reads: the guide backbone plus ``adapter`` (None: the backbone)."""

    adapter: LoRA | Conditioned | None = None


@dataclass(frozen=True)
class GuideSpec:
    """A method's guide: its lanes and their linear weights (see the module docstring)."""

    lanes: tuple[Lane, ...]
    weights: LaneWeights
    name: str = "guide"
    #: the guidance is the whole next-token score (the base is not run), not an addition to it
    replaces_base: bool = False

    def __post_init__(self) -> None:
        if not self.lanes:
            raise ValueError("a guide needs at least one lane")
        conditioned = [lane for lane in self.lanes if isinstance(lane.adapter, Conditioned)]
        lora = [lane for lane in self.lanes if isinstance(lane.adapter, LoRA)]
        if len(conditioned) > 1 or (conditioned and lora):
            # one model holds one kind of per-row adapter state; nothing needs more yet
            raise ValueError(
                "a guide may have LoRA lanes or one alpha-conditioned lane (plus plain lanes), "
                "not both"
            )

    def lane_weights(self, alphas: torch.Tensor) -> torch.Tensor:
        """``(L, B)`` fp32 weights, checked against the lanes and rows."""
        w = self.weights(alphas).to(torch.float32)
        if w.shape != (len(self.lanes), alphas.shape[0]):
            raise ValueError(
                f"lane weights have shape {tuple(w.shape)}; expected "
                f"({len(self.lanes)} lanes, {alphas.shape[0]} rows)"
            )
        if self.replaces_base and bool((w == 0).all(dim=0).any()):
            # the scores would be all zeros: greedy decoding would emit token 0 forever
            rows = (w == 0).all(dim=0).nonzero().flatten().tolist()
            raise ValueError(
                f"rows {rows[:5]} give every lane weight 0; a guide that replaces the base has "
                "nothing to decode them with (use preference vectors with a positive weight)"
            )
        return w


def combine(weights: torch.Tensor, logprobs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_l w_l * lp_l`` per row: ``weights (L, B)``, one ``(B, V)`` fp32 tensor per lane,
    accumulated in place in lane order."""
    total = logprobs[0] * weights[0, :, None]
    for w, lp in zip(weights[1:], logprobs[1:], strict=True):
        total.addcmul_(lp, w[:, None])
    return total


def running_lanes(weights: torch.Tensor) -> list[int]:
    """The lanes with a non-zero weight for some row (the others are not run)."""
    return [int(i) for i in (weights != 0).any(dim=1).nonzero().flatten().tolist()]


class LaneRunner:
    """Lanes as rows of ONE forward of one model (lane-major rows): plain lanes first, then the
    adapter lanes (the LoRA lanes' layout, or the conditioned lane's ``active`` tail).

    Args:
        model: the backbone, with the spec's adapters already injected (:func:`prepare`).
        lanes: the physical lanes: per lane, None (plain), a LoRA index into the injected
            adapters, or ``"conditioned"``; plain lanes must come first.
        columns: the conditioned adapter's alpha columns (if any).
    """

    def __init__(
        self,
        model: Any,
        lanes: Sequence[int | str | None],
        vocab_size: int,
        pad_token_id: int,
        columns: Sequence[int] = (),
    ) -> None:
        kinds = [lane is not None for lane in lanes]
        if kinds != sorted(kinds):
            raise ValueError("plain lanes come first in a lane-major forward")
        self.lanes = list(lanes)
        self.n_plain = kinds.count(False)
        layout: LaneLayout | None = getattr(model, "lane_layout", None)
        if layout is not None:
            layout.set(self.n_plain, [lane for lane in lanes if isinstance(lane, int)])
        self.context = getattr(model, "preference_context", None)
        self.conditioned = "conditioned" in self.lanes
        if self.context is not None and not self.conditioned:
            self.context.switch_off()  # the conditioned lane has weight 0 in this batch
        self.columns = list(columns)
        self.stepper = LaneStepper(model, len(lanes), vocab_size, pad_token_id)
        self.device = self.stepper.device

    def prefill(
        self, lane_prompts: Sequence[list[list[int]]], alphas: torch.Tensor
    ) -> torch.Tensor:
        """``(lanes, B, V)`` first log-probs; ``alphas (B, K)`` in the task's order."""
        rows = len(lane_prompts[0])
        shared = prompt_groups(*lane_prompts)
        if not self.conditioned:
            # no per-row state: every lane encodes each prompt once (equal lanes for the layout)
            return self.stepper.prefill(lane_prompts, [shared] * len(self.lanes))
        assert self.context is not None
        per_row = alphas[:, self.columns].to(self.device, torch.float32)
        lane_alphas = per_row.repeat(len(self.lanes), 1)
        active = torch.zeros(len(self.lanes) * rows, dtype=torch.bool, device=self.device)
        active[self.n_plain * rows :] = True
        context = self.context

        def encoded(index: torch.Tensor) -> None:  # the rows the prefill actually encodes
            context.set(lane_alphas[index], active[index])

        # plain rows of one prompt share a prefill; conditioned rows depend on their alpha
        groups: list[Sequence[Hashable] | None] = [
            shared if lane is None else None for lane in self.lanes
        ]
        out = self.stepper.prefill(lane_prompts, groups, encoded)
        context.set(lane_alphas, active)  # every row again, for the steps
        return out

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.stepper.step(token_ids)

    def drop(self, keep: torch.Tensor) -> None:
        if self.conditioned:
            assert self.context is not None
            self.context.select(self.stepper.lane_rows(keep))  # each row keeps its alpha state
        self.stepper.drop(keep)

    @property
    def forward_calls(self) -> int:
        return self.stepper.forward_calls


def prepare(model: Any, spec: GuideSpec) -> list[int | str | None]:
    """Inject the spec's adapters into ``model`` (all LoRAs as one multi-LoRA, or the conditioned
    adapter); returns, per spec lane, what it runs as (None, LoRA index, ``"conditioned"``)."""
    loras = [lane.adapter for lane in spec.lanes if isinstance(lane.adapter, LoRA)]
    if loras:
        inject_multi_lora(model, [read_peft_lora(a.path, a.name or None) for a in loras])
    kinds: list[int | str | None] = []
    n = 0
    for lane in spec.lanes:
        if isinstance(lane.adapter, LoRA):
            kinds.append(n)
            n += 1
        elif isinstance(lane.adapter, Conditioned):
            lane.adapter.install(model)
            kinds.append("conditioned")
        else:
            kinds.append(None)
    return kinds


def _columns(spec: GuideSpec) -> tuple[int, ...]:
    for lane in spec.lanes:
        if isinstance(lane.adapter, Conditioned):
            return lane.adapter.columns
    return ()


def _order(kinds: Sequence[int | str | None], run: Sequence[int]) -> list[int]:
    """The running spec lanes in physical order: plain lanes first (stable)."""
    return sorted(run, key=lambda i: kinds[i] is not None)


class FusedLanes(FusedGuide):
    """The base rows and the guide's lanes in ONE forward of the base model's weights."""

    def __init__(self, model: Any, spec: GuideSpec, vocab_size: int, pad_token_id: int) -> None:
        self.model, self.spec = model, spec
        self.kinds = prepare(model, spec)
        self.columns = _columns(spec)
        self.vocab_size, self.pad_token_id = vocab_size, pad_token_id
        self.forwards_per_token = {"fused": 1}
        self.lanes = 1 + len(spec.lanes)
        self.runner: LaneRunner | None = None
        self.weights: torch.Tensor | None = None
        self.slots: list[int] = []  # per running spec lane, its physical lane

    def prefill(
        self, prompt_ids: list[list[int]], guide_prompt_ids: list[list[int]], alphas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.spec.lane_weights(alphas)
        run = _order(self.kinds, running_lanes(weights))
        # a plain lane fed the base's prompt computes the base's log-probs: reuse lane 0
        reuse = guide_prompt_ids == prompt_ids
        physical: list[int | str | None] = [None]
        prompts = [prompt_ids]
        self.slots = []
        for i in run:
            if self.kinds[i] is None and reuse:
                self.slots.append(0)
                continue
            self.slots.append(len(physical))
            physical.append(self.kinds[i])
            prompts.append(guide_prompt_ids)
        self.runner = LaneRunner(
            self.model, physical, self.vocab_size, self.pad_token_id, self.columns
        )
        self.lanes = len(physical)
        self.weights = weights[run].to(self.runner.device)
        return self._split(self.runner.prefill(prompts, alphas))

    def _split(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.weights is not None
        if not self.slots:  # every lane has weight 0: no guidance
            return logprobs[0], torch.zeros_like(logprobs[0])
        return logprobs[0], combine(self.weights, [logprobs[s] for s in self.slots])

    def step(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.runner is not None, "prefill first"
        return self._split(self.runner.step(token_ids))

    def drop(self, keep: torch.Tensor) -> None:
        assert self.runner is not None and self.weights is not None, "prefill first"
        self.weights = self.weights.index_select(1, keep.to(self.weights.device))
        self.runner.drop(keep)


class SeparateLanes(Guide):
    """The guide's lanes in one forward of their own backbone (weak-to-strong: the base runs
    apart, in the decoding loop), or of the base model's own weights for a guide that replaces
    the base (the loop then runs no base rows)."""

    def __init__(self, model: Any, spec: GuideSpec, vocab_size: int, pad_token_id: int) -> None:
        self.model, self.spec = model, spec
        self.replaces_base = spec.replaces_base
        self.kinds = prepare(model, spec)
        self.columns = _columns(spec)
        self.vocab_size, self.pad_token_id = vocab_size, pad_token_id
        self.forwards_per_token = {spec.name: 1}
        self.lanes = len(spec.lanes)
        self.device = next(model.parameters()).device  # where guidance is returned
        self.runner: LaneRunner | None = None
        self.weights: torch.Tensor | None = None

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        weights = self.spec.lane_weights(alphas)
        run = _order(self.kinds, running_lanes(weights))
        self.lanes = len(run)
        self.forwards_per_token = {self.spec.name: 1 if run else 0}
        if not run:
            self.runner, self.weights = None, weights[:0]
            return torch.zeros(len(prompt_ids), self.vocab_size, device=self.device)
        self.runner = LaneRunner(
            self.model, [self.kinds[i] for i in run], self.vocab_size, self.pad_token_id,
            self.columns,
        )  # fmt: skip
        self.weights = weights[run].to(self.runner.device)
        return combine(self.weights, list(self.runner.prefill([prompt_ids] * len(run), alphas)))

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        assert self.weights is not None, "prefill first"
        if self.runner is None:
            return torch.zeros(len(token_ids), self.vocab_size, device=self.device)
        return combine(self.weights, list(self.runner.step(token_ids)))

    def drop(self, keep: torch.Tensor) -> None:
        assert self.weights is not None, "prefill first"
        self.weights = self.weights.index_select(1, keep.to(self.weights.device))
        if self.runner is not None:
            self.runner.drop(keep)


@dataclass
class _Model:
    stepper: CausalLMStepper
    context: Any = None  # a conditioned model's preference context
    columns: list[int] = field(default_factory=list)


class SeparateModels(Guide):
    """One model copy, KV cache and forward per lane: the reference code's cost structure.

    Args:
        models: per spec lane, its own model (a plain backbone, a peft LoRA model, or a
            backbone with the conditioned adapter installed).
        spec: the lanes' weights (and which lane is conditioned).
    """

    def __init__(
        self, models: Sequence[Any], spec: GuideSpec, vocab_size: int, pad_token_id: int
    ) -> None:
        if len(models) != len(spec.lanes):
            raise ValueError(f"{len(models)} models for {len(spec.lanes)} lanes")
        self.spec = spec
        self.replaces_base = spec.replaces_base
        self.vocab_size = vocab_size
        self.models = []
        for model, lane in zip(models, spec.lanes, strict=True):
            entry = _Model(CausalLMStepper(model, vocab_size, pad_token_id))
            if isinstance(lane.adapter, Conditioned):
                entry.context, entry.columns = model.preference_context, list(lane.adapter.columns)
            self.models.append(entry)
        self.forwards_per_token = {spec.name: len(models)}
        self.run: list[int] = []
        self.weights: torch.Tensor | None = None

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        weights = self.spec.lane_weights(alphas)
        self.run = running_lanes(weights)
        self.forwards_per_token = {self.spec.name: len(self.run)}
        self.weights = weights[self.run]
        if not self.run:
            return torch.zeros(
                len(prompt_ids), self.vocab_size, device=self.models[0].stepper.device
            )
        outs = []
        for i in self.run:
            m = self.models[i]
            if m.context is not None:  # per-row alphas: no shared prefill
                m.context.set(alphas[:, m.columns].to(m.stepper.device, torch.float32))
                outs.append(m.stepper.prefill(prompt_ids))
            else:
                outs.append(m.stepper.prefill(prompt_ids, prompt_groups(prompt_ids)))
        return self._combine(outs)

    def sole_model(self) -> Any | None:
        """The model that IS this guide, when it replaces the base with a single lane
        (Rewarded Soups' interpolated policy): decoding that model alone is the method (its
        lane weight only scales log-probs, which greedy decoding ignores); call
        :meth:`set_rows` first. None for any other guide."""
        if not (self.replaces_base and len(self.models) == 1):
            return None
        return self.models[0].stepper.model

    def set_rows(self, alphas: torch.Tensor) -> None:
        """Give each conditioned model its rows' alphas (``(B, K)``, the task's order) for
        forwards run outside this guide (``mobench bench``'s reference loop)."""
        for m in self.models:
            if m.context is not None:
                m.context.set(alphas[:, m.columns].to(m.stepper.device, torch.float32))

    def _combine(self, outs: list[torch.Tensor]) -> torch.Tensor:
        assert self.weights is not None
        device = outs[0].device
        self.weights = self.weights.to(device)
        return combine(self.weights, [o.to(device) for o in outs])

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        if not self.run:
            return torch.zeros(
                len(token_ids), self.vocab_size, device=self.models[0].stepper.device
            )
        return self._combine([self.models[i].stepper.step(token_ids) for i in self.run])

    def drop(self, keep: torch.Tensor) -> None:
        assert self.weights is not None, "prefill first"
        self.weights = self.weights.index_select(1, keep.to(self.weights.device))
        for i in self.run:
            m = self.models[i]
            if m.context is not None:
                m.context.select(keep)
            m.stepper.drop(keep)


def build_guide(spec: GuideSpec, models: Any) -> Guide | FusedGuide:
    """Run ``spec`` against ``models`` (a :class:`~mobench.models.ModelContext`): fused on the
    base model when it is the guide backbone, the lanes on one guide-backbone copy otherwise,
    one copy per lane when ``models.fuse`` is False."""
    vocab, pad = models.vocab_size, models.guide_tokenizer.pad_token_id
    if spec.replaces_base and not models.same_backbone:
        raise ValueError(
            f"{spec.name} replaces the base model, so its lanes must sit on the base model "
            f"'{models.base_source}', not on '{models.guide_source}'"
        )
    if spec.replaces_base and models.fuse:
        # the lanes on the base model's own weights; the loop runs no base rows of its own
        return SeparateLanes(models.base, spec, vocab, pad)
    if models.fused:
        return FusedLanes(models.base, spec, vocab, pad)
    if models.fuse:
        return SeparateLanes(models.load_guide_backbone(), spec, vocab, pad)
    lane_models = []
    for lane in spec.lanes:
        if lane.adapter is None:
            # the plain backbone: the base model itself when it is the guide backbone (its
            # weights are never modified on this path)
            lane_models.append(
                models.base if models.same_backbone else models.load_guide_backbone()
            )
        elif isinstance(lane.adapter, LoRA):
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(models.load_guide_backbone(), lane.adapter.path)
            lane_models.append(peft_model.eval())
        else:
            model = models.load_guide_backbone()
            lane.adapter.install(model)
            lane_models.append(model)
    return SeparateModels(lane_models, spec, vocab, pad)
