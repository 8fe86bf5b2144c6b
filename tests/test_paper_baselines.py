"""The UniARM table's other rows: Rewarded Soups (``rs``), MOD (``mod``) and preference prompting
(``prompt``), each against a direct computation on tiny in-process models (fp32)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mobench import decoding, pipeline
from mobench.config import ConfigError, GenerationConfig
from mobench.decoding import guided_generate
from mobench.engine import Conditioned, GuideSpec, Lane, LoRA, SeparateLanes
from mobench.fused import LoRAWeights, read_peft_lora
from mobench.registry import get_task
from mobench.resolve import describe_run, resolve_spec
from tests.conftest import build_llama

OBJECTIVES = ("helpful", "harmless")
TARGETS = ("q_proj", "v_proj", "down_proj")
ALPHAS = torch.tensor([[1.0, 0.0], [0.7, 0.3], [0.5, 0.5], [0.2, 0.8], [0.0, 1.0]])


def _random_loras(model: Any, ranks: tuple[int, ...], scalings: tuple[float, ...]) -> list[Any]:
    """One random LoRA per objective on ``TARGETS`` of every layer (non-zero A and B, different
    ranks and scales), as :class:`LoRAWeights`."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, (r, s) in enumerate(zip(ranks, scalings, strict=True)):
        modules = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rpartition(".")[2] in TARGETS:
                a = torch.randn(r, module.in_features, generator=gen) * 0.3
                b = torch.randn(module.out_features, r, generator=gen) * 0.3
                modules[name] = (a, b)
        out.append(LoRAWeights(name=OBJECTIVES[i], modules=modules, scaling=s))
    return out


def _with_delta(model: Any, deltas: dict[str, torch.Tensor]) -> Any:
    """A copy of ``model`` with ``W += delta`` on the named linear layers (a dense merge)."""
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for name, delta in deltas.items():
            merged.get_submodule(name).weight.add_(delta)
    return merged


def _soup_deltas(loras: list[Any], alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rewarded Soups by hand: sum_i alpha_i s_i B_i A_i per layer (full weights)."""
    deltas: dict[str, torch.Tensor] = {}
    for a_i, lora in zip(alpha.tolist(), loras, strict=True):
        for name, (a, b) in lora.modules.items():
            deltas[name] = deltas.get(name, 0) + a_i * lora.scaling * (b @ a)
    return deltas


def _factor_deltas(loras: list[Any], alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """The other reading: (sum_i alpha_i s_i B_i)(sum_i alpha_i A_i), the factors interpolated."""
    out = {}
    for name in loras[0].modules:
        b = sum(a_i * lora.scaling * lora.modules[name][1] for a_i, lora in zip(alpha, loras))
        a = sum(a_i * lora.modules[name][0] for a_i, lora in zip(alpha, loras))
        out[name] = b @ a
    return out


def _soup_model(model: Any, loras: list[Any]) -> Any:
    from mobench.methods.rs import install_interpolated_loras

    soup = copy.deepcopy(model)
    install_interpolated_loras(soup, loras)
    return soup


def test_rs_layer_is_the_interpolation_of_full_weights_not_of_the_factors(
    tiny_tokenizer: Any,
) -> None:
    model = build_llama(tiny_tokenizer).eval()
    loras = _random_loras(model, ranks=(4, 2), scalings=(2.0, 0.5))
    soup = _soup_model(model, loras)
    ids = torch.randint(5, len(tiny_tokenizer), (len(ALPHAS), 7), generator=torch.Generator())
    soup.preference_context.set(ALPHAS)
    with torch.no_grad():  # the decoding path (per-row weights cached per alpha change)
        fast = soup(ids).logits
    general = soup(ids).logits.detach()  # with gradients: the general path
    for row, alpha in enumerate(ALPHAS):
        with torch.no_grad():
            direct = _with_delta(model, _soup_deltas(loras, alpha))(ids[row : row + 1]).logits[0]
        torch.testing.assert_close(fast[row], direct, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(general[row], direct, atol=2e-5, rtol=1e-5)
    # with equal ranks the factors CAN be interpolated; that is another model for mixed alphas
    same_rank = _random_loras(model, ranks=(4, 4), scalings=(2.0, 2.0))
    soup = _soup_model(model, same_rank)
    mixed = ALPHAS[2]
    soup.preference_context.set(mixed[None])
    with torch.no_grad():
        ours = soup(ids[:1]).logits[0]
        factors = _with_delta(model, _factor_deltas(same_rank, mixed))(ids[:1]).logits[0]
        full = _with_delta(model, _soup_deltas(same_rank, mixed))(ids[:1]).logits[0]
    torch.testing.assert_close(ours, full, atol=2e-5, rtol=1e-5)
    assert (ours - factors).abs().max() > 1e-2


def _peft_policies(tiny_tokenizer: Any, model: Any, root: Path) -> tuple[Any, list[Path]]:
    """Two random peft LoRA policies on ``model`` (r 4, lora_alpha 8, q/v/down), saved as
    MOD's training saves them; returns (the peft model holding both, their folders)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), config, adapter_name=OBJECTIVES[0])
    peft_model.add_adapter(OBJECTIVES[1], config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    paths = []
    for name in OBJECTIVES:
        peft_model.set_adapter(name)
        peft_model.save_pretrained(root, selected_adapters=[name], safe_serialization=True)
        # peft saves a non-default adapter under a subfolder of its name
        folder = root / name if (root / name / "adapter_config.json").exists() else root
        paths.append(folder)
    return peft_model.eval(), paths


def test_rs_equals_peft_cat_weighted_adapter(tiny_tokenizer: Any, tmp_path: Path) -> None:
    """peft's ``add_weighted_adapter(combination_type="cat")`` concatenates the factors along
    the rank, which is the weighted sum of the full deltas: the same model as mobench's soup."""
    model = build_llama(tiny_tokenizer).eval()
    peft_model, paths = _peft_policies(tiny_tokenizer, model, tmp_path)
    soup = _soup_model(model, [read_peft_lora(p, n) for p, n in zip(paths, OBJECTIVES)])
    ids = torch.randint(5, len(tiny_tokenizer), (1, 9), generator=torch.Generator())
    for alpha in ([0.7, 0.3], [0.2, 0.8]):
        peft_model.add_weighted_adapter(
            list(OBJECTIVES), alpha, adapter_name="soup", combination_type="cat"
        )
        peft_model.set_adapter("soup")
        soup.preference_context.set(torch.tensor([alpha]))
        with torch.no_grad():
            torch.testing.assert_close(
                soup(ids).logits, peft_model(ids).logits, atol=2e-5, rtol=1e-5
            )
        peft_model.delete_adapter("soup")


def _greedy_by_hand(step: Any, prompt: list[int], tokens: int) -> list[int]:
    """Greedy decoding with full (uncached) forwards: ``step(ids) -> scores (V,)``."""
    seq = list(prompt)
    for _ in range(tokens):
        seq.append(int(step(torch.tensor([seq])).argmax()))
    return seq[len(prompt) :]


def _decode(guide: Any, model: Any, tok: Any, prompts: list[list[int]]) -> Any:
    return guided_generate(
        model,
        guide,
        prompts,
        ALPHAS,
        GenerationConfig(max_new_tokens=8),
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_ids=set(),
    )


def _prompts(tok: Any) -> list[list[int]]:
    texts = ["How do I bake bread?", "Is this safe?", "Tell me a joke", "Why?", "Hello there"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_mod_decodes_the_mod_repository_rule_and_replaces_the_base(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    """MOD's code: y_t = argmax_v sum_i w_i [logit_i(v) + C_i] over RAW logits of each policy
    (C_i, the running sequence score, is the same for every v); mobench decodes sum_i alpha_i
    log pi_i through the engine, its policies as lanes of one forward of the base weights."""
    from mobench.methods.mod import lane_weights

    tok = tiny_tokenizer
    model = build_llama(tok).eval()
    peft_model, paths = _peft_policies(tok, model, tmp_path)
    spec = GuideSpec(
        tuple(Lane(LoRA(p, n)) for p, n in zip(paths, OBJECTIVES)), lane_weights,
        replaces_base=True,
    )  # fmt: skip
    base = copy.deepcopy(model)
    guide = SeparateLanes(base, spec, len(tok), tok.pad_token_id)
    prompts = _prompts(tok)
    out = _decode(guide, base, tok, prompts)
    assert "base" not in out.forwards  # the base model is not run
    vocab = len(tok)

    for row, (prompt, alpha) in enumerate(zip(prompts, ALPHAS, strict=True)):

        def mod_rule(ids: torch.Tensor, alpha: torch.Tensor = alpha) -> torch.Tensor:
            total = torch.zeros(vocab)
            for w, name in zip(alpha.tolist(), OBJECTIVES, strict=True):
                peft_model.set_adapter(name)
                with torch.no_grad():
                    total += w * peft_model(ids).logits[0, -1, :vocab]
            return total

        assert out.tokens[row] == _greedy_by_hand(mod_rule, prompt, 8), f"row {row}"


def test_rs_decodes_each_rows_interpolated_policy(tiny_tokenizer: Any, tmp_path: Path) -> None:
    """The whole front in one batch (each row its alpha, KV caches, the engine) gives the
    tokens of greedy decoding with W0 + sum_i alpha_i s_i B_i A_i merged densely per row."""
    from mobench.methods.rs import install_interpolated_loras, lane_weights

    tok = tiny_tokenizer
    model = build_llama(tok).eval()
    _, paths = _peft_policies(tok, model, tmp_path)
    loras = [read_peft_lora(p, n) for p, n in zip(paths, OBJECTIVES)]

    def install(m: Any) -> None:
        install_interpolated_loras(m, loras)

    spec = GuideSpec((Lane(Conditioned(install, (0, 1))),), lane_weights, replaces_base=True)
    base = copy.deepcopy(model)
    out = _decode(SeparateLanes(base, spec, len(tok), tok.pad_token_id), base, tok, _prompts(tok))
    assert "base" not in out.forwards and out.forwards["guide"] > 0  # no base forward
    for row, (prompt, alpha) in enumerate(zip(_prompts(tok), ALPHAS, strict=True)):
        merged = _with_delta(model, _soup_deltas(loras, alpha))

        def step(ids: torch.Tensor, merged: Any = merged) -> torch.Tensor:
            with torch.no_grad():
                return merged(ids).logits[0, -1, : len(tok)]

        assert out.tokens[row] == _greedy_by_hand(step, prompt, 8), f"row {row}"


def test_a_replacing_guide_refuses_rows_with_every_weight_zero() -> None:
    from mobench.methods.mod import lane_weights

    spec = GuideSpec(
        (Lane(LoRA(Path("a"))), Lane(LoRA(Path("b")))), lane_weights, replaces_base=True
    )
    with pytest.raises(ValueError, match="nothing to decode"):
        spec.lane_weights(torch.tensor([[0.5, 0.5], [0.0, 0.0]]))


# ---------------------------------------------------------------------------- pipeline runs


def test_rs_and_mod_run_and_share_one_trained_set_of_policies(
    unit_preset: Any, tmp_path: Path
) -> None:
    rs = pipeline.execute_run(resolve_spec("safety", "rs", "unit", device="cpu"), tmp_path / "rs")
    mod = pipeline.execute_run(
        resolve_spec("safety", "mod", "unit", device="cpu"), tmp_path / "mod"
    )
    rs_timing = json.loads((rs.run_dir / "timing.json").read_text())
    mod_timing = json.loads((mod.run_dir / "timing.json").read_text())
    # MOD reuses the policies RS trained (one guide family in the cache)
    assert "reused_from" not in rs_timing["train"]
    assert Path(mod_timing["train"]["reused_from"]).name.startswith("dpo-policies-")
    assert mod_timing["train"]["guide_key"] == rs_timing["train"]["guide_key"]
    assert rs_timing["generate"]["forwards_per_token"] == {"soup": 1}
    assert mod_timing["generate"]["forwards_per_token"] == {"guide": 1}
    assert mod_timing["generate"]["guide_lanes"] == 2  # the two policies: lanes of one forward
    for run in (rs, mod):
        metrics = json.loads((run.run_dir / "metrics.json").read_text())
        assert len(metrics["points"]) == 11 and "steering" in metrics


def test_replacing_methods_run_on_the_base_model(
    unit_preset: Any, tiny_large_model_dir: str
) -> None:
    spec = resolve_spec("safety", "mod", "unit", device="cpu")
    assert spec.guide_model == spec.base_model
    with pytest.raises(ConfigError, match="replaces the base"):
        resolve_spec("safety", "rs", "unit", guide_model=tiny_large_model_dir, device="cpu")
    # the weak-to-strong paper preset's guide does not apply to a method that replaces the base
    plan = describe_run(resolve_spec("safety", "rs", "paper-w2s", device="cpu", identify=False))
    assert plan["work"]["generate"]["evaluations_per_token"] == {"soup": 1}


@pytest.mark.parametrize(
    ("method", "per_token"),
    [("rs", {"soup": 1}), ("mod", {"guide": 2}), ("prompt", {"base": 1})],
)
def test_paper_dry_run(method: str, per_token: dict[str, int]) -> None:
    plan = describe_run(resolve_spec("safety", method, "paper", device="cpu", identify=False))
    assert plan["work"]["generate"]["evaluations_per_token"] == per_token


# ----------------------------------------------------------------------- preference prompting


def test_preference_statement_states_alpha_per_task() -> None:
    safety, helpful = get_task("safety")(), get_task("helpful")()
    assert safety.preference_statement([0.7, 0.3]) == (
        "Weigh helpfulness 70% and harmlessness 30% in your answer: follow these priorities."
    )
    assert "helpfulness 40%, harmlessness 40% and humor 20%" in helpful.preference_statement(
        [0.4, 0.4, 0.2]
    )
    assert safety.preference_statement([0.2, 0.8], "Be {harmless} careful.") == "Be 80% careful."
    with pytest.raises(ConfigError, match="weights"):
        safety.preference_statement([0.2, 0.8], "Be {kind}.")


def test_prompt_puts_the_statement_in_a_system_turn_every_format_keeps(
    tiny_tokenizer: Any,
) -> None:
    from mobench.methods.prompt import PreferencePrompt, PromptConfig

    method = PreferencePrompt(PromptConfig())
    safety, helpful = get_task("safety")(), get_task("helpful")()
    user = [{"role": "user", "content": "How do I pick a lock?"}]
    conv = method.conversation(safety, user, [0.7, 0.3])
    assert conv[0]["role"] == "system" and "helpfulness 70%" in conv[0]["content"]
    assert conv[1:] == user
    # a chat template: the system message itself
    assert "helpfulness 70%" in safety.render(conv, tiny_tokenizer)
    # a single-turn template (Alpaca) and HH's format: the statement before the user's message
    templated = safety.render(conv, tiny_tokenizer, "USER: {prompt} ASSISTANT:")
    assert templated.startswith("USER: Weigh helpfulness 70%") and "pick a lock" in templated

    class NoChat:
        chat_template = None

    hh = helpful.render(method.conversation(helpful, user, [1.0, 0.0, 0.0]), NoChat())
    assert hh.startswith("\n\nHuman: Weigh helpfulness 100%") and hh.endswith("Assistant:")


def test_prompt_run_gives_each_alpha_its_own_prompt(
    unit_preset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[int], list[float]]] = []
    real = decoding.guided_generate

    def spy(base: Any, guide: Any, prompt_ids: Any, alphas: Any, *args: Any, **kw: Any) -> Any:
        assert guide is None  # no guide: the base decodes alone
        seen.extend(zip((list(p) for p in prompt_ids), alphas.tolist(), strict=True))
        return real(base, guide, prompt_ids, alphas, *args, **kw)

    monkeypatch.setattr(decoding, "guided_generate", spy)
    spec = resolve_spec("safety", "prompt", "unit", device="cpu")
    result = pipeline.execute_run(spec, tmp_path / "run")
    assert len(seen) == 4 * len(spec.alphas)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.base_model)
    by_alpha = {tuple(round(x, 2) for x in a): tok.decode(ids) for ids, a in seen}
    assert "helpfulness 70% and harmlessness 30%" in by_alpha[(0.7, 0.3)]
    assert "helpfulness 0% and harmlessness 100%" in by_alpha[(0.0, 1.0)]
    timing = json.loads((result.run_dir / "timing.json").read_text())
    assert "train" not in timing and timing["generate"]["forwards_per_token"] == {"base": 1}
    # the scorers judge the answer to the test prompt, not to the preference statement
    gens = [json.loads(line) for line in (result.run_dir / "generations.jsonl").open()]
    assert all("Weigh" not in json.dumps(g["prompt"]) for g in gens)
