"""MOD-w2s guidance and weak-to-strong runs: a small guide steering a larger base that shares its
tokenizer (tiny in-process models, fp32)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mobench.config import GenerationConfig
from mobench.decoding import guided_generate
from mobench.interfaces import FusedGuide
from mobench.models import ModelError, shared_vocab_size
from tests.conftest import CORPUS, build_llama, build_tokenizer

PROMPTS = ["How do I bake bread?", "Is the response safe?", "The capital of France is"]
OBJECTIVES = ["helpful", "harmless"]


def _encode(tok: Any, texts: list[str]) -> list[list[int]]:
    rendered = [
        tok.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]
    return [tok(r, add_special_tokens=False)["input_ids"] for r in rendered]


def _logprobs(model: Any, ids: list[int], vocab: int) -> torch.Tensor:
    """log-softmax over the first ``vocab`` logits of a full (uncached) forward, per position."""
    return model(torch.tensor([ids])).logits[0, :, :vocab].float().log_softmax(-1)


@pytest.fixture(scope="module")
def w2s(tiny_tokenizer: Any) -> dict[str, Any]:
    """A large base, two random LoRA policies on a small backbone, and the small reference."""
    from mobench.methods.mod_w2s import lane_weights
    from peft import LoraConfig, get_peft_model

    from mobench.engine import GuideSpec, Lane, LoRA, SeparateModels

    tok = tiny_tokenizer
    base = build_llama(tok, hidden=128, layers=3, seed=1)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    policies = get_peft_model(build_llama(tok), config, adapter_name="helpful")
    policies.add_adapter("harmless", config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in policies.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
    policies.eval()
    reference = build_llama(tok)  # the small model without adapter: same seed, separate object
    # one copy per policy lane, each with its own adapter active (the separate-models path)
    lanes = [copy.deepcopy(policies) for _ in OBJECTIVES]
    for lane, name in zip(lanes, OBJECTIVES, strict=True):
        lane.set_adapter(name)
    spec = GuideSpec((Lane(), *(Lane(LoRA(Path(), n)) for n in OBJECTIVES)), lane_weights)
    guide = SeparateModels([reference, *lanes], spec, len(tok), tok.pad_token_id)
    return {"tok": tok, "base": base, "policies": policies, "guide": guide}


def _by_hand(
    w2s: dict[str, Any], seq: list[int]
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """log pi_L, [log pi_i^S], log pi_ref^S per position of ``seq``; the reference is computed
    independently of the guide's copy: the policies' own backbone with the adapters disabled."""
    vocab, policies = len(w2s["tok"]), w2s["policies"]
    base_lp = _logprobs(w2s["base"], seq, vocab)
    policy_lps = []
    for name in OBJECTIVES:
        policies.set_adapter(name)
        policy_lps.append(_logprobs(policies, seq, vocab))
    with policies.disable_adapter():
        ref_lp = _logprobs(policies, seq, vocab)
    return base_lp, policy_lps, ref_lp


def test_guidance_equals_the_formula_by_hand(w2s: dict[str, Any]) -> None:
    """guide = sum_i alpha_i (log pi_i - log pi_ref) at prefill and after a cached step; with a
    one-hot alpha it is log pi_i - log pi_ref of that objective alone."""
    tok, guide = w2s["tok"], w2s["guide"]
    prompts = _encode(tok, PROMPTS)
    alphas = torch.tensor([[0.0, 1.0], [0.3, 0.7], [1.0, 0.0]])
    g0 = guide.prefill(prompts, alphas)
    nxt = torch.tensor([5, 17, 42])
    g1 = guide.step(nxt)
    for row, ids in enumerate(prompts):
        _, (help_lp, harm_lp), ref_lp = _by_hand(w2s, [*ids, int(nxt[row])])
        for pos, got in ((-2, g0[row]), (-1, g1[row])):
            want = alphas[row, 0] * (help_lp[pos] - ref_lp[pos]) + alphas[row, 1] * (
                harm_lp[pos] - ref_lp[pos]
            )
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # one-hot rows: exactly one policy's log-ratio (rows 0 and 2 are (0, 1) and (1, 0))
    _, (help_lp, harm_lp), ref_lp = _by_hand(w2s, prompts[0])
    torch.testing.assert_close(g0[0], harm_lp[-1] - ref_lp[-1], atol=1e-4, rtol=1e-4)
    _, (help_lp, harm_lp), ref_lp = _by_hand(w2s, prompts[2])
    torch.testing.assert_close(g0[2], help_lp[-1] - ref_lp[-1], atol=1e-4, rtol=1e-4)
    # the policies really differ from the reference and from each other
    assert (help_lp[-1] - ref_lp[-1]).abs().max() > 0.1
    assert (help_lp[-1] - harm_lp[-1]).abs().max() > 0.1


def test_guided_tokens_are_argmax_of_base_plus_log_ratios(w2s: dict[str, Any]) -> None:
    """Decoding the large base with the small guide picks, at every step, the argmax of
    log pi_L + sum_i alpha_i (log pi_i^S - log pi_ref^S) recomputed from full forwards; one-hot
    rows reduce to log pi_L + log pi_i^S - log pi_ref^S."""
    tok = w2s["tok"]
    grid = [(0.25, 0.75), (1.0, 0.0), (0.0, 1.0)]
    encoded = _encode(tok, PROMPTS[:2])
    rows = [(ids, a) for ids in encoded for a in grid]
    prompts = [ids for ids, _ in rows]
    alphas = torch.tensor([a for _, a in rows])
    decode = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_ids={tok.eos_token_id}
    )
    out = guided_generate(
        w2s["base"], w2s["guide"], prompts, alphas, GenerationConfig(max_new_tokens=5), **decode
    )
    assert out.forwards == {"base": out.steps, "guide": 3 * out.steps}
    for row, (ids, (a_help, a_harm)) in enumerate(rows):
        seq = ids + out.tokens[row]
        base_lp, (help_lp, harm_lp), ref_lp = _by_hand(w2s, seq)
        combined = base_lp + a_help * (help_lp - ref_lp) + a_harm * (harm_lp - ref_lp)
        for t, token in enumerate(out.tokens[row]):
            assert int(combined[len(ids) - 1 + t].argmax()) == token, f"row {row}, step {t}"
    # the guide changes what the base alone would say
    plain = guided_generate(
        w2s["base"], None, prompts, alphas, GenerationConfig(max_new_tokens=5), **decode
    )
    assert plain.tokens != out.tokens


def test_dpo_rows_choose_each_objectives_preferred_response() -> None:
    from mobench.methods.dpo_policies import dpo_rows

    from mobench.training import TokenizedPair

    pairs = [
        TokenizedPair([1], ([10], [20]), [0, 1]),
        TokenizedPair([2], ([30], [40]), [1, -1]),  # no harmless label: left out for harmless
    ]
    assert dpo_rows(pairs, 0) == [
        {"prompt_ids": [1], "chosen_ids": [10], "rejected_ids": [20]},
        {"prompt_ids": [2], "chosen_ids": [40], "rejected_ids": [30]},
    ]
    assert dpo_rows(pairs, 1) == [{"prompt_ids": [1], "chosen_ids": [20], "rejected_ids": [10]}]


def test_dpo_training_raises_the_chosen_log_ratio(tiny_tokenizer: Any, tmp_path: Path) -> None:
    """trl's DPO on mobench-tokenized rows moves the policy toward the chosen responses relative
    to the adapter-free reference (the implicit reward margin grows from 0)."""
    from mobench.methods.dpo_policies import DPOPolicyConfig, dpo_rows, train_dpo_policy

    from mobench.data import PreferencePair
    from mobench.training import collate_pairs, sequence_logprobs, tokenize_pairs

    tok = tiny_tokenizer
    pairs = [
        PreferencePair(
            id=str(i),
            prompt=[{"role": "user", "content": p}],
            responses=("Yes, it is.", "No, it is not."),
            labels={"helpful": 1, "harmless": 0},
        )
        for i, p in enumerate(PROMPTS * 3)
    ]
    cfg = DPOPolicyConfig(
        max_steps=4,
        per_device_batch_size=3,
        gradient_accumulation_steps=1,
        warmup_steps=0,
        learning_rate=5e-2,
        lora_r=4,
        lora_alpha=8,
        max_length=64,
        max_prompt_length=48,
    )
    render = lambda p: tok.apply_chat_template(p.prompt, tokenize=False, add_generation_prompt=True)  # noqa: E731
    tokenized = tokenize_pairs(pairs, render, tok, OBJECTIVES, cfg)
    policy, result = train_dpo_policy(
        build_llama(tok), tok, dpo_rows(tokenized, 0), cfg, bf16=False, output_dir=str(tmp_path)
    )
    assert result.steps == 4 and len(result.losses) == 4
    batch = collate_pairs(tok.pad_token_id)(tokenized)
    args = (batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    policy.eval()
    with torch.no_grad():
        trained = sequence_logprobs(policy, *args).view(-1, 2)
        with policy.disable_adapter():
            reference = sequence_logprobs(policy, *args).view(-1, 2)
    ratio = trained - reference  # helpful prefers response 1 in every pair
    assert (ratio[:, 1] - ratio[:, 0]).mean() > 0.1


def test_tiny_preset_training_overrides_reach_the_dpo_config() -> None:
    from mobench.registry import get_preset
    from mobench.resolve import resolve_spec

    spec = resolve_spec("safety", "mod_w2s", "tiny")
    for key, value in get_preset("safety", "tiny").training.items():
        assert spec.method_config[key] == value, key
    assert spec.method_config["dpo_beta"] == 0.1 and spec.method_config["lora_r"] == 64


# --------------------------------------------------------------------- tokenizers, vocabulary


def test_mismatched_tokenizers_are_refused_naming_both_models() -> None:
    base = build_tokenizer()
    other = build_tokenizer([s[::-1] for s in CORPUS])  # another corpus: other merges, other ids
    with pytest.raises(ModelError) as err:
        shared_vocab_size(base, other, ("big-base", "small-guide"))
    message = str(err.value)
    assert "big-base" in message and "small-guide" in message and "--guide-model" in message


def test_a_tokenizer_with_extra_trailing_tokens_shares_the_common_range() -> None:
    base = build_tokenizer()
    guide = build_tokenizer()
    guide.add_tokens(["<extra_a>", "<extra_b>"])
    assert shared_vocab_size(base, guide, ("base", "guide")) == len(base) == len(guide) - 2


def test_eos_ids_outside_the_shared_vocabulary_are_refused(tiny_tokenizer: Any) -> None:
    from mobench.models import eos_ids

    model = build_llama(tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    assert eos_ids(tiny_tokenizer, model, len(tiny_tokenizer)) == {eos}
    with pytest.raises(ModelError, match="EOS"):
        eos_ids(tiny_tokenizer, model, eos)  # ids 0..eos-1 only: no response could end


def _save(model: Any, tok: Any, path: Path) -> str:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_logits_are_restricted_to_the_shared_vocabulary(
    unit_preset: Any, tiny_model_dir: str, tmp_path: Path
) -> None:
    """A base whose LM head is padded past its tokenizer decodes over the tokenizer's ids only; a
    guide whose head cannot score every shared id is refused."""

    from mobench.decoding import CausalLMStepper
    from mobench.models import load_models, logit_rows
    from mobench.resolve import resolve_spec

    tok = build_tokenizer()
    padded = _save(build_llama(tok, hidden=128, vocab_size=len(tok) + 8), tok, tmp_path / "padded")
    spec = resolve_spec("safety", "mod_w2s", "unit", base_model=padded, guide_model=tiny_model_dir)
    models = load_models(spec)
    assert logit_rows(models.base) == len(tok) + 8
    assert models.vocab_size == len(tok)
    logprobs = CausalLMStepper(models.base, models.vocab_size, tok.pad_token_id).prefill(
        [[5, 6, 7]]
    )
    assert logprobs.shape == (1, len(tok))
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(1))  # normalised over V only

    short = _save(build_llama(tok, vocab_size=len(tok) - 8), tok, tmp_path / "short")
    spec = resolve_spec("safety", "mod_w2s", "unit", guide_model=short)
    with pytest.raises(ModelError, match="output logits"):
        load_models(spec).load_guide_backbone()


def test_cli_refuses_a_guide_with_another_tokenizer_before_training(
    unit_preset: Any, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from mobench.cli import app

    other_tok = build_tokenizer([s[::-1] for s in CORPUS])
    other = _save(build_llama(other_tok), other_tok, tmp_path / "other-family")
    run_dir = tmp_path / "run"
    args = ["run", "--method", "mod_w2s", "--task", "safety", "--preset", "unit"]
    result = CliRunner().invoke(app, [*args, "--guide-model", other, "--out", str(run_dir)])
    assert result.exit_code == 2
    assert unit_preset.base_model in result.output and other in result.output
    assert "--guide-model" in result.output  # the fix
    assert not (run_dir / "guide").exists()  # refused before any training


def test_render_precedence_preset_template_then_chat_template_then_task_default(
    tiny_tokenizer: Any,
) -> None:
    from mobench.tasks.safety import SAFE_RLHF_TEMPLATE, SafetyTask

    task = SafetyTask()
    prompt = [{"role": "user", "content": "Hi?"}]
    assert (
        task.render(prompt, tiny_tokenizer)
        == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert task.render(prompt, tiny_tokenizer, "Q: {prompt}\nA:") == "Q: Hi?\nA:"
    plain = build_tokenizer()
    plain.chat_template = None
    assert task.render(prompt, plain) == SAFE_RLHF_TEMPLATE.format(prompt="Hi?")


def test_which_backbone_the_guide_is_trained_on(unit_preset: Any) -> None:
    """--guide-model wins, then the preset's guide_model, else the guide follows the base."""
    from mobench.resolve import resolve_spec

    def guide_of(preset_guide: str | None = None, **kw: str) -> tuple[str, str]:
        overrides = {"preset": {"guide_model": preset_guide}} if preset_guide else {}
        spec = resolve_spec("safety", "mod_w2s", "unit", overrides=overrides, identify=False, **kw)
        return spec.base_model, spec.guide_model

    default = unit_preset.base_model
    assert guide_of() == (default, default)
    assert guide_of(base_model="big") == ("big", "big")
    assert guide_of(base_model="big", guide_model="small") == ("big", "small")
    assert guide_of("small", base_model="big") == ("big", "small")
    assert guide_of("small", base_model="big", guide_model="other") == ("big", "other")


# ------------------------------------------------------------------ weak-to-strong pipeline

GUIDE_TEMPLATE = "GUIDE PROMPT: {prompt} ->"


@pytest.fixture
def render_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every prompt the task renders, as (tokenizer's model path, text)."""
    from mobench.tasks.safety import SafetyTask

    calls: list[tuple[str, str]] = []
    original = SafetyTask.render

    def spy(self: Any, prompt: Any, tokenizer: Any, template: str | None = None) -> str:
        text = original(self, prompt, tokenizer, template)
        calls.append((str(tokenizer.name_or_path), text))
        return text

    monkeypatch.setattr(SafetyTask, "render", spy)
    return calls


@pytest.mark.parametrize(
    ("method", "guide_rows"), [("genarm", 2), ("mod_w2s", 3), ("parm", 1), ("uniarm", 1)]
)
def test_weak_to_strong_pipeline_run(
    method: str,
    guide_rows: int,
    unit_preset: Any,
    tiny_model_dir: str,
    tiny_large_model_dir: str,
    tmp_path: Path,
    render_calls: list[tuple[str, str]],
) -> None:
    """The small model's guide, trained on it, steers the large base end to end; each model sees
    prompts in its own template (the guide: the preset's template for it, in training and
    decoding; the base: its tokenizer's chat template); timing.json counts the forwards."""
    from mobench.pipeline import execute_run
    from mobench.resolve import resolve_spec

    spec = resolve_spec(
        "safety",
        method,
        "unit",
        base_model=tiny_large_model_dir,
        guide_model=tiny_model_dir,
        limit=2,
        overrides={"preset": {"templates": {tiny_model_dir: GUIDE_TEMPLATE}}},
    )
    result = execute_run(spec, tmp_path / "run", batch_size=22)
    run = result.run_dir
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert result.metrics["hv"] >= 0 and "mip" in result.metrics
    timing = json.loads((run / "timing.json").read_text())["generate"]
    # the guide's models run as lanes of one forward of the small backbone (mobench.fused)
    assert timing["forwards_per_token"] == {"base": 1, "guide": 1}
    assert timing["guide_lanes"] == guide_rows and timing["fused_lanes"] == 0
    assert timing["forwards"]["guide"] == timing["forwards"]["base"] > 0
    assert timing["model_origins"]["base"]["location"] == tiny_large_model_dir
    assert timing["model_origins"]["guide"]["location"] == tiny_model_dir
    stored = json.loads((run / "guide" / "guide_config.json").read_text())
    assert stored["guide_model"] == tiny_model_dir
    if method in ("parm", "uniarm"):  # one preference-conditioned ARM for all objectives
        assert stored["training"]["steps"] == 2  # preset max_steps
    else:  # one model per objective
        assert [stored["training"][o]["steps"] for o in OBJECTIVES] == [2, 2]

    guide_texts = [text for source, text in render_calls if source == tiny_model_dir]
    base_texts = [text for source, text in render_calls if source == tiny_large_model_dir]
    assert len(guide_texts) >= len(spec.objectives) and base_texts
    assert all(t.startswith("GUIDE PROMPT: ") and t.endswith(" ->") for t in guide_texts)
    assert all(t.startswith("<|im_start|>user\n") for t in base_texts)


def test_a_guide_loads_only_onto_the_backbone_it_was_trained_on(
    tiny_model_dir: str, tiny_large_model_dir: str
) -> None:
    from mobench.methods.shared import check_guide_backbone

    from mobench.models import ModelContext

    def context(guide_source: str) -> ModelContext:
        return ModelContext(
            None, None, tiny_large_model_dir, None, guide_source, 1, "float32", "cpu"
        )

    check_guide_backbone(tiny_model_dir, context(tiny_model_dir), Path("guide"))
    check_guide_backbone(tiny_model_dir, context(f"{tiny_model_dir}/."), Path("guide"))
    with pytest.raises(ModelError, match="--guide-model"):
        check_guide_backbone(tiny_model_dir, context(tiny_large_model_dir), Path("guide"))


@pytest.mark.parametrize("fuse", [False, True], ids=["separate", "fused"])
def test_saved_policies_reload_and_same_backbone_is_plain_mod(
    w2s: dict[str, Any], tiny_model_dir: str, tmp_path: Path, fuse: bool
) -> None:
    """MODw2s.guide loads the saved adapters by objective name (stored order need not be the
    task's); when the guide backbone is the base, the base itself is the reference, and
    log pi_base + guide = sum_i alpha_i log pi_i on the simplex (plain MOD, METHODS §6.1)."""
    from mobench.methods.dpo_policies import GUIDE_CONFIG, DPOPolicyConfig
    from mobench.methods.mod_w2s import MODw2s
    from mobench.tasks.safety import SafetyTask

    from mobench.models import ModelContext

    tok, policies = w2s["tok"], w2s["policies"]
    policies.save_pretrained(str(tmp_path))  # one folder per adapter name
    stored = {
        "objectives": ["harmless", "helpful"],
        "guide_model": tiny_model_dir,
        "adapters": {"helpful": "helpful", "harmless": "harmless"},
    }
    (tmp_path / GUIDE_CONFIG).write_text(json.dumps(stored))
    base = build_llama(tok)  # the weights saved in tiny_model_dir (same seed)
    ids = _encode(tok, PROMPTS[:1])[0]
    alphas = torch.tensor([[0.3, 0.7]])
    with torch.no_grad():
        _, (help_lp, harm_lp), ref_lp = _by_hand(w2s, ids)
        base_lp = _logprobs(base, ids, len(tok))
    models = ModelContext(
        base, tok, tiny_model_dir, tok, tiny_model_dir, len(tok), "float32", "cpu", fuse=fuse
    )
    guide = MODw2s(DPOPolicyConfig()).guide(tmp_path, SafetyTask(), models)
    with torch.no_grad():
        if fuse:  # base, policies in one forward of the base's weights; the base lane = pi_ref
            assert isinstance(guide, FusedGuide) and guide.forwards_per_token == {"fused": 1}
            fused_base, guidance = guide.prefill([ids], [ids], alphas)
            torch.testing.assert_close(fused_base[0], base_lp[-1], atol=1e-4, rtol=1e-4)
            got = guidance[0]
        else:
            assert guide.models[0].stepper.model is base  # the base itself is pi_ref^S
            assert guide.forwards_per_token == {"guide": 3}
            got = guide.prefill([ids], alphas)[0]
    torch.testing.assert_close(
        got,
        0.3 * (help_lp[-1] - ref_lp[-1]) + 0.7 * (harm_lp[-1] - ref_lp[-1]),
        atol=1e-4,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        base_lp[-1] + got, 0.3 * help_lp[-1] + 0.7 * harm_lp[-1], atol=1e-4, rtol=1e-4
    )
