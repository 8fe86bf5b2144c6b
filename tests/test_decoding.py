"""Invariants of the one decoding loop and of GenARM's guidance, on tiny in-process models."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mobench.config import GenerationConfig
from mobench.decoding import CausalLMStepper, guided_generate
from mobench.interfaces import Guide
from tests.conftest import build_llama

PROMPTS = [
    "How do I bake bread?",
    "Is the response safe?",
    "The capital of France is",
]


class ZeroGuide(Guide):
    """Contributes nothing: guided decoding must then equal plain decoding exactly."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.rows = 0
        self.forwards_per_token = {"guide": 0}

    def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
        self.rows = len(prompt_ids)
        return torch.zeros(self.rows, self.vocab)

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        assert token_ids.shape == (self.rows,)
        return torch.zeros(self.rows, self.vocab)

    def drop(self, keep: torch.Tensor) -> None:
        self.rows = int(keep.numel())


def _encode(tok: Any, texts: list[str]) -> list[list[int]]:
    rendered = [
        tok.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]
    return [tok(r, add_special_tokens=False)["input_ids"] for r in rendered]


def _generate(
    model: Any,
    tok: Any,
    guide: Guide | None,
    prompts: list[list[int]],
    alphas: torch.Tensor,
    **kw: Any,
) -> Any:
    return guided_generate(
        model,
        guide,
        prompts,
        alphas,
        GenerationConfig(max_new_tokens=kw.pop("max_new_tokens", 12), **kw),
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_ids={tok.eos_token_id},
        row_seeds=list(range(len(prompts))),
    )


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer: Any) -> tuple[Any, Any]:
    return build_llama(tiny_tokenizer), tiny_tokenizer


def test_zero_guide_equals_plain_greedy_and_hf_generate(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    prompts = _encode(tok, PROMPTS)
    alphas = torch.full((len(prompts), 2), 0.5)
    plain = _generate(model, tok, None, prompts, alphas)
    zero = _generate(model, tok, ZeroGuide(len(tok)), prompts, alphas)
    assert zero.tokens == plain.tokens
    assert zero.finish_reasons == plain.finish_reasons
    # ... and both equal transformers' own greedy generate on the same left-padded batch
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt", padding_side="left")
    hf = model.generate(
        **batch,
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    for row, ours in enumerate(plain.tokens):
        theirs = hf[row, batch["input_ids"].shape[1] :].tolist()
        if tok.eos_token_id in theirs:
            theirs = theirs[: theirs.index(tok.eos_token_id)]
        else:
            theirs = [t for t in theirs if t != tok.pad_token_id]
        assert ours == theirs, f"row {row}"


def test_rows_leave_the_batch_at_eos(tiny: tuple[Any, Any]) -> None:
    """A guide that forces EOS on one row: that row stops, the others go on unchanged."""
    model, tok = tiny
    prompts = _encode(tok, PROMPTS)

    class EosOnFirstRow(ZeroGuide):
        def prefill(self, prompt_ids: list[list[int]], alphas: torch.Tensor) -> torch.Tensor:
            out = super().prefill(prompt_ids, alphas)
            out[0, tok.eos_token_id] = 1e4
            return out

    alphas = torch.zeros(len(prompts), 2)
    plain = _generate(model, tok, None, prompts, alphas)
    stopped = _generate(model, tok, EosOnFirstRow(len(tok)), prompts, alphas)
    assert stopped.tokens[0] == [] and stopped.finish_reasons[0] == "eos"
    assert stopped.tokens[1:] == plain.tokens[1:]


def test_sampling_is_seeded_per_row(tiny: tuple[Any, Any]) -> None:
    """A row's sample depends on its own seed, not on which rows share the batch."""
    model, tok = tiny
    prompts = _encode(tok, PROMPTS)
    alphas = torch.zeros(len(prompts), 2)
    together = _generate(model, tok, None, prompts, alphas, sampling=True, temperature=1.0)
    alone = guided_generate(
        model,
        None,
        prompts[1:2],
        alphas[1:2],
        GenerationConfig(max_new_tokens=12, sampling=True),
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_ids={tok.eos_token_id},
        row_seeds=[1],
    )
    assert alone.tokens[0] == together.tokens[1]
    again = _generate(model, tok, None, prompts, alphas, sampling=True, temperature=1.0)
    assert again.tokens == together.tokens


def test_stepper_matches_full_forward(tiny: tuple[Any, Any]) -> None:
    """KV-cached, left-padded steps give the log-probs of a full forward over the unpadded row."""
    model, tok = tiny
    prompts = _encode(tok, PROMPTS)
    stepper = CausalLMStepper(model, len(tok), tok.pad_token_id)
    lp = stepper.prefill(prompts)
    nxt = lp.argmax(-1)
    lp2 = stepper.step(nxt)
    for row, ids in enumerate(prompts):
        full = model(torch.tensor([[*ids, int(nxt[row])]])).logits[0].float().log_softmax(-1)
        torch.testing.assert_close(lp[row], full[-2], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lp2[row], full[-1], atol=1e-4, rtol=1e-4)


def test_stepper_cache_grows_past_its_room_and_drops_rows(tiny: tuple[Any, Any]) -> None:
    """Many steps (past the cache's spare room, which then grows) with a row dropped midway:
    the last log-probs still equal a full forward over each kept row's whole sequence."""
    model, tok = tiny
    prompts = _encode(tok, PROMPTS)
    stepper = CausalLMStepper(model, len(tok), tok.pad_token_id)
    stepper.prefill(prompts)
    gen = torch.Generator().manual_seed(0)
    fed = torch.randint(0, len(tok), (150, len(prompts)), generator=gen)
    rows = list(range(len(prompts)))
    for t in range(150):
        if t == 70:
            rows = [2, 0]
            stepper.drop(torch.tensor(rows))
        lp = stepper.step(fed[t, rows])
    for i, row in enumerate(rows):
        seq = prompts[row] + fed[:, row].tolist()
        full = model(torch.tensor([seq])).logits[0, -1].float().log_softmax(-1)
        torch.testing.assert_close(lp[i], full, atol=1e-4, rtol=1e-4)


def test_shared_prefill_equals_one_prefill_per_row(tiny: tuple[Any, Any]) -> None:
    """Rows with the same prompt (a prompt's front of alphas) share one prefill: the same
    log-probs, at prefill and after, as encoding every row."""
    from mobench.decoding import prompt_groups

    model, tok = tiny
    prompts = _encode(tok, PROMPTS)
    rows = [prompts[i] for i in (0, 1, 0, 2, 1, 0)]
    shared = CausalLMStepper(model, len(tok), tok.pad_token_id)
    separate = CausalLMStepper(model, len(tok), tok.pad_token_id)
    encoded: list[list[int]] = []
    got = [shared.prefill(rows, prompt_groups(rows), lambda idx: encoded.append(idx.tolist()))]
    want = [separate.prefill(rows)]
    assert encoded == [[0, 1, 3]] and shared.forward_calls == 1
    nxt = torch.tensor([5, 6, 7, 8, 9, 10])
    got.append(shared.step(nxt))
    want.append(separate.step(nxt))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="share a group"):
        shared.prefill(rows, [0] * len(rows))


def test_decode_attention_equals_sdpa() -> None:
    """One query token per row, grouped-query heads, a padding mask: same as transformers' sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from mobench.decoding import decode_attention

    gen = torch.Generator().manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True  # type: ignore[assignment]
    query = torch.randn(4, 6, 1, 8, generator=gen)
    key, value = torch.randn(2, 4, 2, 9, 8, generator=gen)
    mask = torch.ones(4, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., :3] = False  # a left-padded row
    for m in (mask, None):
        want, _ = sdpa_attention_forward(module, query, key, value, m, scaling=0.3)
        got, _ = decode_attention(module, query, key, value, m, scaling=0.3)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------- GenARM


def random_lora_arms(tok: Any, n: int = 2, scale: float = 1.0, seed: int = 0) -> list[Any]:
    """n peft LoRA ARMs, each on its own backbone copy (same weights as ``build_llama(tok)``),
    with strong, different, non-zero B so that the mixing weights visibly change the text."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    gen = torch.Generator().manual_seed(seed)
    arms = []
    for i in range(n):
        backbone = build_llama(tok)
        torch.manual_seed(seed * 100 + i)  # a different A per ARM
        arm = get_peft_model(backbone, config)
        with torch.no_grad():
            for name, param in arm.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * scale)
        arms.append(arm.eval())
    return arms


def genarm_separate(arms: list[Any], tok: Any) -> Any:
    """GenARM's lanes (weights alpha_i) over ready-made ARM models, one per lane, through the
    engine's separate-models path (the reference cost structure)."""
    from pathlib import Path

    from mobench.methods.genarm import lane_weights

    from mobench.engine import GuideSpec, Lane, LoRA, SeparateModels

    spec = GuideSpec(tuple(Lane(LoRA(Path(), f"arm{i}")) for i in range(len(arms))), lane_weights)
    return SeparateModels(arms, spec, len(tok), tok.pad_token_id)


@pytest.fixture(scope="module")
def genarm_guide(tiny: tuple[Any, Any]) -> tuple[Any, Any, Any]:
    """GenARM's unfused guide over two random (non-zero) LoRA ARMs, one backbone copy each."""
    model, tok = tiny
    guide = genarm_separate(random_lora_arms(tok), tok)
    return model, tok, guide


def _arm_logprobs(arm: Any, ids: list[int]) -> torch.Tensor:
    return arm(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_genarm_guidance_equals_weighted_sum_by_hand(genarm_guide: tuple[Any, Any, Any]) -> None:
    _, tok, guide = genarm_guide
    prompts = _encode(tok, PROMPTS)
    alphas = torch.tensor([[0.0, 1.0], [0.3, 0.7], [1.0, 0.0]])
    g0 = guide.prefill(prompts, alphas)
    nxt = torch.tensor([5, 17, 42])
    g1 = guide.step(nxt)
    for row, ids in enumerate(prompts):
        seq = [*ids, int(nxt[row])]
        help_lp = _arm_logprobs(guide.models[0].stepper.model, seq)
        harm_lp = _arm_logprobs(guide.models[1].stepper.model, seq)
        a_help, a_harm = alphas[row]
        for pos, got in ((-2, g0[row]), (-1, g1[row])):
            want = a_help * help_lp[pos] + a_harm * harm_lp[pos]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the two ARMs really differ, so the test above can tell them apart
    assert not torch.allclose(
        _arm_logprobs(guide.models[0].stepper.model, prompts[0]),
        _arm_logprobs(guide.models[1].stepper.model, prompts[0]),
    )


def test_guided_scores_are_base_plus_guide_over_beta(genarm_guide: tuple[Any, Any, Any]) -> None:
    """The token chosen at each step is argmax(log_softmax(base) + guide / beta), checked by
    re-running the chosen sequence through the models and recomputing the argmax."""
    model, tok, guide = genarm_guide
    prompts = _encode(tok, PROMPTS[:2])
    alphas = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    beta = 0.5
    out = guided_generate(
        model,
        guide,
        prompts,
        alphas,
        GenerationConfig(max_new_tokens=5, beta=beta),
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_ids={tok.eos_token_id},
    )
    for row, ids in enumerate(prompts):
        seq = ids + out.tokens[row]
        base_lp = model(torch.tensor([seq])).logits[0].float().log_softmax(-1)
        help_lp = _arm_logprobs(guide.models[0].stepper.model, seq)
        harm_lp = _arm_logprobs(guide.models[1].stepper.model, seq)
        combined = base_lp + (alphas[row, 0] * help_lp + alphas[row, 1] * harm_lp) / beta
        for t, token in enumerate(out.tokens[row]):
            assert int(combined[len(ids) - 1 + t].argmax()) == token


def test_mixed_alpha_batch_equals_per_alpha_runs(genarm_guide: tuple[Any, Any, Any]) -> None:
    model, tok, guide = genarm_guide
    prompts = _encode(tok, PROMPTS)
    grid = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    rows = [(p, a) for p in range(len(prompts)) for a in range(len(grid))]
    # beta < 1 amplifies the guidance: the random tiny base alone repeats one token
    mixed = _generate(
        model,
        tok,
        guide,
        [prompts[p] for p, _ in rows],
        torch.stack([grid[a] for _, a in rows]),
        beta=0.25,
    )
    for a in range(len(grid)):
        single = _generate(model, tok, guide, prompts, grid[a].repeat(len(prompts), 1), beta=0.25)
        for p in range(len(prompts)):
            assert mixed.tokens[rows.index((p, a))] == single.tokens[p], f"prompt {p}, alpha {a}"
    # the alphas matter: not every row of a prompt decodes the same
    assert len({tuple(mixed.tokens[i]) for i in range(len(rows))}) > len(prompts)
