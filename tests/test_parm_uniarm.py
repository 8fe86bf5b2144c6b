"""PARM and UniARM: training loss, guidance, save/load, objective order, pipeline (tiny, fp32)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mobench.methods.parm import PARM, PARMConfig
from mobench.methods.preference_arm import (
    PreferenceARM,
    PreferenceContext,
    alpha_weighted_winners,
    count_adapter_parameters,
    draw_alpha,
    preference_loss,
)
from mobench.methods.uniarm import (
    ModulatedLoRALinear,
    UniARM,
    UniARMConfig,
    objective_descriptors,
)
from mobench.tasks.safety import SafetyTask, load_pku_source

from mobench.config import ConfigError, GenerationConfig
from mobench.decoding import guided_generate
from mobench.models import ModelContext, load_causal_lm, load_tokenizer
from mobench.training import collate_pairs, encode_prompt, tokenize_pairs

OBJECTIVES = SafetyTask.objectives  # ("helpful", "harmless")
KINDS = ["parm", "uniarm"]
PROMPTS = ["How do I bake bread?", "Is the response safe?", "The capital of France is"]


class ReversedSafety(SafetyTask):
    """The safety task with its objectives listed the other way round."""

    objectives = ("harmless", "helpful")


class HumorSafety(SafetyTask):
    """A task with a different objective set."""

    objectives = ("helpful", "humor")


def make_method(kind: str, **overrides: Any) -> PreferenceARM:
    if kind == "parm":
        return PARM(PARMConfig(lora_dropout=0.0, **overrides))
    return UniARM(UniARMConfig(lora_dropout=0.0, **overrides))


def adapted(kind: str, model_dir: str, seed: int = 0, randomize: bool = True, **overrides: Any):
    """(method, model with adapters injected, its context); random strong adapters so that
    alpha visibly changes the output (training starts from B = 0, G = 0)."""
    method = make_method(kind, **overrides)
    model, _ = load_causal_lm(model_dir)
    torch.manual_seed(seed)
    method.inject(model, OBJECTIVES, load_tokenizer(model_dir))
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        scales = {"pblora_B": 2.0, "pblora_Theta": 1.0, "moslora_B": 1.0, "moslora_G": 1000.0}
        with torch.no_grad():
            for name, p in model.named_parameters():
                scale = scales.get(name.rpartition(".")[2])
                if scale:
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
    model.eval()
    return method, model, model.preference_context


def model_context(model_dir: str, base_dir: str | None = None) -> ModelContext:
    """Guide backbone ``model_dir``; base ``base_dir`` (same tokenizer) or the same model. The
    guide runs on its own backbone copy (``fuse=False``): these tests check the guide itself;
    tests/test_fused.py checks that the fused path equals it."""
    base, _ = load_causal_lm(base_dir or model_dir)
    tok = load_tokenizer(model_dir)
    return ModelContext(
        base=base,
        base_tokenizer=tok,
        base_source=base_dir or model_dir,
        guide_tokenizer=tok,
        guide_source=model_dir,
        vocab_size=len(tok),
        dtype="float32",
        device="cpu",
        fuse=False,
    )


def saved_guide(kind: str, model_dir: str, out: Path, seed: int = 0):
    method, model, ctx = adapted(kind, model_dir, seed)
    method.save_guide(
        model,
        out,
        OBJECTIVES,
        {"adapter": kind},
        guide_model=model_dir,
        base_model=model_dir,
    )
    return method, model, ctx


def encode(tok: Any, texts: list[str]) -> list[list[int]]:
    task = SafetyTask()
    return [encode_prompt(tok, task.render([{"role": "user", "content": t}], tok)) for t in texts]


def pair_batch(tok: Any, n: int = 4) -> dict[str, torch.Tensor]:
    """n pairs of the built-in safety data, half of them with disagreeing labels."""
    rows = load_pku_source("builtin:safety_tiny.jsonl")
    agree = [r for r in rows if r.labels["helpful"] == r.labels["harmless"]]
    disagree = [r for r in rows if r.labels["helpful"] != r.labels["harmless"]]
    chosen = disagree[: n // 2] + agree[: n - n // 2]
    task = SafetyTask()
    cfg = PARMConfig(max_length=80, max_prompt_length=40)
    pairs = tokenize_pairs(chosen, lambda p: task.render(p.prompt, tok), tok, OBJECTIVES, cfg)
    return collate_pairs(tok.pad_token_id)(pairs)


def sequence_logps_by_hand(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """S(x, y) per row from a plain full forward (independent of ``sequence_logprobs``)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = logits[:, :-1].float().log_softmax(-1)
    tok_lp = logp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (tok_lp * batch["loss_mask"][:, 1:]).sum(-1)


def bt_by_hand(s: torch.Tensor, winners: list[int], beta: float) -> torch.Tensor:
    terms = [
        -F.logsigmoid(beta * (s[2 * b + w] - s[2 * b + 1 - w]))
        for b, w in enumerate(winners)
        if w >= 0
    ]
    return torch.stack(terms).mean()


# ------------------------------------------------------------------------ alpha sampling


def test_draw_alpha_is_seeded_per_micro_step_and_dirichlet() -> None:
    a = draw_alpha(42, 7, 2, 0.5)
    assert np.array_equal(a, draw_alpha(42, 7, 2, 0.5))  # every process draws the same alpha
    assert not np.array_equal(a, draw_alpha(42, 8, 2, 0.5))
    assert not np.array_equal(a, draw_alpha(43, 7, 2, 0.5))
    draws = np.stack([draw_alpha(0, s, 2, 0.5) for s in range(4000)])
    assert np.allclose(draws.sum(1), 1.0) and (draws >= 0).all()
    # Dirichlet(p 1_k): mean 1/k, Var(alpha_i) = (1/k)(1 - 1/k) / (k p + 1) = 0.125 for k=2, p=.5
    assert abs(draws[:, 0].mean() - 0.5) < 0.02
    assert abs(draws[:, 0].var() - 0.125) < 0.01
    with pytest.raises(ConfigError, match="pref_sample_p"):
        draw_alpha(0, 0, 2, 0.0)


def test_alpha_weighted_winners() -> None:
    labels = torch.tensor([[0, 0], [1, 1], [0, 1], [1, 0], [0, -1], [-1, -1]])
    alpha = torch.tensor([0.7, 0.3])
    assert alpha_weighted_winners(labels, alpha).tolist() == [0, 1, 0, 1, 0, -1]
    tie = torch.tensor([0.5, 0.5])
    assert alpha_weighted_winners(labels, tie).tolist() == [0, 1, -1, -1, 0, -1]


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("kind", KINDS)
def test_training_loss_equals_weighted_sum_by_hand(kind: str, tiny_model_dir: str) -> None:
    """PARM: sum_i alpha_i L_i with alpha drawn for the micro-step and each objective's beta_r;
    UniARM adds lambda * L_global on the alpha-weighted winner."""
    betas = {"helpful": 0.3, "harmless": 0.05}
    extra = {"global_loss_weight": 0.7} if kind == "uniarm" else {}
    method, model, ctx = adapted(kind, tiny_model_dir, beta_r=betas, **extra)
    batch = pair_batch(load_tokenizer(tiny_model_dir))
    loss, logs = method.pair_loss(ctx, OBJECTIVES)(model, batch, 5)

    alpha = ctx.alphas
    assert alpha is not None and alpha.shape == (2,)  # set into the context before the forward
    torch.testing.assert_close(alpha, torch.tensor(draw_alpha(42, 5, 2, 0.5), dtype=torch.float32))
    with torch.no_grad():
        s = sequence_logps_by_hand(model, batch)
    labels = batch["labels"]
    per_objective = [
        bt_by_hand(s, labels[:, i].tolist(), betas[o]) for i, o in enumerate(OBJECTIVES)
    ]
    want = alpha[0] * per_objective[0] + alpha[1] * per_objective[1]
    if kind == "uniarm":
        votes = [
            sum(a * (1 if z == 0 else -1) for a, z in zip(alpha.tolist(), row, strict=True))
            for row in labels.tolist()
        ]
        winners = [0 if v > 0 else 1 for v in votes]
        beta_g = float(alpha[0] * betas["helpful"] + alpha[1] * betas["harmless"])
        want = want + 0.7 * bt_by_hand(s, winners, beta_g)
        assert "loss_global" in logs
    torch.testing.assert_close(loss.detach(), want, atol=1e-5, rtol=1e-5)
    # the two objectives disagree on this batch, so the weighting is really tested
    assert abs(float(per_objective[0] - per_objective[1])) > 1e-4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", [0, 1])
def test_one_step_lowers_the_loss_for_one_hot_alpha(
    kind: str, direction: int, tiny_model_dir: str
) -> None:
    method, model, ctx = adapted(kind, tiny_model_dir, randomize=False)  # training init
    batch = pair_batch(load_tokenizer(tiny_model_dir))
    alpha = torch.eye(2)[direction]
    betas = [method.beta_r(o) for o in OBJECTIVES]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    gw = method.global_loss_weight
    before, logs = preference_loss(model, ctx, batch, alpha, betas, gw)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after, after_logs = preference_loss(model, ctx, batch, alpha, betas, gw)
    assert float(after) < float(before.detach())
    assert after_logs[f"loss_{direction}"] < logs[f"loss_{direction}"]


# ------------------------------------------------------------------------------- guidance


def conditioned_guide(model: Any, vocab_size: int, pad_token_id: int) -> Any:
    """PARM/UniARM's one lane (weight 1) over a model whose adapter is already injected,
    through the engine's separate-models path; alphas in the stored order (columns 0, 1)."""
    from mobench.methods.preference_arm import lane_weights

    from mobench.engine import Conditioned, GuideSpec, Lane, SeparateModels

    spec = GuideSpec((Lane(Conditioned(lambda m: None, (0, 1))),), lane_weights)
    return SeparateModels([model], spec, vocab_size, pad_token_id)


@pytest.mark.parametrize("kind", KINDS)
def test_guidance_is_log_softmax_of_the_adapted_model_and_drop_keeps_alphas(
    kind: str, tiny_model_dir: str
) -> None:
    _, model, ctx = adapted(kind, tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    guide = conditioned_guide(model, len(tok), tok.pad_token_id)
    prompts = [*encode(tok, PROMPTS), encode(tok, ["Drink water"])[0]]
    alphas = torch.tensor([[0.0, 1.0], [0.3, 0.7], [1.0, 0.0], [0.5, 0.5]])
    g0 = guide.prefill(prompts, alphas)
    nxt = torch.tensor([5, 17, 42, 9])
    g1 = guide.step(nxt)
    keep = torch.tensor([2, 0])
    guide.drop(keep)
    g2 = guide.step(torch.tensor([11, 12]))
    with torch.no_grad():
        for row, ids in enumerate(prompts):
            seq = [*ids, int(nxt[row])]
            with ctx.use(alphas[row : row + 1]):
                want = model(torch.tensor([seq])).logits[0].float().log_softmax(-1)
            torch.testing.assert_close(g0[row], want[-2], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(g1[row], want[-1], atol=1e-4, rtol=1e-4)
        for out_row, (row, tok_id) in enumerate(zip(keep.tolist(), [11, 12], strict=True)):
            seq = [*prompts[row], int(nxt[row]), tok_id]
            with ctx.use(alphas[row : row + 1]):
                want = model(torch.tensor([seq])).logits[0].float().log_softmax(-1)
            torch.testing.assert_close(g2[out_row], want[-1], atol=1e-4, rtol=1e-4)
    assert guide.forwards_per_token == {"guide": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_alpha_batch_equals_per_alpha_runs(
    kind: str, tiny_model_dir: str, tiny_large_model_dir: str, tmp_path: Path
) -> None:
    """Through the real decoding loop; weak-to-strong (the tiny random base alone is so peaked
    that no guide changes its argmax, which would make the token comparison vacuous)."""
    method, _, _ = saved_guide(kind, tiny_model_dir, tmp_path)
    models = model_context(tiny_model_dir, base_dir=tiny_large_model_dir)
    guide = method.guide(tmp_path, SafetyTask(), models)
    tok = models.base_tokenizer
    prompts = encode(tok, PROMPTS)
    grid = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    rows = [(p, a) for p in range(len(prompts)) for a in range(len(grid))]
    row_prompts = [prompts[p] for p, _ in rows]
    row_alphas = torch.stack([grid[a] for _, a in rows])

    def generate(ids: list[list[int]], alphas: torch.Tensor) -> Any:
        return guided_generate(
            models.base,
            guide,
            ids,
            alphas,
            GenerationConfig(max_new_tokens=8),
            vocab_size=models.vocab_size,
            pad_token_id=tok.pad_token_id,
            eos_token_ids={tok.eos_token_id},
        )

    mixed_logits = guide.prefill(row_prompts, row_alphas)
    mixed = generate(row_prompts, row_alphas)
    for a in range(len(grid)):
        single_logits = guide.prefill(prompts, grid[a].repeat(len(prompts), 1))
        single = generate(prompts, grid[a].repeat(len(prompts), 1))
        for p in range(len(prompts)):
            i = rows.index((p, a))
            torch.testing.assert_close(mixed_logits[i], single_logits[p], atol=1e-5, rtol=1e-5)
            assert mixed.tokens[i] == single.tokens[p], f"prompt {p}, alpha {a}"
    # alpha matters: the rows of one prompt do not all decode the same
    assert len({tuple(t) for t in mixed.tokens}) > len(prompts)


# ---------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_reproduces_guidance_exactly(
    kind: str, tiny_model_dir: str, tmp_path: Path
) -> None:
    method, model, _ = saved_guide(kind, tiny_model_dir, tmp_path)
    models = model_context(tiny_model_dir)
    tok = models.guide_tokenizer
    prompts = encode(tok, PROMPTS)
    alphas = torch.tensor([[0.0, 1.0], [0.3, 0.7], [1.0, 0.0]])
    original = conditioned_guide(model, models.vocab_size, tok.pad_token_id)
    loaded = method.guide(tmp_path, SafetyTask(), models)
    with torch.inference_mode():
        assert torch.equal(original.prefill(prompts, alphas), loaded.prefill(prompts, alphas))
        nxt = torch.tensor([3, 4, 5])
        assert torch.equal(original.step(nxt), loaded.step(nxt))

    stored = json.loads((tmp_path / "guide_config.json").read_text())
    assert stored["objectives"] == list(OBJECTIVES)
    assert stored["guide_model"] == tiny_model_dir
    n_params = count_adapter_parameters(model)
    assert stored["architecture"]["trainable_parameters"] == n_params
    assert method.trainable_parameters(tmp_path) == n_params


def parm_count(shapes: list[tuple[int, int]], r1: int = 4, r2: int = 4, k: int = 2) -> int:
    """METHODS §4.1: (r1+r2)(m+n) + r1^2 + k r2^2 per module."""
    return sum((r1 + r2) * (m + n) + r1**2 + k * r2**2 for m, n in shapes)


def uniarm_shared_count(shapes: list[tuple[int, int]], d: int, r: int = 8) -> int:
    """MoSLoRA "shared": r(m+n) per module plus one G of 2r x d (E is frozen, not counted)."""
    return sum(r * (m + n) for m, n in shapes) + 2 * r * d


def test_parameter_counts_and_budget(tiny_model_dir: str) -> None:
    _, parm, _ = adapted("parm", tiny_model_dir, randomize=False)
    _, uni, ctx = adapted("uniarm", tiny_model_dir, randomize=False)
    # tiny Llama: hidden 64, 2 layers, 4 heads, 2 kv heads -> q 64->64, k/v 64->32
    shapes = [(64, 64), (64, 32), (64, 32)] * 2
    assert count_adapter_parameters(parm) == parm_count(shapes)
    assert count_adapter_parameters(uni) == uniarm_shared_count(shapes, d=64)
    assert ctx.moslora_E is not None and not ctx.moslora_E.requires_grad
    # the budgets quoted in methods/uniarm.py: the shared G keeps UniARM within ~1% of PARM
    llama7b = [(4096, 4096)] * 96
    assert (parm_count(llama7b), uniarm_shared_count(llama7b, d=4096)) == (6_296_064, 6_356_992)
    smollm2 = [(576, 576), (576, 192), (576, 192)] * 30
    assert (parm_count(smollm2), uniarm_shared_count(smollm2, d=576)) == (649_440, 654_336)


def test_uniarm_descriptors_are_mean_input_embeddings(tiny_model_dir: str) -> None:
    model, _ = load_causal_lm(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    texts = ["helpfulness", "harmlessness", "humor"]
    raw = objective_descriptors(model, tok, texts, unit=False)
    unit = objective_descriptors(model, tok, texts)
    centred = objective_descriptors(model, tok, texts, center=True)
    table = model.get_input_embeddings().weight
    means = torch.stack(
        [table[tok(t, add_special_tokens=False)["input_ids"]].mean(0) for t in texts]
    )
    for i in range(len(texts)):
        torch.testing.assert_close(raw[i], means[i])
        torch.testing.assert_close(unit[i], means[i] / means[i].norm())
        contrast = means[i] - means.mean(0)  # centred: the objective's offset from their mean
        torch.testing.assert_close(centred[i], contrast / contrast.norm())
    # centred, with two objectives E = (u, -u), so o(alpha) = (a1 - a2) u: the modulation sees
    # only the preference contrast
    info = make_method("uniarm", center_descriptors=True).inject(model, OBJECTIVES, tok)
    assert info["center_descriptors"] is True
    E = next(m for m in model.modules() if isinstance(m, ModulatedLoRALinear)).context.descriptors
    torch.testing.assert_close(E, objective_descriptors(model, tok, texts[:2], center=True))
    torch.testing.assert_close(E[0], -E[1])
    model, _ = load_causal_lm(tiny_model_dir)
    method = make_method("uniarm", objective_descriptions={"helpful": "helpfulness"})
    with pytest.raises(ConfigError, match=r"description for objective\(s\) \['harmless'\]"):
        method.inject(model, OBJECTIVES, tok)


@pytest.mark.parametrize("kind", KINDS)
def test_other_objective_order_is_mapped_by_name(
    kind: str, tiny_model_dir: str, tmp_path: Path
) -> None:
    """A guide trained as (helpful, harmless) loaded on a (harmless, helpful) task: the same
    NAMED weights give the same guidance; feeding alphas positionally would mirror the front."""
    method, _, _ = saved_guide(kind, tiny_model_dir, tmp_path)
    models = model_context(tiny_model_dir)
    prompts = encode(models.guide_tokenizer, PROMPTS)
    alphas = torch.tensor([[0.1, 0.9], [0.8, 0.2], [1.0, 0.0]])  # (helpful, harmless)
    same = method.guide(tmp_path, SafetyTask(), models)
    swapped = method.guide(tmp_path, ReversedSafety(), models)
    with torch.inference_mode():
        want = same.prefill(prompts, alphas)
        assert torch.equal(swapped.prefill(prompts, alphas.flip(1)), want)
        mirrored = swapped.prefill(prompts, alphas)  # positional use would give this
    assert (mirrored - want).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_foreign_objectives_or_method_refused(
    kind: str, tiny_model_dir: str, tmp_path: Path
) -> None:
    method, _, _ = saved_guide(kind, tiny_model_dir, tmp_path)
    models = model_context(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"trained for objectives \['helpful', 'harmless'\]"):
        method.guide(tmp_path, HumorSafety(), models)
    other = make_method("uniarm" if kind == "parm" else "parm")
    with pytest.raises(ConfigError, match=f"trained by method '{kind}'"):
        other.guide(tmp_path, SafetyTask(), models)
    # the same folder under another spelling is the same backbone
    relative = dataclasses.replace(models, guide_source=os.path.relpath(tiny_model_dir))
    method.guide(tmp_path, SafetyTask(), relative)
    wrong_backbone = dataclasses.replace(models, guide_source="elsewhere")
    with pytest.raises(ConfigError, match="trained on backbone"):
        method.guide(tmp_path, SafetyTask(), wrong_backbone)


def test_bad_config_values_are_config_errors() -> None:
    from mobench.resolve import resolve_spec

    with pytest.raises(ConfigError, match="pref_sample_p must be > 0"):
        PARMConfig(pref_sample_p=0.0)
    with pytest.raises(ConfigError, match="r2 >= 1"):
        PARMConfig(r2=0)
    with pytest.raises(ConfigError, match="unknown UniARM modulation 'film'"):
        resolve_spec("safety", "uniarm", overrides={"method": {"modulation": "film"}})
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        PreferenceContext(2).set(torch.ones(3))


# ------------------------------------------------------------------------------- pipeline


def _drop_rows(run_dir: Path, keep_fraction: float) -> set[tuple[str, int]]:
    """Remove the last generations (and their scores) as if the run had been killed."""
    lines = (run_dir / "generations.jsonl").read_text().splitlines()
    kept = lines[: int(len(lines) * keep_fraction)]
    (run_dir / "generations.jsonl").write_text("".join(line + "\n" for line in kept))
    removed = {(r["prompt_id"], r["alpha_index"]) for r in map(json.loads, lines[len(kept) :])}
    scores = [
        line
        for line in (run_dir / "scores.jsonl").read_text().splitlines()
        if (json.loads(line)["prompt_id"], json.loads(line)["alpha_index"]) not in removed
    ]
    (run_dir / "scores.jsonl").write_text("".join(line + "\n" for line in scores))
    (run_dir / "metrics.json").unlink()
    return removed


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_runs_and_resumes(kind: str, unit_preset: Any, tmp_path: Path) -> None:
    from mobench.pipeline import execute_run
    from mobench.resolve import method_from_spec, resolve_spec
    from mobench.runs import read_jsonl

    spec = resolve_spec("safety", kind, "unit", device="cpu")
    run_dir = tmp_path / "run"
    first = execute_run(spec, run_dir)
    n_rows = len(spec.alphas) * unit_preset.test_limit
    assert first.generated == n_rows
    assert np.isfinite(first.metrics["hv"]) and np.isfinite(first.metrics["mip"])
    timing = json.loads((run_dir / "timing.json").read_text())
    n_params = method_from_spec(spec).trainable_parameters(run_dir / "guide")
    assert timing["train"]["trainable_parameters"] == n_params > 0
    # guide model = base model: base and guide rows share one forward (mobench.fused)
    assert timing["generate"]["forwards_per_token"] == {"fused": 1}
    assert timing["generate"]["fused_lanes"] == 2
    stored = json.loads((run_dir / "guide" / "guide_config.json").read_text())
    assert stored["objectives"] == list(OBJECTIVES)
    assert stored["training"]["steps"] == 2
    assert stored["architecture"]["trainable_parameters"] == n_params

    again = execute_run(spec, run_dir)
    assert (again.generated, again.scored) == (0, 0)
    assert again.metrics["hv"] == first.metrics["hv"]

    texts = {
        (r["prompt_id"], r["alpha_index"]): r["text"]
        for r in read_jsonl(run_dir / "generations.jsonl")
    }
    removed = _drop_rows(run_dir, 0.5)
    resumed = execute_run(spec, run_dir)
    assert resumed.generated == len(removed) > 0
    regenerated = {
        (r["prompt_id"], r["alpha_index"]): r["text"]
        for r in read_jsonl(run_dir / "generations.jsonl")
    }
    # other batch compositions, same texts: rows do not depend on their batch neighbours
    assert regenerated == texts
    assert resumed.metrics["hv"] == pytest.approx(first.metrics["hv"])
