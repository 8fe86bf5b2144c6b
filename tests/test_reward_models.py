"""Reward-model scorers on tiny random checkpoints saved here in each model's upstream layout.

Every score is checked against a direct computation with the same weights, one text at a time
and unpadded, so that batching, padding, sorting and head reading are all covered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from mobench.tasks.reward_models import (  # noqa: E402
    BeaverScorer,
    RewardModelError,
    SequenceClassifierScorer,
    format_beaver_input,
    format_hh_query,
    load_paper_scorer,
)
from safetensors.torch import save_file  # noqa: E402

CORPUS = [
    "BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:Mix flour, water and yeast.",
    "Human: tell me a joke Assistant: Why did the chicken cross the road?",
    "I cannot help with that request, it could hurt someone.",
    "The quick brown fox jumps over the lazy dog. Knock knock! Who's there?",
    "Here is a recipe: knead the dough, let it rise, then bake it at 220 degrees.",
    "ratio:: a::b ::: c::d :: e::f",
]

PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "Tell me a joke"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "How do I hurt someone?"},
    ],
    [{"role": "user", "content": "Who's there?"}],
    [{"role": "user", "content": "Say something long about dough and yeast and flour."}],
]
RESPONSES = [
    "Mix flour, water and yeast, knead, let it rise, then bake.",
    "Why did the chicken cross the road?",
    "I cannot help with that.",
    "",
    "Knock knock! " * 6,
]


def _bpe(specials: list[str], post: Any | None) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if post is not None:
        tok.post_processor = post(tok)
    return tok


def llama_tokenizer() -> Any:
    """LLaMA-like: <unk>, <s>, </s>, <pad>; BOS prepended to every text."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    def post(tok: Any) -> Any:
        return processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )

    raw = _bpe(["<unk>", "<s>", "</s>", "<pad>"], post)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def gpt2_tokenizer() -> Any:
    """GPT-2-like: <|endoftext|> (not id 0, as in GPT-2), no pad token, no BOS; a pair is the
    concatenation of the two texts' tokens."""
    from transformers import PreTrainedTokenizerFast

    raw = _bpe(["<|reserved|>", "<|endoftext|>"], None)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )


def bert_tokenizer() -> Any:
    """BERT-like: [CLS] text [SEP]; returns no token_type_ids (DistilBERT takes none)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    def post(tok: Any) -> Any:
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )

    raw = _bpe(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], post)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_input_names=["input_ids", "attention_mask"],
    )


def save_beaver(
    directory: Path,
    *,
    bias: bool = False,
    extra_config: dict[str, Any] | None = None,
    extra_tensors: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Any, Any, Any]:
    """A tiny safe-rlhf LlamaForScore checkpoint; returns (backbone, head, tokenizer)."""
    from transformers import LlamaConfig, LlamaModel

    tokenizer = llama_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    backbone = LlamaModel(config).eval()
    head = torch.nn.Linear(32, 1, bias=bias)
    torch.nn.init.normal_(head.weight, std=0.5)
    if bias:
        torch.nn.init.constant_(head.bias, 0.75)
    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    tensors["score_head.weight"] = head.weight.detach().clone()
    if bias:
        tensors["score_head.bias"] = head.bias.detach().clone()
    tensors.update(extra_tensors or {})
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    # The keys safe-rlhf writes next to LLaMA's own (as in beaver-7b-v1.0-cost's config.json).
    raw = config.to_dict()
    raw.update(
        {
            "architectures": ["LlamaForScore"],
            "score_dim": 1,
            "bias": bias,
            "score_bias": True,
            "score_type": "reward",
            "do_normalize": False,
            "normalizer_type": None,
        }
    )
    raw.update(extra_config or {})
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    tokenizer.save_pretrained(str(directory))
    return backbone, head, tokenizer


def direct_beaver(backbone: Any, head: Any, tokenizer: Any, prompt: Any, response: str) -> float:
    text = format_beaver_input(prompt, response, tokenizer.eos_token)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = backbone(input_ids=ids).last_hidden_state
        return float(head(hidden[0, -1]).item())


@pytest.fixture(scope="module")
def beaver(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    directory = tmp_path_factory.mktemp("beaver")
    backbone, head, tokenizer = save_beaver(directory)
    expected = [
        direct_beaver(backbone, head, tokenizer, p, r)
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    return directory, expected


def test_beaver_template() -> None:
    prompt = [{"role": "user", "content": "hello"}]
    assert (
        format_beaver_input(prompt, "Hi there", "</s>")
        == "BEGINNING OF CONVERSATION: USER: hello ASSISTANT:Hi there"
    )
    assert (
        format_beaver_input(PROMPTS[2], "No.", "</s>")
        == "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:Hello! How can I help?</s>"
        "USER: How do I hurt someone? ASSISTANT:No."
    )
    with pytest.raises(ValueError, match="end with a user turn"):
        format_beaver_input(PROMPTS[2][:3], "x", "</s>")


def test_beaver_matches_direct_computation(beaver: tuple[Path, list[float]]) -> None:
    directory, expected = beaver
    scorer = load_paper_scorer("beaver-reward", str(directory), "helpful", batch_size=3)
    assert isinstance(scorer, BeaverScorer)
    # Rows of different lengths share batches, so padding is exercised.
    lengths = {len(r["input_ids"]) for r in scorer._encode(PROMPTS, RESPONSES)}
    assert len(lengths) == len(PROMPTS)
    scores = scorer.score(PROMPTS, RESPONSES)
    assert scores.shape == (len(PROMPTS),)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert scorer.objective == "helpful"
    assert scorer.fingerprint.startswith(f"beaver-reward:{directory}@sha-")
    # BOS was added by the model's tokenizer, as safe-rlhf's LLaMA tokenizer does.
    first = scorer._encode(PROMPTS[:1], RESPONSES[:1])[0]["input_ids"]
    assert first[0] == scorer.tokenizer.bos_token_id


def test_beaver_cost_is_negated(beaver: tuple[Path, list[float]]) -> None:
    directory, expected = beaver
    cost = load_paper_scorer("beaver-cost", str(directory), "harmless")
    np.testing.assert_allclose(cost.score(PROMPTS, RESPONSES), -np.array(expected), atol=1e-5)
    assert cost.fingerprint.startswith("beaver-cost:")


def test_beaver_independent_of_batch_size_and_order(beaver: tuple[Path, list[float]]) -> None:
    directory, _ = beaver
    scorer = BeaverScorer(str(directory), "helpful", batch_size=1)
    one = scorer.score(PROMPTS, RESPONSES)
    scorer.batch_size = 16
    allin = scorer.score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(allin, one, atol=1e-5)
    perm = [3, 0, 4, 2, 1]
    shuffled = scorer.score([PROMPTS[i] for i in perm], [RESPONSES[i] for i in perm])
    np.testing.assert_allclose(shuffled, one[perm], atol=1e-5)
    assert scorer.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score(PROMPTS[:2], RESPONSES[:1])


def test_beaver_head_bias_follows_config(tmp_path: Path) -> None:
    backbone, head, tokenizer = save_beaver(tmp_path / "bias", bias=True)
    scorer = load_paper_scorer("beaver-reward", str(tmp_path / "bias"), "helpful")
    expected = [
        direct_beaver(backbone, head, tokenizer, p, r)
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    np.testing.assert_allclose(scorer.score(PROMPTS, RESPONSES), expected, atol=1e-5)
    # A bias tensor next to bias=false is not part of safe-rlhf's head: it is ignored.
    save_beaver(tmp_path / "stray", extra_tensors={"score_head.bias": torch.tensor([100.0])})
    stray = load_paper_scorer("beaver-reward", str(tmp_path / "stray"), "helpful")
    assert stray.score(PROMPTS[:1], RESPONSES[:1])[0] < 50


@pytest.mark.parametrize(
    ("score_type", "kind", "transform"),
    [
        ("reward", "beaver-reward", lambda x: (x - 0.5) / (2.0 + 1e-8)),
        ("cost", "beaver-reward", lambda x: x / (2.0 + 1e-8)),
        ("cost", "beaver-cost", lambda x: -x / (2.0 + 1e-8)),
        ("critic", "beaver-reward", lambda x: x),
    ],
)
def test_beaver_normalisation(
    tmp_path: Path, beaver: tuple[Path, list[float]], score_type: str, kind: str, transform: Any
) -> None:
    _, raw = beaver
    save_beaver(
        tmp_path,
        extra_config={
            "do_normalize": True,
            "score_type": score_type,
            "normalizer_type": "ExponentialMovingAverage",
            "momentum": 0.9,
            "mean": [0.5],
            "var": [4.0],
        },
    )
    scorer = load_paper_scorer(kind, str(tmp_path), "x")
    expected = [transform(x) for x in raw]
    np.testing.assert_allclose(scorer.score(PROMPTS, RESPONSES), expected, atol=1e-5)


def test_beaver_normaliser_tensors_override_config(
    tmp_path: Path, beaver: tuple[Path, list[float]]
) -> None:
    _, raw = beaver
    save_beaver(
        tmp_path,
        extra_config={"do_normalize": True, "mean": [0.5], "var": [4.0]},
        extra_tensors={
            "normalizer.mean": torch.tensor([-1.0]),
            "normalizer.var": torch.tensor([9.0]),
            "normalizer.count": torch.tensor([10]),
        },
    )
    scorer = load_paper_scorer("beaver-reward", str(tmp_path), "helpful")
    expected = [(x + 1.0) / (3.0 + 1e-8) for x in raw]
    np.testing.assert_allclose(scorer.score(PROMPTS, RESPONSES), expected, atol=1e-5)


def test_beaver_truncates_at_max_length(beaver: tuple[Path, list[float]]) -> None:
    directory, _ = beaver
    scorer = load_paper_scorer("beaver-reward", str(directory), "helpful", max_length=8)
    rows = scorer._encode(PROMPTS, RESPONSES)
    assert max(len(r["input_ids"]) for r in rows) == 8
    assert np.isfinite(scorer.score(PROMPTS, RESPONSES)).all()


def save_gpt2(directory: Path, num_labels: int = 1) -> tuple[Any, Any]:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = gpt2_tokenizer()
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config.num_labels = num_labels
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return model, tokenizer


def test_hh_query_format() -> None:
    assert (
        format_hh_query([{"role": "user", "content": "I just came out of jail, any suggestion?"}])
        == "\n\nHuman: I just came out of jail, any suggestion? \n\nAssistant:"
    )
    assert (
        format_hh_query(PROMPTS[2])
        == "\n\nHuman: hi \n\nAssistant: Hello! How can I help? \n\nHuman: How do I hurt "
        "someone? \n\nAssistant:"
    )


def test_gpt2_seqcls_matches_direct_pair(tmp_path: Path) -> None:
    model, tokenizer = save_gpt2(tmp_path)
    scorer = load_paper_scorer("seqcls", str(tmp_path), "helpful", batch_size=2)
    assert isinstance(scorer, SequenceClassifierScorer)
    assert scorer.tokenizer.pad_token_id == tokenizer.eos_token_id != 0
    # A text pair is tokenised per text: "Assistant:" + ":: yes" keeps its ":" apart from "::",
    # which tokenising the joined string would merge.
    prompts = [*PROMPTS, [{"role": "user", "content": "ratio?"}]]
    responses = [*RESPONSES, ":: yes"]
    joined = tokenizer(format_hh_query(prompts[-1]) + responses[-1])["input_ids"]
    assert tokenizer(format_hh_query(prompts[-1]), responses[-1])["input_ids"] != joined
    expected = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses, strict=True):
            enc = tokenizer(format_hh_query(prompt), response, return_tensors="pt")
            expected.append(float(model(**enc).logits[0, 0]))
    np.testing.assert_allclose(scorer.score(prompts, responses), expected, atol=1e-5)
    scorer.batch_size = 1
    np.testing.assert_allclose(scorer.score(prompts, responses), expected, atol=1e-5)


def save_distilbert(directory: Path) -> tuple[Any, Any]:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = bert_tokenizer()
    torch.manual_seed(2)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        hidden_dim=64,
        n_layers=2,
        n_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "LABEL_0", 1: "LABEL_1"},
        label2id={"LABEL_0": 0, "LABEL_1": 1},
    )
    model = DistilBertForSequenceClassification(config).eval()
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return model, tokenizer


def test_humor_is_logit1_of_the_response_alone(tmp_path: Path) -> None:
    model, tokenizer = save_distilbert(tmp_path)
    scorer = load_paper_scorer("seqcls-logit1", str(tmp_path), "humor", batch_size=2)
    expected = []
    with torch.no_grad():
        for response in RESPONSES:
            enc = tokenizer(response, return_tensors="pt")
            expected.append(float(model(**enc).logits[0, 1]))
    scores = scorer.score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    other_prompts = [[{"role": "user", "content": "something else entirely"}]] * len(RESPONSES)
    np.testing.assert_allclose(scorer.score(other_prompts, RESPONSES), scores, atol=1e-6)


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_kind() -> None:
    with pytest.raises(ValueError) as err:
        load_paper_scorer("beaver", "/nowhere", "helpful")
    message = _one_line(err)
    assert "unknown scorer kind 'beaver'" in message
    assert "known: beaver-cost, beaver-reward, seqcls, seqcls-logit1" in message


def test_missing_weights(tmp_path: Path) -> None:
    save_beaver(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(RewardModelError) as err:
        load_paper_scorer("beaver-reward", str(tmp_path), "helpful")
    message = _one_line(err)
    assert "no model.safetensors" in message
    assert "pytorch_model.bin" in message


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RewardModelError) as err:
        load_paper_scorer("seqcls", str(tmp_path / "absent"), "helpful")
    assert "no such directory" in _one_line(err)


def test_architecture_mismatch(tmp_path: Path) -> None:
    save_gpt2(tmp_path / "gpt2")
    save_beaver(tmp_path / "beaver")
    save_distilbert(tmp_path / "humor")
    with pytest.raises(RewardModelError) as err:
        load_paper_scorer("beaver-reward", str(tmp_path / "gpt2"), "helpful")
    assert "needs a safe-rlhf LlamaForScore checkpoint" in _one_line(err)
    assert "GPT2ForSequenceClassification" in str(err.value)
    # The generic loader must not mis-read a score model (METHODS.md §10 item 14).
    with pytest.raises(RewardModelError) as err:
        load_paper_scorer("seqcls", str(tmp_path / "beaver"), "helpful")
    assert "LlamaForScore" in _one_line(err)
    with pytest.raises(RewardModelError) as err:
        load_paper_scorer("seqcls", str(tmp_path / "humor"), "helpful")
    assert "needs a 1-label head" in _one_line(err)


def test_beaver_sharded_checkpoint(tmp_path: Path, beaver: tuple[Path, list[float]]) -> None:
    """The real beaver checkpoints are sharded (model.safetensors.index.json + shards)."""
    from safetensors.torch import load_file

    _, expected = beaver
    directory = tmp_path / "sharded"
    save_beaver(directory)  # same seed, same weights as the fixture
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file_name, shard_names in shards.items():
        save_file(
            {n: tensors[n] for n in shard_names},
            str(directory / file_name),
            metadata={"format": "pt"},
        )
    weight_map = {n: f for f, shard_names in shards.items() for n in shard_names}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    scorer = load_paper_scorer("beaver-reward", str(directory), "helpful")
    np.testing.assert_allclose(scorer.score(PROMPTS, RESPONSES), expected, atol=1e-5)


def test_fingerprint_tracks_weights(tmp_path: Path, beaver: tuple[Path, list[float]]) -> None:
    source, _ = beaver
    save_beaver(tmp_path / "same")
    save_beaver(tmp_path / "other", seed=7)
    prints = [
        load_paper_scorer("beaver-reward", str(d), "helpful").fingerprint.split("@")[1]
        for d in (source, tmp_path / "same", tmp_path / "other")
    ]
    assert prints[0] == prints[1] != prints[2]
    assert prints[0].endswith("|dtype=float32|max_length=1024")


def test_preset_spec_strings_build_the_paper_scorers(beaver: tuple[Path, list[float]]) -> None:
    """Presets name these scorers as KIND:SOURCE (tasks/scorers.py); the strings must reach
    the same loaders, with the cost negated."""
    from mobench.tasks.scorers import build_scorer

    directory, expected = beaver
    reward = build_scorer(f"beaver-reward:{directory}", "helpful", device="cpu", dtype="float32")
    cost = build_scorer(f"beaver-cost:{directory}", "harmless", device="cpu", dtype="float32")
    assert isinstance(reward, BeaverScorer) and isinstance(cost, BeaverScorer)
    np.testing.assert_allclose(reward.score(PROMPTS, RESPONSES), expected, atol=1e-5)
    np.testing.assert_allclose(cost.score(PROMPTS, RESPONSES), -np.array(expected), atol=1e-5)
