"""The ARM loss (METHODS §2) against direct computations, and that training lowers it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mobench.data import PreferencePair
from mobench.training import (
    ARMTrainingConfig,
    bradley_terry_loss,
    collate_pairs,
    encode_prompt,
    sequence_logprobs,
    tokenize_pairs,
    train_pairs,
)
from tests.conftest import build_llama

PAIRS = [
    PreferencePair(
        id=f"p{i}",
        prompt=[{"role": "user", "content": q}],
        responses=(good, bad),
        labels={"helpful": i % 2, "harmless": 0},
    )
    for i, (q, good, bad) in enumerate(
        [
            ("How do I bake bread?", "Mix flour, water, salt and yeast.", "No."),
            ("Is the response safe?", "Yes, it is.", "I cannot help with that request."),
            ("The capital of France is", "Paris.", "Drink water and sleep well."),
            ("Answer with Yes or No.", "Yes", "No, it is not."),
        ]
    )
]


def _render(tok: Any) -> Any:
    return lambda p: tok.apply_chat_template(p.prompt, tokenize=False, add_generation_prompt=True)


def test_tokenize_and_collate_mask_exactly_the_response_tokens(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    cfg = ARMTrainingConfig(max_length=64, max_prompt_length=32)
    pairs = tokenize_pairs(PAIRS, _render(tok), tok, ("helpful", "harmless"), cfg)
    batch = collate_pairs(tok.pad_token_id)(pairs)
    assert batch["input_ids"].shape[0] == 2 * len(PAIRS)
    for b, pair in enumerate(pairs):
        for j, response in enumerate(pair.response_ids):
            row = 2 * b + j
            assert response[-1] == tok.eos_token_id  # EOS appended (METHODS §2)
            masked = batch["input_ids"][row][batch["loss_mask"][row]].tolist()
            assert masked == response
            n = len(pair.prompt_ids) + len(response)
            assert batch["attention_mask"][row].sum() == n
    assert batch["labels"].tolist() == [[i % 2, 0] for i in range(len(PAIRS))]


def test_sequence_logprobs_equal_a_direct_sum(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    model = build_llama(tok)
    cfg = ARMTrainingConfig(max_length=64, max_prompt_length=32)
    pairs = tokenize_pairs(PAIRS, _render(tok), tok, ("helpful",), cfg)
    batch = collate_pairs(tok.pad_token_id)(pairs)
    with torch.no_grad():
        got = sequence_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        )
    for b, pair in enumerate(pairs):
        for j, response in enumerate(pair.response_ids):
            ids = pair.prompt_ids + response
            with torch.no_grad():
                logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            start = len(pair.prompt_ids)
            want = sum(float(logp[start - 1 + t, tok_id]) for t, tok_id in enumerate(response))
            assert float(got[2 * b + j]) == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_bradley_terry_loss_by_hand() -> None:
    logps = torch.tensor([[-3.0, -5.0], [-4.0, -1.0], [-2.0, -2.5]])
    winners = torch.tensor([0, 0, -1])  # last pair has no label for this objective
    loss, n = bradley_terry_loss(logps, winners, beta_r=0.5)
    want = (-F.logsigmoid(torch.tensor(0.5 * 2.0)) - F.logsigmoid(torch.tensor(0.5 * -3.0))) / 2
    assert int(n) == 2
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    # the winner index picks the column: flipping it flips the sign inside the sigmoid
    flipped, _ = bradley_terry_loss(logps[:1], torch.tensor([1]), beta_r=0.5)
    assert float(flipped) == pytest.approx(float(-F.logsigmoid(torch.tensor(-1.0))), rel=1e-6)
    # no labelled pair: zero loss that still has a graph
    empty, n0 = bradley_terry_loss(logps.requires_grad_(), torch.tensor([-1, -1, -1]), 1.0)
    assert int(n0) == 0 and float(empty) == 0.0 and empty.requires_grad


def test_encode_prompt_adds_bos_once(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    assert encode_prompt(tok, "Yes") == tok("Yes", add_special_tokens=False)["input_ids"]
    tok_bos = build_bos_tokenizer(tok)
    ids = encode_prompt(tok_bos, "Yes")
    assert (
        ids[0] == tok_bos.bos_token_id
        and ids[1:] == tok("Yes", add_special_tokens=False)["input_ids"]
    )
    # a template that already starts with BOS does not get a second one
    assert encode_prompt(tok_bos, "<|im_start|>Yes").count(tok_bos.bos_token_id) == 1


def build_bos_tokenizer(tok: Any) -> Any:
    import copy

    other = copy.deepcopy(tok)
    other.add_bos_token = True
    return other


def test_training_lowers_the_arm_loss(tiny_tokenizer: Any, tmp_path: Any) -> None:
    from peft import LoraConfig, get_peft_model

    tok = tiny_tokenizer
    model = get_peft_model(
        build_llama(tok),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]),
    )
    cfg = ARMTrainingConfig(
        max_steps=8,
        per_device_batch_size=4,
        gradient_accumulation_steps=1,
        warmup_steps=0,
        learning_rate=5e-3,
        max_length=64,
        max_prompt_length=32,
    )
    pairs = tokenize_pairs(PAIRS, _render(tok), tok, ("helpful",), cfg)

    def pair_loss(m: Any, batch: dict[str, torch.Tensor], step: int) -> Any:
        logps = sequence_logprobs(
            m, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        ).view(-1, 2)
        loss, _ = bradley_terry_loss(logps, batch["labels"][:, 0], beta_r=0.5)
        return loss, {}

    result = train_pairs(
        model,
        pairs,
        pair_loss,
        cfg,
        pad_token_id=tok.pad_token_id,
        bf16=False,
        output_dir=str(tmp_path),
    )
    assert result.steps == 8 and len(result.losses) == 8
    assert result.last_loss < result.first_loss
