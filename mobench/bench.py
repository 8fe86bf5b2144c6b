"""``mobench bench``: how fast mobench decodes a Pareto front, against plain decoding and against
the reference loop, on the same rows and token budget, in one process.

For one preset (a base model, an alpha grid, prompts, a token budget) and each dtype it times

(a) **base**: plain decoding of the base model over every (prompt, alpha) row (mobench's loop);
(b) **each method's guided decoding in mobench**: whole fronts per batch, finished rows dropped,
    length-sorted prompts, KV caches, and the fused backbone where the guide sits on the base
    model's own weights (:mod:`mobench.fused`); weak-to-strong configurations ("-w2s") steer the
    base with a smaller guide model that shares its tokenizer;
(c) **the reference loop** re-implemented faithfully: batch 1, one alpha at a time, every model a
    separate copy (the method's unfused guide, ``ModelContext.fuse=False``) with its own KV cache,
    driven by Hugging Face ``generate`` with a ``LogitsProcessor`` that adds the guide's
    log-softmax combination to the base's log-softmax (METHODS §3.2, §10.16), stock attention;
(d) **the batched-generate peer**, what a user would write instead of mobench: the same
    ``generate`` + ``LogitsProcessor`` with separate model copies and stock attention, but on
    mobench's batches (the whole front of a prompt in one batch, left-padded), the guide's
    models running with their own KV caches.

and reports b/a, c/b and d/b time ratios, tokens/s, seconds per 512 tokens, each
configuration's memory (loaded weights, and the decoding peak above them), the repeats (median,
min and max) and the greedy-token agreement of b with c and d, and of bf16 with fp32. Guides are
random weights of the trained shapes (``Method.random_guide``): decoding cost does not depend on
training. Every row decodes exactly ``max_new_tokens`` tokens (no EOS stop), so all
configurations do the same work. A time ratio's spread is the min and max of its per-repeat
ratios (the configurations of a repeat run interleaved, batch by batch); a target is met only
when the whole spread is on the right side of its limit.

The reference loop is slow (that is the point), so it runs once, on one row per grid point,
the grid points spread round-robin over ``reference_prompts`` prompts (median lengths); its time
per row is compared with mobench's time per row: at batch 1 a row's cost does not depend on the
other rows. The output says how many rows it covered.

Nothing in mobench's core imports this module; the CLI imports it when ``mobench bench`` runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobench import allocator
from mobench.config import ConfigError, GenerationConfig, alpha_grid
from mobench.data import PreferencePair
from mobench.decoding import forwards_per_token, guided_generate, stock_attention
from mobench.interfaces import FusedGuide, Guide
from mobench.memory import MemoryMeter, weights_mb
from mobench.models import ModelContext, resolve_dtype, torch_dtype

#: objectives of the benchmark's preference vectors (the safety task's order); only their
#: number matters for cost
OBJECTIVES_TASK = "safety"

# Llama shapes for the randomly initialised models of the GPU preset (no download needed)
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
TINYLLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}


@dataclass(frozen=True)
class BenchPreset:
    """What ``mobench bench --preset NAME`` measures.

    Attributes:
        base_model: model source of the base (and same-backbone guides); None = a randomly
            initialised Llama of shape ``random_base`` (no download).
        random_base: LlamaConfig fields of the random base.
        w2s_guide: LlamaConfig fields of the weak-to-strong guide model, randomly initialised
            with the base's vocabulary (weights do not matter for cost); None = no w2s configs.
        methods: methods benchmarked with guides on the base model itself (fused).
        w2s_methods: methods benchmarked with the smaller guide model.
        prompts / grid / max_new_tokens: rows = prompts x alphas of ``grid``, each decoding
            exactly ``max_new_tokens`` tokens.
        prompt_lengths: (min, max) token length of random prompts (random-model presets).
        dtypes: each one is a separate pass.
        batch_size: rows per decoding batch in mobench (b and a alike).
        repeats: timed repeats of a, b and d (the first right after loading, no warm-up).
        reference_prompts: the reference loop decodes every grid point once, grid point j on
            the (j mod n)-th of these n prompts (median lengths).
        batched_peer: also time the batched-generate peer (d) of every method configuration.
        interleave: time the configurations round-robin, all loaded at once (fairer on a shared
            machine, whose load drifts), instead of one after another.
        fused_floor: also time plain base decoding of every batch with its rows doubled: what
            the extra rows of a 2-lane fused guide cost with free adapters (a lower bound on its
            guided/unguided ratio, reported with the target).
    """

    name: str
    description: str
    base_model: str | None = None
    random_base: dict[str, Any] | None = None
    w2s_guide: dict[str, Any] | None = None
    methods: tuple[str, ...] = ("prompt", "rs", "mod", "genarm", "parm", "uniarm")
    w2s_methods: tuple[str, ...] = ("genarm", "mod_w2s")
    prompts: int = 8
    grid: str = "simplex-0.1"
    max_new_tokens: int = 64
    prompt_lengths: tuple[int, int] = (48, 96)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    device: str = "cpu"
    batch_size: int = 11
    repeats: int = 3
    reference_prompts: int = 3
    batched_peer: bool = True
    interleave: bool = True
    fused_floor: bool = True
    seed: int = 0


BENCH_PRESETS: dict[str, BenchPreset] = {
    p.name: p
    for p in (
        BenchPreset(
            name="tiny",
            description=(
                "CPU: SmolLM2-135M-Instruct (real weights), 4 safety prompts x 11 alphas x 32 "
                "tokens, fp32 and bf16, 3 repeats; weak-to-strong guide: a random 8-layer, "
                "384-wide Llama with SmolLM2's vocabulary"
            ),
            base_model="smollm2-135m-instruct",
            w2s_methods=("mod_w2s",),
            # 4 prompts x 32 tokens (was 8 x 64 with one repeat): 3 repeats, the batched peer
            # and an 11-row reference loop per configuration fit ~20 min on 2 shared cores
            prompts=4,
            max_new_tokens=32,
            reference_prompts=4,
            w2s_guide={
                "hidden_size": 384,
                "intermediate_size": 1024,
                "num_hidden_layers": 8,
                "num_attention_heads": 6,
                "num_key_value_heads": 2,
                "head_dim": 64,
                "tie_word_embeddings": True,
            },
        ),
        BenchPreset(
            name="gpu-7b",
            description=(
                "CUDA, bf16: randomly initialised Llama-2-7B shapes (no download), 8 random "
                "prompts x 11 alphas x 64 tokens; weak-to-strong guide: TinyLlama-1.1B shapes"
            ),
            random_base=LLAMA2_7B,
            w2s_guide=TINYLLAMA_1B,
            dtypes=("bfloat16",),
            device="cuda",
            batch_size=88,
            repeats=3,
            interleave=False,  # 7B copies do not all fit at once
        ),
        BenchPreset(
            name="smoke",
            description="seconds on any CPU: a random 2-layer Llama, checks the benchmark runs",
            random_base={
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 256,
            },
            w2s_guide={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
            w2s_methods=("genarm", "mod_w2s"),
            prompts=2,
            grid="corners",
            max_new_tokens=4,
            prompt_lengths=(5, 9),
            batch_size=4,  # two prompts' fronts per batch: the batched peer pads them
            repeats=3,
            reference_prompts=2,
        ),
    )
}

#: targets of the performance issue, checked in every result (CPU figures; on a GPU the same
#: checks are printed for information)
GUIDED_RATIO_TARGETS = {"parm": 1.5, "uniarm": 1.5, "genarm": 1.9}
SPEEDUP_TARGET, SPEEDUP_AIM = 6.0, 10.0
AGREEMENT_TARGET = 0.99  # fp32
#: the batched-generate peer (d) over mobench (b), same-backbone guides
PEER_TARGET = 1.5
MEMORY_RATIO_TARGET = 1.2  # same-backbone methods vs the base alone


# ---------------------------------------------------------------------------------- models


class IdTokenizer:
    """Stands in for a tokenizer where the benchmark's models are random (no vocabulary): pad
    id 0, no EOS, and text hashed to a few ids (UniARM's objective descriptors)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.pad_token_id = 0
        self.eos_token_id: int | None = None
        self.bos_token_id: int | None = None

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [sum(map(ord, w)) % self.vocab_size for w in text.split()]}


def random_llama(fields: dict[str, Any], dtype: str, device: str, seed: int) -> Any:
    """A Llama with random weights, made directly in ``dtype`` on ``device`` (a 7B fits the GPU
    without an fp32 copy); the same seed gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype(dtype))
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**fields))
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


@dataclass
class BenchModels:
    """How to make a fresh copy of each model of a preset, and the prompts' tokenizer."""

    preset: BenchPreset
    device: str
    tokenizer: Any
    base_source: str
    vocab_size: int

    def base(self, dtype: str) -> Any:
        p = self.preset
        if p.base_model is not None:
            from mobench.models import load_causal_lm

            return load_causal_lm(p.base_model, dtype=dtype, device=self.device)[0]
        assert p.random_base is not None
        return random_llama(p.random_base, dtype, self.device, p.seed)

    def w2s_guide(self, dtype: str) -> Any:
        p = self.preset
        assert p.w2s_guide is not None
        fields = {**self._base_fields(), **p.w2s_guide}
        return random_llama(fields, dtype, self.device, p.seed + 1)

    def _base_fields(self) -> dict[str, Any]:
        p = self.preset
        if p.random_base is not None:
            return dict(p.random_base)
        from transformers import AutoConfig

        from mobench.models import resolve_model_source

        assert p.base_model is not None
        config = AutoConfig.from_pretrained(resolve_model_source(p.base_model).location)
        keep = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "rms_norm_eps")
        return {k: getattr(config, k) for k in keep if getattr(config, k, None) is not None}

    def context(self, dtype: str, *, w2s: bool, fuse: bool, base: bool = True) -> ModelContext:
        """Fresh models for one configuration: the base (None with ``base=False``), and how to
        load the guide backbone (a fresh copy per call, the base's weights unless ``w2s``)."""
        guide_source = f"{self.base_source}:w2s-guide" if w2s else self.base_source
        loader = (lambda: self.w2s_guide(dtype)) if w2s else (lambda: self.base(dtype))
        return ModelContext(
            base=self.base(dtype) if base else None,
            base_tokenizer=self.tokenizer,
            base_source=self.base_source,
            guide_tokenizer=self.tokenizer,
            guide_source=guide_source,
            vocab_size=self.vocab_size,
            dtype=dtype,
            device=self.device,
            fuse=fuse,
            guide_loader=loader,
        )


def _bench_models(preset: BenchPreset, device: str) -> BenchModels:
    if preset.base_model is not None:
        from mobench.models import load_tokenizer

        tok = load_tokenizer(preset.base_model)
        return BenchModels(preset, device, tok, preset.base_model, len(tok))
    assert preset.random_base is not None
    vocab = int(preset.random_base["vocab_size"])
    return BenchModels(preset, device, IdTokenizer(vocab), f"random-llama:{preset.name}", vocab)


def _prompts(preset: BenchPreset, models: BenchModels) -> list[PreferencePair]:
    """The preset's prompts: the safety task's test prompts (rendered with the base model's
    chat template) for a real model, random token ids for a random one."""
    from mobench.registry import get_task

    task = get_task(OBJECTIVES_TASK)()
    if preset.base_model is not None:
        from mobench.resolve import resolve_spec

        spec = resolve_spec(OBJECTIVES_TASK, "genarm", "tiny", device="cpu")
        pairs = task.load(spec).test[: preset.prompts]
        if len(pairs) < preset.prompts:
            raise ConfigError(f"the tiny preset has only {len(pairs)} test prompts")
        return pairs
    gen = torch.Generator().manual_seed(preset.seed)
    low, high = preset.prompt_lengths
    out = []
    for i in range(preset.prompts):
        n = int(torch.randint(low, high + 1, (1,), generator=gen))
        ids = torch.randint(1, models.vocab_size, (n,), generator=gen).tolist()
        out.append(
            PreferencePair(
                id=f"random-{i}",
                prompt=[{"role": "user", "content": ""}],
                responses=("", ""),
                labels={},
                meta={"ids": ids},
            )
        )
    return out


def _encode(pairs: Sequence[PreferencePair], models: BenchModels) -> dict[str, list[int]]:
    from mobench.registry import get_task
    from mobench.training import encode_prompt

    if models.preset.base_model is None:
        return {p.id: list(p.meta["ids"]) for p in pairs}
    task = get_task(OBJECTIVES_TASK)()
    tok = models.tokenizer
    return {p.id: encode_prompt(tok, task.render(p.prompt, tok)) for p in pairs}


# ------------------------------------------------------------------------------- decoding


@dataclass
class Rows:
    """The benchmark's rows (prompt, alpha) in mobench's batch order, and the reference rows."""

    batches: list[list[tuple[str, int]]]
    prompt_ids: dict[str, list[int]]
    alphas: np.ndarray
    reference: list[tuple[str, int]]
    pairs: dict[str, PreferencePair] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)


def _rows(preset: BenchPreset, models: BenchModels) -> Rows:
    from mobench.pipeline import plan_batches
    from mobench.registry import get_task

    pairs = _prompts(preset, models)
    ids = _encode(pairs, models)
    k = len(get_task(OBJECTIVES_TASK).objectives)
    alphas = alpha_grid(preset.grid, k).astype(np.float32)
    rows = [(p, a) for p in pairs for a in range(len(alphas))]
    lengths = {pid: len(v) for pid, v in ids.items()}
    batches = [
        [(p.id, a) for p, a in batch] for batch in plan_batches(rows, lengths, preset.batch_size)
    ]
    # the reference loop decodes every grid point once, round-robin over the prompts of median
    # length: the whole alpha range and several prompts, in as many rows as there are alphas
    by_length = sorted(ids, key=lambda pid: (lengths[pid], pid))
    n = min(max(1, preset.reference_prompts), len(by_length))
    chosen = by_length[max(0, (len(by_length) - n) // 2) :][:n]
    reference = [(chosen[a % n], a) for a in range(len(alphas))]
    return Rows(batches, ids, alphas, reference, {p.id: p for p in pairs})


def _row_prompts(method: Any, rows: Rows, models: BenchModels) -> dict[tuple[str, int], list[int]]:
    """Per (prompt, alpha) row, the base model's prompt ids for ``method``
    (:meth:`~mobench.interfaces.Method.conversation`: preference prompting states alpha there);
    for a random model, the statement's hashed ids before the prompt's."""
    from mobench.registry import get_task
    from mobench.training import encode_prompt

    task = get_task(OBJECTIVES_TASK)()
    tok = models.tokenizer
    out = {}
    for batch in rows.batches:
        for pid, a in batch:
            conversation = method.conversation(task, rows.pairs[pid].prompt, rows.alphas[a])
            if models.preset.base_model is None:
                said = " ".join(t["content"] for t in conversation if t["role"] == "system")
                out[pid, a] = tok(said)["input_ids"] + rows.prompt_ids[pid]
            else:
                out[pid, a] = encode_prompt(tok, task.render(conversation, tok))
    return out


@dataclass
class DecodeRun:
    wall_s: float
    row_tokens: int
    tokens: dict[tuple[str, int], list[int]]
    forwards_per_token: dict[str, int] = field(default_factory=dict)
    fused_lanes: int = 0
    guide_lanes: int = 1


def _decode(
    models: ModelContext,
    guide: Guide | FusedGuide | None,
    rows: Rows,
    config: GenerationConfig,
    batches: Sequence[Sequence[tuple[str, int]]] | None = None,
    row_prompts: dict[tuple[str, int], list[int]] | None = None,
) -> DecodeRun:
    """mobench's loop over ``batches`` (default: all), no EOS stop; ``row_prompts`` gives each
    row its own prompt ids (default: its prompt's)."""
    run = DecodeRun(0.0, 0, {})
    for batch in rows.batches if batches is None else batches:
        prompts = [
            rows.prompt_ids[pid] if row_prompts is None else row_prompts[pid, a] for pid, a in batch
        ]
        out = guided_generate(
            models.base,
            guide,
            prompts,
            torch.from_numpy(rows.alphas[[a for _, a in batch]]),
            config,
            vocab_size=models.vocab_size,
            pad_token_id=models.base_tokenizer.pad_token_id,
            eos_token_ids=set(),
        )
        run.wall_s += out.wall_s
        run.row_tokens += out.row_tokens
        run.fused_lanes = out.fused_lanes
        run.tokens.update(zip(batch, out.tokens, strict=True))
    run.forwards_per_token = forwards_per_token(guide)
    if guide is not None:
        run.guide_lanes = getattr(guide, "lanes", 1)
    return run


class GuideLogitsProcessor:
    """The reference code's logit arithmetic as a ``transformers`` LogitsProcessor, for a batch
    of rows: ``log_softmax(base)[:V] + guide / beta`` (ids past the shared vocabulary get -inf),
    with the guide run on its own models and KV caches (prefill of the rows' prompts at the
    first call, then one token per row)."""

    def __init__(
        self,
        guide: Guide,
        guide_prompts: list[list[int]],
        alphas: torch.Tensor,
        vocab: int,
        beta: float,
    ) -> None:
        self.guide, self.guide_prompts, self.alphas = guide, guide_prompts, alphas
        self.vocab, self.beta = vocab, beta
        self.started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.started:
            guidance = self.guide.prefill(self.guide_prompts, self.alphas)
            self.started = True
        else:
            guidance = self.guide.step(input_ids[:, -1])
        combined = torch.full(scores.shape, float("-inf"), device=scores.device)
        if self.guide.replaces_base:
            # MOD: the policies' combination is the whole score; the base model generate()
            # drives is run and unused, as MOD's code runs its reference model unused (§6.1)
            combined[:, : self.vocab] = guidance.to(scores.device)
            return combined
        base = torch.log_softmax(scores[:, : self.vocab].float(), dim=-1)
        combined[:, : self.vocab] = base + guidance.to(scores.device) / self.beta
        return combined


class SharedVocabulary:
    """A LogitsProcessor that keeps ``generate`` to the ids base and guides share (as mobench's
    loop and :class:`GuideLogitsProcessor` do): logit rows past them get -inf."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.vocab :] = float("-inf")
        return scores


@torch.inference_mode()
def hf_generate_decode(
    models: ModelContext,
    guide: Guide,
    batches: Sequence[Sequence[tuple[list[int], np.ndarray]]],
    max_new_tokens: int,
    beta: float = 1.0,
) -> tuple[float, list[list[int]]]:
    """HF ``generate`` (greedy, no EOS stop) on the base with :class:`GuideLogitsProcessor`,
    one call per batch of (prompt ids, alpha) rows, prompts left-padded: with batches of one row
    this is the reference loop, with mobench's batches the batched-generate peer. A guide that
    is one model replacing the base (Rewarded Soups: the interpolated policy) is decoded by
    ``generate`` on that model alone, as its reference code decodes the merged model. Returns
    (seconds, tokens per row in batch order)."""
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers import LogitsProcessorList

    sole = getattr(guide, "sole_model", lambda: None)()
    base = models.base if sole is None else sole
    device = base.get_output_embeddings().weight.device
    pad = models.base_tokenizer.pad_token_id
    hf_config = HFGenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=False,
        num_beams=1,
        eos_token_id=None,
        pad_token_id=pad,
    )
    # generate() fills a None eos_token_id from the model's own generation config and would stop
    # there: clear it for the loop, so both sides decode the same token budget
    model_eos = base.generation_config.eos_token_id
    base.generation_config.eos_token_id = None
    outputs: list[list[int]] = []
    _sync(device)
    t0 = time.perf_counter()
    try:
        for batch in batches:
            prompts = [list(p) for p, _ in batch]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device
            )
            alphas = torch.stack([torch.as_tensor(a) for _, a in batch])
            processors: list[Any] = []
            if sole is None:
                processors.append(
                    GuideLogitsProcessor(guide, prompts, alphas, models.vocab_size, beta)
                )
            else:
                guide.set_rows(alphas)  # type: ignore[attr-defined]  # SeparateModels
                processors.append(SharedVocabulary(models.vocab_size))
            out = base.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=hf_config,
                logits_processor=LogitsProcessorList(processors),
            )
            outputs.extend(out[:, width:].tolist())
    finally:
        base.generation_config.eos_token_id = model_eos
    _sync(device)
    wall = time.perf_counter() - t0
    if any(len(row) != max_new_tokens for row in outputs):
        raise RuntimeError(
            f"generate stopped early ({[len(r) for r in outputs]} tokens, not "
            f"{max_new_tokens}): its timing and token agreement would not be comparable"
        )
    return wall, outputs


def reference_decode(
    models: ModelContext,
    guide: Guide,
    rows: Sequence[tuple[list[int], np.ndarray]],
    max_new_tokens: int,
    beta: float = 1.0,
) -> tuple[float, list[list[int]]]:
    """The reference loop: each (prompt ids, alpha) row alone (:func:`hf_generate_decode` with
    batches of one row). Returns (seconds, tokens per row)."""
    return hf_generate_decode(models, guide, [[row] for row in rows], max_new_tokens, beta)


def device_is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def _sync(device: torch.device | str) -> None:
    if device_is_cuda(device):
        torch.cuda.synchronize(device)


def token_agreement(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> dict[str, float]:
    """Greedy-token agreement of two decodes of the same rows: the fraction of positions with
    the same token (positions past a row's end count as different), the fraction of identical
    rows, and the mean position of the first difference (``len`` for identical rows)."""
    same = total = identical = 0
    first: list[int] = []
    for x, y in zip(a, b, strict=True):
        n = max(len(x), len(y))
        matches = [i < len(x) and i < len(y) and x[i] == y[i] for i in range(n)]
        same += sum(matches)
        total += n
        identical += all(matches)
        first.append(next((i for i, m in enumerate(matches) if not m), n))
    return {
        "token_agreement": same / total if total else 1.0,
        "identical_rows": identical / len(first) if first else 1.0,
        "mean_first_difference": float(np.mean(first)) if first else 0.0,
    }


# ------------------------------------------------------------------------------ the bench


@dataclass
class _Config:
    """One measured configuration: a name, a method (None = plain base), same backbone or not,
    and whether it is the method's batched-generate peer (d) rather than mobench (b)."""

    name: str
    method: str | None
    w2s: bool = False
    #: plain base decoding of each batch's rows repeated this many times (the fused floor)
    row_factor: int = 1
    peer: bool = False
    context: ModelContext | None = None
    guide: Guide | FusedGuide | None = None
    #: per-row prompt ids for a method that conditions the prompt on alpha (``prompt``)
    row_prompts: dict[tuple[str, int], list[int]] | None = None
    times: list[float] = field(default_factory=list)
    run: DecodeRun | None = None
    weights_mb: float | None = None
    decode_peak_mb: float | None = None


def _guided(cfg: _Config) -> bool:
    """The configuration's method decodes with a guide (not the base alone, or prompted)."""
    from mobench.registry import get_method

    return cfg.method is not None and get_method(cfg.method).trains


def _method(name: str) -> Any:
    from mobench.registry import get_method

    cls = get_method(name)
    return cls(cls.config_cls())


def _spread(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """Median, min and max of per-repeat values."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def _summary(times: list[float], row_tokens: int) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "times_s": [round(t, 4) for t in times],
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "row_tokens": row_tokens,
        "tokens_per_s": round(row_tokens / median, 2),
        "s_per_512_tokens": round(512 * median / row_tokens, 4),
    }


def _check(
    name: str,
    value: dict[str, float] | float | None,
    op: str,
    limit: float,
    aim: float | None = None,
) -> dict[str, Any]:
    """A target check. ``value`` is a measured number or a spread (median, min, max over the
    repeats): a spread meets the target only when all of it is on the right side of the limit;
    ``miss`` says by how much the median misses, or that the limit lies within the spread."""
    if value is None:
        return {"target": name, "value": None, "limit": f"{op} {limit:g}", "met": None}
    spread = value if isinstance(value, dict) else None
    median = spread["median"] if spread else float(value)  # type: ignore[arg-type]
    low, high = (spread["min"], spread["max"]) if spread else (median, median)
    worst, best = (high, low) if op == "<=" else (low, high)
    ok = (lambda v: v <= limit) if op == "<=" else (lambda v: v >= limit)
    out: dict[str, Any] = {"target": name, "value": round(median, 4), "limit": f"{op} {limit:g}"}
    if spread:
        out["spread"] = [spread["min"], spread["max"]]
    out["met"] = ok(worst)
    if not ok(worst):
        if ok(best):
            out["miss"] = (
                f"the limit lies within the spread {low:g}-{high:g} of the repeats: not met "
                "beyond the noise"
            )
        else:
            out["miss"] = (
                f"{abs(median / limit - 1):.1%} {'over' if op == '<=' else 'under'} the limit"
            )
    if aim is not None:
        out["aim"] = f"{op} {aim:g}"
    return out


def run_bench(
    preset: BenchPreset,
    out_dir: Path | None = None,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``preset``; write the result JSON into ``out_dir`` (if given) and return it."""
    from mobench.environment import environment_info
    from mobench.models import cpu_has_native_bf16, resolve_device
    from mobench.registry import get_task

    device = resolve_device(preset.device)
    if device == "cpu":
        allocator.reuse_freed_memory()  # as mobench run does (timings of the same loop)
    meter = MemoryMeter(device)
    task = get_task(OBJECTIVES_TASK)()
    models = _bench_models(preset, device)
    rows = _rows(preset, models)
    gen = GenerationConfig(max_new_tokens=preset.max_new_tokens)
    load_before = _loadavg()  # other jobs on the machine: recorded with the timings
    t_start = time.perf_counter()
    log(
        f"bench {preset.name}: {rows.count} rows ({preset.prompts} prompts x {len(rows.alphas)} "
        f"alphas) x {preset.max_new_tokens} tokens, batch {preset.batch_size}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )
    with tempfile.TemporaryDirectory(prefix="mobench-bench-") as tmp:
        artifacts = _random_guides(preset, models, task, Path(tmp), log)
        per_dtype = {
            dtype: _bench_dtype(preset, dtype, models, task, rows, gen, artifacts, meter, log)
            for dtype in preset.dtypes
        }
    _bf16_agreement(per_dtype)
    env = environment_info(device, ",".join(preset.dtypes))
    env["cpu_model"] = _cpu_model()
    env["cpu_native_bf16"] = cpu_has_native_bf16()
    env["dtype_auto_resolves_to"] = resolve_dtype("auto", device)
    env["loadavg_before_after"] = [load_before, _loadavg()]  # /proc/loadavg, 1/5/15 min
    report = {
        "schema": 1,
        # top-level fields that `mobench report` reads (defaults of every entry of "results")
        "preset": preset.name,
        "task": OBJECTIVES_TASK,
        "device": device,
        "date": env["date"],
        "bench_preset": dataclasses.asdict(preset),
        "environment": env,
        "settings": {
            "rows": rows.count,
            "alphas": len(rows.alphas),
            "max_new_tokens": preset.max_new_tokens,
            "stop_at_eos": False,
            "batch_size": preset.batch_size,
            "repeats": preset.repeats,
            "interleaved": preset.interleave,
            "timing": "each repeat decodes every batch once; with interleaving the configurations "
            "take turns batch by batch, so a drifting machine load hits them alike; the first "
            "repeat starts right after loading (no warm-up). A ratio's spread is the min and max "
            "of its per-repeat ratios; a target is met only when the whole spread meets it",
            "reference_rows": len(rows.reference),
            "reference_prompts": len({pid for pid, _ in rows.reference}),
            "reference_coverage": (
                f"the reference loop decodes {len(rows.reference)} of the {rows.count} rows, once: "
                f"every one of the {len(rows.alphas)} grid points, round-robin over "
                f"{len({pid for pid, _ in rows.reference})} prompts of median length; its time per "
                "row is compared with mobench's (at batch 1 a row's cost does not depend on the "
                "other rows)"
            ),
            "memory_method": meter.method,
            "memory": "weights_mb: parameter and buffer bytes of the configuration's loaded models "
            "(each tensor once); decode_peak_mb: the peak above the memory in use after loading, "
            "over every batch of the last repeat (reset before each batch, free heap returned to "
            "the OS first); peak_memory_mb = weights_mb + decode_peak_mb",
            "machine_note": "CPU timings on a machine shared with other jobs are noisy: compare "
            "ratios measured in one run, with their spread over the repeats",
        },
        "base": {dtype: r["base"] for dtype, r in per_dtype.items()},
        # one entry per (method configuration, dtype); weak-to-strong entries carry the preset
        # "<name>:w2s" so that the report never shows them for a same-backbone run
        "results": [entry for r in per_dtype.values() for entry in r["results"]],
        "targets": [check for r in per_dtype.values() for check in r["targets"]],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = out_dir / f"{preset.name}-{device.split(':')[0]}-{stamp}.json"
        path.write_text(json.dumps(report, indent=2))
        report["path"] = str(path)
    return report


def _loadavg() -> str | None:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _random_guides(
    preset: BenchPreset, models: BenchModels, task: Any, tmp: Path, log: Callable[[str], None]
) -> dict[tuple[str, bool], Path]:
    """One random guide per (method, w2s), saved as the method saves a trained one."""
    out: dict[tuple[str, bool], Path] = {}
    wanted = [(m, False) for m in preset.methods] + [(m, True) for m in preset.w2s_methods]
    for i, (name, w2s) in enumerate(wanted):
        if w2s and preset.w2s_guide is None:
            continue
        path = tmp / f"{name}{'-w2s' if w2s else ''}"
        path.mkdir()
        out[(name, w2s)] = path
        method = _method(name)
        if not method.trains:  # nothing trained, nothing to draw (preference prompting)
            continue
        ctx = models.context(preset.dtypes[0], w2s=w2s, fuse=False, base=False)
        method.random_guide(task, ctx, path, preset.seed + 10 * i)
        del ctx
        gc.collect()  # the backbone copies random_guide loaded (a 7B each on the GPU preset)
        if device_is_cuda(models.device):
            torch.cuda.empty_cache()
    log(f"random guides ready: {', '.join(p.name for p in out.values())}")
    return out


def _bench_dtype(
    preset: BenchPreset,
    dtype: str,
    models: BenchModels,
    task: Any,
    rows: Rows,
    gen: GenerationConfig,
    artifacts: dict[tuple[str, bool], Path],
    meter: MemoryMeter,
    log: Callable[[str], None],
) -> dict[str, Any]:
    configs = [_Config("base", None)]
    if preset.fused_floor:
        # a fused guide adds its rows to the base's forward: plain decoding of twice the rows
        # is what a 2-lane method (PARM, UniARM) would cost with adapters that cost nothing
        configs.append(_Config("base-x2-rows", None, row_factor=2))
    guided = [_Config(m, m) for m in preset.methods if (m, False) in artifacts]
    guided += [_Config(f"{m}-w2s", m, True) for m in preset.w2s_methods if (m, True) in artifacts]
    configs += guided
    if preset.batched_peer:  # a method without a guide (prompting) has no peer to compare
        configs += [
            _Config(f"{c.name} peer", c.method, c.w2s, peer=True) for c in guided if _guided(c)
        ]

    for cfg in configs:
        cfg.times = [0.0] * preset.repeats
        cfg.run = DecodeRun(0.0, 0, {})

    def timed(cfg: _Config, repeat: int, batch: int) -> None:
        """Decode one batch; its time adds to the repeat's, its tokens replace earlier ones. In
        the last repeat, the batch's memory peak above what is in use before it is kept (the
        first batches of a process allocate one-time state that is no configuration's own)."""
        assert cfg.context is not None and cfg.run is not None
        metered = repeat == preset.repeats - 1
        if metered:
            meter.start()
        if cfg.peer:
            assert isinstance(cfg.guide, Guide)
            batch_rows = [(rows.prompt_ids[p], rows.alphas[a]) for p, a in rows.batches[batch]]
            wall, tokens = hf_generate_decode(
                cfg.context, cfg.guide, [batch_rows], gen.max_new_tokens, gen.beta
            )
            run = DecodeRun(wall, len(batch_rows) * gen.max_new_tokens, {})
            run.tokens = dict(zip(rows.batches[batch], tokens, strict=True))
        else:
            batches = [rows.batches[batch] * cfg.row_factor]
            run = _decode(cfg.context, cfg.guide, rows, gen, batches, cfg.row_prompts)
        if metered:
            peak = meter.peak_mb()
            if peak is not None:
                cfg.decode_peak_mb = max(cfg.decode_peak_mb or 0.0, peak)
        if repeat == 0:
            cfg.run.row_tokens += run.row_tokens
        cfg.times[repeat] += run.wall_s
        cfg.run.tokens.update(run.tokens)
        cfg.run.forwards_per_token = run.forwards_per_token
        cfg.run.fused_lanes, cfg.run.guide_lanes = run.fused_lanes, run.guide_lanes

    def load(cfg: _Config) -> None:
        """Load the configuration's models (fresh copies; the fused floor reuses the base's)
        and count their weights."""
        if cfg.row_factor > 1 and configs[0].context is not None:  # interleaved: still loaded
            cfg.context = configs[0].context
        elif cfg.peer:  # separate copies, transformers' own attention (what a user would run)
            with stock_attention():
                cfg.context = models.context(dtype, w2s=cfg.w2s, fuse=False)
        else:
            cfg.context = models.context(dtype, w2s=cfg.w2s, fuse=True)
        if cfg.method is not None:
            artifact = artifacts[(cfg.method, cfg.w2s)]
            method = _method(cfg.method)
            with stock_attention() if cfg.peer else contextlib.nullcontext():
                cfg.guide = method.guide(artifact, task, cfg.context)
            if not cfg.peer:
                cfg.row_prompts = _row_prompts(method, rows, models)
        cfg.weights_mb = weights_mb(cfg.context, cfg.guide)

    def unload(cfg: _Config) -> None:
        cfg.context = cfg.guide = None
        gc.collect()

    work = [(r, b) for r in range(preset.repeats) for b in range(len(rows.batches))]
    if preset.interleave:  # batch by batch, round-robin: a drifting load hits every config alike
        for cfg in configs:
            load(cfg)
        for repeat, batch in work:
            for cfg in configs:
                timed(cfg, repeat, batch)
        for cfg in configs:
            unload(cfg)
    else:
        for cfg in configs:
            load(cfg)
            for repeat, batch in work:
                timed(cfg, repeat, batch)
            unload(cfg)
    for cfg in configs:
        log(f"  [{dtype}] {cfg.name}: " + ", ".join(f"{t:.2f} s" for t in cfg.times))

    base = configs[0]
    assert base.run is not None
    peers = {c.name.removesuffix(" peer"): c for c in configs if c.peer}
    floor = next((c for c in configs if c.row_factor > 1), None)
    results = []
    for cfg in guided:
        assert cfg.method is not None and cfg.run is not None
        entry: dict[str, Any] = {
            "method": cfg.method,
            "config": cfg.name,
            "preset": f"{preset.name}:w2s" if cfg.w2s else preset.name,
            "dtype": dtype,
            "weak_to_strong": cfg.w2s,
            "guided_unguided_ratio": round(
                statistics.median(cfg.times) / statistics.median(base.times), 4
            ),
            # per-repeat ratios (configurations interleaved within a repeat)
            "guided_unguided": _spread([t / b for t, b in zip(cfg.times, base.times, strict=True)]),
            **_summary(cfg.times, cfg.run.row_tokens),
            "fused_lanes": cfg.run.fused_lanes,
            "guide_lanes": cfg.run.guide_lanes,
            "forwards_per_token": cfg.run.forwards_per_token,
            **_memory(cfg, base),
        }
        peer = peers.get(cfg.name)
        if peer is not None:
            assert peer.run is not None
            ours = [cfg.run.tokens[r] for r in sorted(cfg.run.tokens)]
            theirs = [peer.run.tokens[r] for r in sorted(cfg.run.tokens)]
            entry["batched_peer"] = {
                **_summary(peer.times, peer.run.row_tokens),
                "peer_over_mobench": _spread(
                    [p / t for p, t in zip(peer.times, cfg.times, strict=True)]
                ),
                **_memory(peer, base),
                **{k: round(v, 4) for k, v in token_agreement(ours, theirs).items()},
            }
        # the reference loop is the guided loop of the reference code; a method without a
        # guide (prompting) decodes the base as it is: there is no other loop to compare with
        entry["reference"] = (
            _bench_reference(cfg, dtype, models, task, rows, gen, artifacts, meter, log)
            if _guided(cfg)
            else None
        )
        entry["_tokens"] = cfg.run.tokens
        results.append(entry)
    base_entry = {**_summary(base.times, base.run.row_tokens), **_memory(base, base)}
    base_entry["_tokens"] = base.run.tokens
    if floor is not None:
        base_entry["x2_rows_median_s"] = round(statistics.median(floor.times), 4)
        base_entry["x2_rows_over_base"] = round(
            statistics.median(floor.times) / statistics.median(base.times), 4
        )
        base_entry["x2_rows_over_base_spread"] = _spread(
            [f / b for f, b in zip(floor.times, base.times, strict=True)]
        )
    targets = _targets(results, dtype, base_entry.get("x2_rows_over_base"))
    return {"base": base_entry, "results": results, "targets": targets}


def _memory(cfg: _Config, base: _Config) -> dict[str, Any]:
    """A configuration's memory: loaded weights, decoding peak above them, their sum, and the
    sum over the base's (None where the meter could not measure)."""
    total = None if cfg.decode_peak_mb is None else (cfg.weights_mb or 0.0) + cfg.decode_peak_mb
    base_total = (
        None if base.decode_peak_mb is None else (base.weights_mb or 0.0) + base.decode_peak_mb
    )
    return {
        "weights_mb": _round(cfg.weights_mb),
        "decode_peak_mb": _round(cfg.decode_peak_mb),
        "peak_memory_mb": _round(total),
        "memory_over_base": _ratio(total, base_total),
    }


def _bf16_agreement(per_dtype: dict[str, dict[str, Any]]) -> None:
    """Greedy-token agreement of each bf16 configuration with the same configuration in fp32
    (all rows), written into the bf16 entries; drops the token lists the entries carried."""
    fp32, bf16 = per_dtype.get("float32"), per_dtype.get("bfloat16")
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    if fp32 is not None and bf16 is not None:
        pairs.append((bf16["base"], fp32["base"]))
        by_config = {e["config"]: e for e in fp32["results"]}
        pairs += [(e, by_config[e["config"]]) for e in bf16["results"] if e["config"] in by_config]
    for low, full in pairs:
        keys = sorted(full["_tokens"])
        agreement = token_agreement(
            [low["_tokens"][k] for k in keys], [full["_tokens"][k] for k in keys]
        )
        low["bf16_vs_fp32"] = {k: round(v, 4) for k, v in agreement.items()}
    for r in per_dtype.values():
        for entry in (r["base"], *r["results"]):
            entry.pop("_tokens", None)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 4)


def _bench_reference(
    cfg: _Config,
    dtype: str,
    models: BenchModels,
    task: Any,
    rows: Rows,
    gen: GenerationConfig,
    artifacts: dict[tuple[str, bool], Path],
    meter: MemoryMeter,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The reference loop for one method configuration (separate model copies, batch 1)."""
    assert cfg.method is not None and cfg.run is not None
    with stock_attention():
        context = models.context(dtype, w2s=cfg.w2s, fuse=False)
        guide = _method(cfg.method).guide(artifacts[(cfg.method, cfg.w2s)], task, context)
    assert isinstance(guide, Guide)
    loaded = weights_mb(context, guide)
    ref_rows = [(rows.prompt_ids[pid], rows.alphas[a]) for pid, a in rows.reference]
    meter.start()
    wall, tokens = reference_decode(context, guide, ref_rows, gen.max_new_tokens, gen.beta)
    peak = meter.peak_mb()
    del context, guide
    gc.collect()
    per_row = wall / len(ref_rows)
    mobench_per_row = [t / rows.count for t in cfg.times]
    ours = [cfg.run.tokens[r] for r in rows.reference]
    agreement = token_agreement(ours, tokens)
    over = _spread([per_row / m for m in mobench_per_row], 3)
    log(
        f"  [{dtype}] {cfg.name} reference loop: {wall:.1f} s for {len(ref_rows)} rows, "
        f"{over['median']:.1f}x mobench, agreement {agreement['token_agreement']:.3f}"
    )
    return {
        "rows": len(ref_rows),
        "prompts": len({pid for pid, _ in rows.reference}),
        "wall_s": round(wall, 3),
        "s_per_row": round(per_row, 4),
        "s_per_512_tokens": round(512 * per_row / gen.max_new_tokens, 4),
        "tokens_per_s": round(gen.max_new_tokens / per_row, 2),
        "reference_over_mobench": over["median"],
        "reference_over_mobench_spread": over,
        "weights_mb": _round(loaded),
        "decode_peak_mb": _round(peak),
        **{k: round(v, 4) for k, v in agreement.items()},
    }


def _targets(
    results: list[dict[str, Any]], dtype: str, x2_rows_over_base: float | None = None
) -> list[dict[str, Any]]:
    """The issue's targets for one dtype, each with its value, its spread over the repeats and,
    when missed, by how much. ``x2_rows_over_base`` (plain decoding of twice the rows / the
    base) goes with the guided/unguided checks as what no fused 2-lane guide can beat."""
    checks = []
    for entry in results:
        name, ref = entry["config"], entry["reference"]
        same_backbone = not entry["weak_to_strong"]
        if entry["method"] in GUIDED_RATIO_TARGETS and same_backbone:
            limit = GUIDED_RATIO_TARGETS[entry["method"]]
            check = _check(
                f"{name} guided/unguided ({dtype})", entry["guided_unguided"], "<=", limit
            )
            if x2_rows_over_base is not None:
                check["floor"] = (
                    f"plain base decoding of 2x the rows takes {x2_rows_over_base:.2f}x the base "
                    f"(the cost of a fused guide's rows alone; {entry['fused_lanes']} lanes here)"
                )
            checks.append(check)
        if ref is not None:  # no reference loop for a method without a guide
            checks.append(
                _check(
                    f"{name} reference loop / mobench ({dtype})",
                    ref["reference_over_mobench_spread"],
                    ">=",
                    SPEEDUP_TARGET,
                    aim=SPEEDUP_AIM,
                )
            )
        peer = entry.get("batched_peer")
        if peer is not None and same_backbone:
            checks.append(
                _check(
                    f"{name} batched generate / mobench ({dtype})",
                    peer["peer_over_mobench"],
                    ">=",
                    PEER_TARGET,
                )
            )
        if dtype == "float32" and ref is not None:
            checks.append(
                _check(
                    f"{name} greedy agreement with the reference (fp32)",
                    ref["token_agreement"],
                    ">=",
                    AGREEMENT_TARGET,
                )
            )
        if same_backbone:
            checks.append(
                _check(
                    f"{name} memory (weights + decoding peak) / base ({dtype})",
                    entry["memory_over_base"],
                    "<=",
                    MEMORY_RATIO_TARGET,
                )
            )
    return checks
