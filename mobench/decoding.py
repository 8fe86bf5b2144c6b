"""The one guided decoding loop. Every method's timings come from here, so they are comparable.

Rows are (prompt, alpha) pairs decoded together: prompts are left-padded, every model keeps
its own KV cache, finished rows leave the batch. At each step the next token is chosen from

    log_softmax(base logits)[:V] + guide(alpha) / beta          (METHODS §3.2, §12.1)

greedily (default) or by seeded sampling, where ``guide`` is whatever the method's
:class:`~mobench.interfaces.Guide` returns (already a log-prob combination, fp32) and V is the
vocabulary that base and guide share. A guide that replaces the base (MOD, Rewarded Soups;
``Guide.replaces_base``) is the whole score: the loop then runs no base model.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mobench.config import GenerationConfig
from mobench.interfaces import FusedGuide, Guide


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """Split a causal LM (or a peft wrapper around one) into its transformer body and LM head."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(lm, lm.base_model_prefix)
    head = lm.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(lm).__name__} has no output embeddings; it is not a causal LM")
    return backbone, head


#: name under which :func:`decode_attention` is registered with transformers
DECODE_ATTENTION = "mobench_decode"
#: attention kwargs that change the math; with any of them set, decode_attention defers to sdpa
_SDPA_ONLY_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")


def decode_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for one new token per row, as two small matmuls on the key/value heads.

    torch's CPU SDPA kernel (flash) costs ~2 ms per layer for a 22-row decode step here, a third
    of the whole step; this path costs a tenth of that, so extra guide rows add less. Same math
    as transformers' sdpa (its boolean masks, grouped-query heads): the scores QK^T are computed
    and kept in fp32 (on a bf16 model q and the keys are cast up first; a bf16 matmul would
    round every score to bf16, 8 bits of mantissa, before the softmax), the softmax is fp32, and
    the probabilities meet the values in the values' dtype, as in transformers' eager attention.
    Prefill (several query tokens), dropout and variants with extra terms go to sdpa unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or dropout > 0 or any(kwargs.get(k) for k in _SDPA_ONLY_KWARGS):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    # (rows, kv_heads, group, dim): the query heads sharing a key/value head, without repeat_kv
    q = query.view(rows, kv_heads, heads // kv_heads, dim)
    # keys @ q^T, then transposed: keys stay in their (cache) layout (q @ keys^T copies them);
    # in fp32 whatever the model's dtype (the cast costs about 0.25 ms per layer for 33 rows of
    # 150 cached tokens here, measured; rounded bf16 scores are what the issue 13 item 3 removed)
    scores = torch.matmul(key.float(), q.float().transpose(-1, -2)).transpose(-1, -2)
    scores = scores * (scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:  # sdpa_mask: (rows, 1, 1, kv) bool, True = attend
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
    return out.reshape(rows, 1, heads, dim), None


#: False inside :func:`stock_attention`: steppers then leave their models' attention alone
_decode_attention_on: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "mobench_decode_attention", default=True
)


@contextlib.contextmanager
def stock_attention() -> Iterator[None]:
    """Steppers built inside this block keep transformers' own attention (``mobench bench``'s
    re-implementation of the reference loop runs the models as the reference code does)."""
    token = _decode_attention_on.set(False)
    try:
        yield
    finally:
        _decode_attention_on.reset(token)


def use_decode_attention(model: Any) -> None:
    """Switch a model that uses transformers' sdpa attention to :func:`decode_attention`
    (registered once with transformers, masks built exactly as for sdpa). Other attention
    implementations (eager, flash-attention on GPUs) are left alone, and so is every model
    inside :func:`stock_attention`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if not _decode_attention_on.get():
        return
    AttentionInterface.register(DECODE_ATTENTION, decode_attention)  # idempotent
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(DECODE_ATTENTION)


def _growing_cache(config: Any) -> Any:
    """A transformers ``DynamicCache`` whose full-attention layers append a token in place
    (:func:`_growing_layer_class`); other layer kinds (sliding windows) stay as they are."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layer_class = _growing_layer_class()
    cache = DynamicCache(config=config)
    cache.layers = [
        layer_class() if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache


@functools.cache
def _growing_layer_class() -> type:
    """``DynamicLayer`` concatenates the whole cache with each new token, a copy of every layer's
    keys and values per step (about a tenth of a decode step here). This layer keeps spare room
    (doubling when full) and writes the new token into it; ``keys``/``values`` are views."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        _layer_type = None  # never registered as transformers' default layer for a layer type

        def __init__(self) -> None:
            super().__init__()
            self.length = 0
            self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if self.buffers is None or end > self.buffers[0].shape[-2]:
                room = max(2 * end, end + 64)
                grown = tuple(
                    t.new_empty((*t.shape[:-2], room, t.shape[-1]))
                    for t in (key_states, value_states)
                )
                if self.buffers is not None:
                    for new, old in zip(grown, self.buffers, strict=True):
                        new[..., : self.length, :] = old[..., : self.length, :]
                self.buffers = (grown[0], grown[1])
            keys, values = self.buffers
            keys[..., self.length : end, :] = key_states
            values[..., self.length : end, :] = value_states
            self.length = end
            self.keys, self.values = keys[..., :end, :], values[..., :end, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.buffers is not None:
                keys, values = (t.index_select(0, indices) for t in self.buffers)
                self.buffers = (keys, values)
                self.keys, self.values = keys[..., : self.length, :], values[..., : self.length, :]

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("mobench's decoding cache is never cropped")

        def batch_repeat_interleave(self, repeats: int) -> None:
            raise NotImplementedError("mobench's decoding cache is never repeated")

        def reset(self) -> None:
            self.length, self.buffers = 0, None
            super().reset()

    return GrowingLayer


def _share(
    prompt_ids: Sequence[Sequence[int]], groups: Sequence[Hashable] | None
) -> tuple[list[int], list[int]]:
    """The rows to encode (the first of each group, in order) and, per row, the position of its
    group's row among them."""
    if groups is None:
        return list(range(len(prompt_ids))), list(range(len(prompt_ids)))
    if len(groups) != len(prompt_ids):
        raise ValueError(f"{len(groups)} groups for {len(prompt_ids)} rows")
    first: dict[Hashable, int] = {}
    unique: list[int] = []
    inverse = []
    for row, group in enumerate(groups):
        if group not in first:
            first[group] = len(unique)
            unique.append(row)
        elif list(prompt_ids[unique[first[group]]]) != list(prompt_ids[row]):
            raise ValueError(f"rows {unique[first[group]]} and {row} share a group, not a prompt")
        inverse.append(first[group])
    return unique, inverse


def left_pad(
    prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(input_ids, attention_mask)`` of shape (B, L)."""
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"row {i} has an empty prompt")
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


class CausalLMStepper:
    """Runs one causal LM token by token over a batch, with its own KV cache.

    Returns next-token log-probs over the first ``vocab_size`` ids in fp32. The LM head is applied
    to a 2-D slice of the last hidden state, not through ``model(...)``: with frozen weights,
    torch would otherwise copy the head's weight once per row at prefill (OFFLINE.md §6 pitfall).
    A model on transformers' sdpa attention is switched to :func:`decode_attention`.
    """

    def __init__(self, model: Any, vocab_size: int, pad_token_id: int) -> None:
        self.model = model
        self.backbone, self.head = backbone_and_head(model)
        use_decode_attention(self.backbone)
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.device = self.head.weight.device
        # a model spread over devices (device_map): its KV cache lives on each layer's device
        placed = set((getattr(model, "hf_device_map", None) or {}).values())
        self.spans_devices = len(placed) > 1
        self.forward_calls = 0
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._next_pos: torch.Tensor | None = None

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)[:, : self.vocab_size]
        return torch.log_softmax(logits.float(), dim=-1)

    def prefill(
        self,
        prompt_ids: Sequence[Sequence[int]],
        groups: Sequence[Hashable] | None = None,
        before_forward: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Encode the prompts; returns the first next-token log-probs ``(B, V)``.

        Args:
            prompt_ids: one token list per row.
            groups: rows with the same group compute the same thing (same prompt, and the model
                has no per-row state such as a preference alpha): their prompt is encoded once
                and its KV cache copied to each of them. The whole front of a prompt (one row
                per alpha) shares one prefill this way. None: every row is encoded.
            before_forward: called with the indices of the rows actually encoded, before the
                forward (a model with per-row state sets it for those rows).
        """
        unique, inverse = _share(prompt_ids, groups)
        ids, mask = left_pad([prompt_ids[r] for r in unique], self.pad_token_id, self.device)
        # Positions count real tokens only, so a left-padded row sees the same positions as the
        # same prompt decoded alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self._cache = _growing_cache(self.model.config)
        if before_forward is not None:
            before_forward(torch.tensor(unique, device=self.device))
        out = self.backbone(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
        )
        self.forward_calls += 1
        self._mask = mask
        self._next_pos = positions[:, -1] + 1
        logprobs = self._logprobs(out.last_hidden_state[:, -1, :])
        if len(unique) < len(prompt_ids):  # copy each shared row's state to all its rows
            index = torch.tensor(inverse, device=self.device)
            self.drop(index)
            logprobs = logprobs.index_select(0, index)
        return logprobs

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        assert self._mask is not None and self._next_pos is not None, "prefill first"
        self._mask = torch.cat([self._mask, self._mask.new_ones((self._mask.shape[0], 1))], dim=1)
        out = self.backbone(
            input_ids=token_ids.to(self.device)[:, None],
            attention_mask=self._mask,
            position_ids=self._next_pos[:, None],
            past_key_values=self._cache,
            use_cache=True,
        )
        self.forward_calls += 1
        self._next_pos = self._next_pos + 1
        return self._logprobs(out.last_hidden_state[:, -1, :])

    def drop(self, keep: torch.Tensor) -> None:
        assert self._mask is not None and self._next_pos is not None, "prefill first"
        keep = keep.to(self.device)
        # CPU indices can select rows of a tensor on any device; device indices only their own
        self._cache.batch_select_indices(keep.cpu() if self.spans_devices else keep)
        self._mask = self._mask.index_select(0, keep)
        self._next_pos = self._next_pos.index_select(0, keep)


def prompt_groups(*prompts: Sequence[Sequence[int]]) -> list[Hashable]:
    """Per row, a group key of its prompt(s): rows with equal prompts (e.g. the alphas of one
    prompt) get equal keys, for the shared prefill of models without per-row state. With
    several prompt lists (a base and a guide template), all must match."""
    return [tuple(tuple(p) for p in row) for row in zip(*prompts, strict=True)]


class LaneStepper:
    """The same prompts in several "lanes" of rows through ONE model, one forward per token.

    Rows are lane-major (lane ``l`` = rows ``l*B .. (l+1)*B - 1`` for B prompts), the layout
    :class:`mobench.fused.MultiLoRALinear` and the preference adapters' ``active`` masks expect:
    e.g. lane 0 = the base (no adapter), lanes 1..k = k ARMs. Every lane sees the same chosen
    tokens; each gets its own log-probs. One KV cache holds all lanes.
    """

    def __init__(self, model: Any, lanes: int, vocab_size: int, pad_token_id: int) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.lanes = lanes
        self.stepper = CausalLMStepper(model, vocab_size, pad_token_id)
        self.device = self.stepper.device
        self.rows = 0  # B, rows per lane

    @property
    def forward_calls(self) -> int:
        return self.stepper.forward_calls

    def _split(self, logprobs: torch.Tensor) -> torch.Tensor:
        return logprobs.view(self.lanes, self.rows, -1)

    def prefill(
        self,
        lane_prompt_ids: Sequence[Sequence[Sequence[int]]],
        lane_groups: Sequence[Sequence[Hashable] | None] | None = None,
        before_forward: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """``lane_prompt_ids[l]`` = the B prompts of lane l; returns ``(lanes, B, V)``.

        ``lane_groups[l]``: rows of lane l computing the same thing (see
        :meth:`CausalLMStepper.prefill`; None = no sharing in that lane). A lane-major
        multi-LoRA model needs the same number of encoded rows in every lane: give every lane
        the same groups. ``before_forward`` gets the encoded rows' lane-major indices.
        """
        if len(lane_prompt_ids) != self.lanes:
            raise ValueError(f"{len(lane_prompt_ids)} lanes of prompts for {self.lanes} lanes")
        self.rows = len(lane_prompt_ids[0])
        if any(len(p) != self.rows for p in lane_prompt_ids):
            raise ValueError("every lane needs the same number of prompts")
        groups = None
        if lane_groups is not None:
            groups = [
                (lane, group if lane_groups[lane] is not None else row)
                for lane in range(self.lanes)
                for row, group in enumerate(lane_groups[lane] or [None] * self.rows)
            ]
        rows = [p for lane in lane_prompt_ids for p in lane]
        return self._split(self.stepper.prefill(rows, groups, before_forward))

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed ``(B,)`` tokens to every lane; returns ``(lanes, B, V)``."""
        return self._split(self.stepper.step(token_ids.repeat(self.lanes)))

    def lane_rows(self, keep: torch.Tensor) -> torch.Tensor:
        """The rows of every lane that belong to the batch rows ``keep``, lane-major (what a
        per-row state of the lanes, e.g. a preference context, must keep on :meth:`drop`)."""
        keep = keep.to(self.device)
        offsets = torch.arange(self.lanes, device=self.device) * self.rows
        return (offsets[:, None] + keep[None, :]).flatten()

    def drop(self, keep: torch.Tensor) -> None:
        self.stepper.drop(self.lane_rows(keep))
        self.rows = int(keep.numel())


class _SeparateModels:
    """The unfused pair the loop runs when the guide does not fuse: the base model in its own
    stepper, and the guide (or none) with its own models; no base model for a guide that
    replaces the base."""

    def __init__(self, base: Any, guide: Guide | None, vocab_size: int, pad_token_id: int) -> None:
        replaced = guide is not None and guide.replaces_base
        self.base = None if replaced else CausalLMStepper(base, vocab_size, pad_token_id)
        self.guide = guide

    def prefill(
        self, prompt_ids: list[list[int]], guide_prompt_ids: list[list[int]], alphas: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        # the base model has no per-row state: the rows of one prompt share its prefill
        base = (
            None if self.base is None else self.base.prefill(prompt_ids, prompt_groups(prompt_ids))
        )
        return base, None if self.guide is None else self.guide.prefill(guide_prompt_ids, alphas)

    def step(self, token_ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        base = None if self.base is None else self.base.step(token_ids)
        return base, None if self.guide is None else self.guide.step(token_ids)

    def drop(self, keep: torch.Tensor) -> None:
        if self.base is not None:
            self.base.drop(keep)
        if self.guide is not None:
            self.guide.drop(keep)


def forwards_per_token(guide: Guide | FusedGuide | None) -> dict[str, int]:
    """Forward passes per generated token, by model: the base model's own (none when a fused
    guide runs the base rows in its forward, or the guide replaces the base) and the guide's."""
    if guide is None:
        return {"base": 1}
    own = dict(guide.forwards_per_token)
    if isinstance(guide, FusedGuide) or guide.replaces_base:
        return own
    return {"base": 1, **own}


@dataclass
class DecodeOutput:
    """What :func:`guided_generate` returns, rows in input order.

    Attributes:
        tokens: generated token ids per row (the EOS token, if any, excluded).
        finish_reasons: "eos" or "length" per row.
        wall_s: wall time of the whole call; prefill_s: of the prefill step alone.
        steps: decoding steps run (= the longest row's token count).
        row_tokens: tokens decoded summed over rows (EOS included: it costs a step too).
        forwards: forward passes per model ("base", and the guide's own counts per step; a
            fused guide's shared forward is counted under its own keys, e.g. "fused").
        fused_lanes: rows per batch row in the fused forward (0: base and guide unfused).
    """

    tokens: list[list[int]]
    finish_reasons: list[str]
    wall_s: float
    prefill_s: float
    steps: int
    row_tokens: int
    forwards: dict[str, int] = field(default_factory=dict)
    fused_lanes: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(
    scores: torch.Tensor, config: GenerationConfig, generators: list[torch.Generator]
) -> torch.Tensor:
    """One token per row from softmax(scores / T) with nucleus filtering, each row its own RNG,
    so a row's sample does not depend on which other rows share its batch."""
    probs = torch.softmax(scores / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= config.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    picks = [torch.multinomial(probs[i].cpu(), 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(picks).to(scores.device)


@torch.inference_mode()
def guided_generate(
    base: Any,
    guide: Guide | FusedGuide | None,
    prompt_ids: Sequence[Sequence[int]],
    alphas: torch.Tensor,
    config: GenerationConfig,
    *,
    vocab_size: int,
    pad_token_id: int,
    eos_token_ids: set[int],
    guide_prompt_ids: Sequence[Sequence[int]] | None = None,
    row_seeds: Sequence[int] | None = None,
) -> DecodeOutput:
    """Decode a batch of (prompt, alpha) rows with the base model, steered by ``guide``.

    Args:
        base: the frozen base causal LM.
        guide: the method's guide, or None for plain decoding of the base. A
            :class:`~mobench.interfaces.FusedGuide` runs the base rows itself, in its own forward
            over ``base``'s weights; the combination below is the same either way.
        prompt_ids: per row, the prompt rendered with the base model's template, as token ids.
        alphas: (B, K) preference vectors in the task's objective order.
        config: decoding settings (greedy or sampling, max_new_tokens, beta).
        vocab_size: the shared vocabulary of base and guide.
        pad_token_id / eos_token_ids: of the base tokenizer (an empty set never stops early).
        guide_prompt_ids: per row, the prompt in the guide model's own template (defaults to
            ``prompt_ids``).
        row_seeds: per-row sampling seeds (required when ``config.sampling``).
    """
    n_rows = len(prompt_ids)
    if alphas.shape[0] != n_rows:
        raise ValueError(f"{n_rows} prompts but {alphas.shape[0]} alpha rows")
    if config.sampling and (row_seeds is None or len(row_seeds) != n_rows):
        raise ValueError("sampling needs one seed per row (row_seeds)")
    models: FusedGuide | _SeparateModels
    if isinstance(guide, FusedGuide):
        models = guide
    else:
        models = _SeparateModels(base, guide, vocab_size, pad_token_id)
    device = backbone_and_head(base)[1].weight.device
    eos = torch.tensor(sorted(eos_token_ids), device=device, dtype=torch.long)
    generators = []
    if config.sampling:
        assert row_seeds is not None
        generators = [torch.Generator().manual_seed(int(s)) for s in row_seeds]

    def combine(logprobs: tuple[torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
        base_lp, guidance = logprobs
        if base_lp is None:  # a guide that replaces the base: its guidance is the score
            assert guidance is not None
            return guidance.to(device)
        if guidance is None:
            return base_lp.to(device)
        return base_lp.to(device) + guidance.to(device) / config.beta

    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    reasons = ["length"] * n_rows
    active = torch.arange(n_rows, device=device)  # original row index of each batch row
    _sync(device)
    t0 = time.perf_counter()
    calls = 1
    base_rows = [list(p) for p in prompt_ids]
    guide_rows = [list(p) for p in guide_prompt_ids] if guide_prompt_ids else base_rows
    scores = combine(models.prefill(base_rows, guide_rows, alphas))
    _sync(device)
    prefill_s = time.perf_counter() - t0

    steps = 0
    row_tokens = 0
    for t in range(config.max_new_tokens):
        next_tok = _sample(scores, config, generators) if config.sampling else scores.argmax(-1)
        steps += 1
        row_tokens += int(next_tok.numel())
        is_eos = torch.isin(next_tok, eos)
        for row, tok, stop in zip(active.tolist(), next_tok.tolist(), is_eos.tolist(), strict=True):
            if stop:
                reasons[row] = "eos"
            else:
                tokens[row].append(tok)
        if t == config.max_new_tokens - 1:
            break
        keep = (~is_eos).nonzero().flatten()
        if keep.numel() == 0:
            break
        if keep.numel() < active.numel():
            models.drop(keep)
            active = active.index_select(0, keep)
            next_tok = next_tok.index_select(0, keep)
            if generators:
                generators = [generators[i] for i in keep.tolist()]
        scores = combine(models.step(next_tok))
        calls += 1
    _sync(device)
    # per model: its forwards per token (as set up at this batch's prefill) times the calls
    forwards = {name: per_step * calls for name, per_step in forwards_per_token(guide).items()}
    return DecodeOutput(
        tokens=tokens,
        finish_reasons=reasons,
        wall_s=time.perf_counter() - t0,
        prefill_s=prefill_s,
        steps=steps,
        row_tokens=row_tokens,
        forwards=forwards,
        fused_lanes=guide.lanes if isinstance(guide, FusedGuide) else 0,
    )
