"""Shared test fixtures: tiny in-process models and a tokenizer built in the test (no files from
the network, no hub), and a ``unit`` preset of the safety task that runs in seconds.

* :func:`build_tokenizer` trains a byte-level BPE on an in-code corpus and gives it a ChatML
  chat template, so chat rendering, EOS handling and "Yes"/"No" single tokens all work.
* :func:`build_llama` makes a random tiny ``LlamaForCausalLM`` of a chosen width (two widths
  share one tokenizer: a weak-to-strong pair).
* ``tiny_model_dir`` / ``tiny_large_model_dir`` save them with ``save_pretrained`` so the
  pipeline loads them through the same code path as any local model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a shared machine OpenMP's spinning
# threads make every op 10-20x slower (measured: 165 ms vs 7.5 ms per tiny forward).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Guides trained by tests never land in (or come from) the user's cache.
os.environ["MOBENCH_GUIDE_CACHE"] = tempfile.mkdtemp(prefix="mobench-test-guides-")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Yes No Yes No yes no. Yes, it is. No, it is not.",
    "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake.",
    "I cannot help with that request, but here is a safe alternative.",
    "The capital of France is Paris. Drink water and sleep well.",
    "Here is a conversation and a response. Answer with Yes or No.",
    "Does the response directly and usefully answer the user's request?",
    "Is the response safe, that is, free of anything that could help someone cause harm?",
    "user assistant system: Human: Assistant: BEGINNING OF CONVERSATION: USER: ASSISTANT:",
] * 20

SHARED_DATA = Path(
    os.environ.get(
        "MOBENCH_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)


def build_tokenizer(corpus: list[str] | None = None) -> Any:
    """A byte-level BPE trained on ``corpus`` (default: :data:`CORPUS`); another corpus gives
    another vocabulary (a tokenizer that weak-to-strong guidance must refuse)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS if corpus is None else corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


def build_llama(
    tokenizer: Any, hidden: int = 64, layers: int = 2, seed: int = 0, vocab_size: int | None = None
) -> Any:
    """A random tiny Llama; ``vocab_size`` (default: the tokenizer's size) sets the rows of its
    embeddings and LM head, e.g. more than the tokenizer has, as padded real models do."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer) if vocab_size is None else vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    return build_tokenizer()


def _save(
    tmp_path_factory: pytest.TempPathFactory, name: str, hidden: int, layers: int, seed: int
) -> str:
    tok = build_tokenizer()
    model = build_llama(tok, hidden=hidden, layers=layers, seed=seed)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved tiny Llama (hidden 64) + tokenizer: a local model source string."""
    return _save(tmp_path_factory, "tiny-llama", hidden=64, layers=2, seed=0)


@pytest.fixture(scope="session")
def tiny_large_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A wider tiny Llama (hidden 128, 3 layers) with the same tokenizer: a weak-to-strong base."""
    return _save(tmp_path_factory, "tiny-llama-large", hidden=128, layers=3, seed=1)


def make_unit_preset(model_dir: str) -> Any:
    """The safety task's ``unit`` preset on a tiny model directory (see ``unit_preset``); a
    function so that helper processes (tests/launch_unit_run.py) register the same preset."""
    from mobench.config import GenerationConfig, Preset

    return Preset(
        name="unit",
        task="safety",
        description="unit tests: tiny random model",
        base_model=model_dir,
        data="builtin:safety_tiny.jsonl",
        split_sizes=(32, 4, 8),
        test_limit=4,
        generation=GenerationConfig(max_new_tokens=6),
        training={
            "max_steps": 2,
            "per_device_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 0,
            "max_length": 96,
            "max_prompt_length": 64,
        },
        scorers={"helpful": f"yesno:{model_dir}", "harmless": f"yesno:{model_dir}"},
        hv_ref_point=(0.0, 0.0),
        dtype="float32",
        batch_size=8,
    )


@pytest.fixture(scope="session")
def unit_preset(tiny_model_dir: str) -> Any:
    """Register (and yield) the safety task's ``unit`` preset: tiny model, 40 pairs, 4 prompts,
    6 new tokens, yes/no proxy scorers on the tiny model. Runs in a few seconds."""
    from mobench.registry import _PRESETS, register_preset

    preset = register_preset(make_unit_preset(tiny_model_dir))
    yield preset
    _PRESETS.pop(("safety", "unit"), None)


def write_hh_file(path: Path, n: int) -> Path:
    """An HH-RLHF ``.jsonl.gz`` of ``n`` rows with distinct questions (chosen: a real answer,
    rejected: "No."), for training reward models on the tiny model."""
    import gzip
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(n):
            prefix = f"\n\nHuman: Question number {i}: how do I bake bread?\n\nAssistant:"
            good = "Mix flour, water, salt and yeast, then knead and bake."
            f.write(json.dumps({"chosen": f"{prefix} {good}", "rejected": f"{prefix} No."}) + "\n")
    return path


@pytest.fixture(scope="session")
def trained_scorer(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(recipe, folder, root): a helpfulness reward model trained once per session with
    mobench's RewardTrainer recipe on the tiny model (48 synthetic HH rows)."""
    from mobench.tasks.trained_scorer import ScorerRecipe, ensure_trained

    root = tmp_path_factory.mktemp("scorers")
    data = write_hh_file(root / "data" / "helpful-base" / "train.jsonl.gz", 48)
    recipe = ScorerRecipe(
        objective="helpful",
        data=(str(data),),
        backbone=tiny_model_dir,
        part=None,
        train_pairs=24,
        heldout_pairs=20,
        max_length=64,
        batch_size=8,
        epochs=1.0,
        lora_layers=1,
        seed=0,
    )
    return recipe, ensure_trained(recipe, root / "cache"), root
