"""Invariants of the PBLoRA / MoSLoRA adapter layers (METHODS §4.1, §5), on tiny fp32 models."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
from mobench.methods.parm import PBLoRALinear
from mobench.methods.preference_arm import (
    PreferenceContext,
    adapter_state_dict,
    count_adapter_parameters,
    inject_adapters,
    load_adapter_state_dict,
    load_adapters,
    save_adapters,
)
from mobench.methods.uniarm import ModulatedLoRALinear
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

K = 2  # objectives
TARGETS = ("q_proj", "k_proj", "v_proj")
ALPHAS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [0.5, 0.5]])


def tiny_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    return LlamaForCausalLM(config).eval()


def descriptors(model: nn.Module, seed: int = 1) -> torch.Tensor:
    """E as in METHODS §5 step 1: mean-pooled input embeddings of a few "description" tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (K, 5), generator=g)
    return model.get_input_embeddings().weight[ids].mean(dim=1).detach()


def randomize(wrappers: dict[str, nn.Module], seed: int = 2) -> None:
    """Nonzero B and G, so the adapters actually change the output and depend on alpha."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in wrappers.values():
            for name, p in w.named_parameters():
                if name.endswith(("_B", "_G")):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            if isinstance(w, ModulatedLoRALinear) and w.moslora_G is None:
                G = w.context.moslora_G
                assert G is not None
                G.copy_(torch.randn(G.shape, generator=g) * 0.2)


def pblora_factory(ctx: PreferenceContext) -> Callable[[nn.Linear], PBLoRALinear]:
    return functools.partial(PBLoRALinear, context=ctx, r1=4, r2=4, lora_alpha=8)


def moslora_factory(ctx: PreferenceContext, modulation: str) -> Callable[[nn.Linear], nn.Module]:
    return functools.partial(
        ModulatedLoRALinear, context=ctx, r=8, lora_alpha=16, modulation=modulation
    )


KINDS = ["pblora", "moslora-linear", "moslora-shared"]


def adapted_llama(kind: str, seed: int = 0) -> tuple[nn.Module, nn.Module, PreferenceContext]:
    """(base copy without adapters, adapted model with random nonzero B/G, its context)."""
    model = tiny_llama()
    base = copy.deepcopy(model)
    torch.manual_seed(seed)
    if kind == "pblora":
        ctx = PreferenceContext(K)
        wrappers = inject_adapters(model, pblora_factory(ctx))
    else:
        ctx = PreferenceContext(K, descriptors=descriptors(model))
        wrappers = inject_adapters(model, moslora_factory(ctx, kind.split("-")[1]))
    randomize(wrappers, seed + 100)
    return base, model, ctx


def input_ids(batch: int = 4, length: int = 7, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ctx: PreferenceContext, ids: torch.Tensor, alphas, active=None):
    with torch.no_grad(), ctx.use(alphas, active):
        return model(ids).logits


def linear(m: int = 16, n: int = 12, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(m, n)


# --- PBLoRA with W(alpha) = I is LoRA (METHODS §4.1 special case) -------------------------


def set_identity_core(layer: PBLoRALinear) -> None:
    with torch.no_grad():
        layer.pblora_W1.copy_(torch.eye(layer.r1))
        # Theta_i = vec(I) for every objective: W2(alpha) = sum_i alpha_i I = I on the simplex.
        layer.pblora_Theta.copy_(torch.eye(layer.r2).flatten().expand_as(layer.pblora_Theta))


def test_pblora_identity_core_equals_lora() -> None:
    base = linear()
    layer = PBLoRALinear(base, PreferenceContext(K), r1=3, r2=5, lora_alpha=10)
    set_identity_core(layer)
    nn.init.normal_(layer.pblora_B)
    x = torch.randn(4, 16)
    with layer.context.use(ALPHAS):
        got = layer(x)
    s = 10 / 5  # lora_alpha / r2, not / (r1 + r2)
    want = base(x) + s * x @ layer.pblora_A.T @ layer.pblora_B.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_pblora_identity_core_matches_peft_lora() -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    peft_model = get_peft_model(
        copy.deepcopy(model),
        # same scale: peft's lora_alpha / r == PBLoRA's lora_alpha / r2 = 8 / 4
        LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), lora_dropout=0.0),
    ).eval()
    ctx = PreferenceContext(K)
    wrappers = inject_adapters(model, pblora_factory(ctx))
    randomize(wrappers)
    with torch.no_grad():
        for name, w in wrappers.items():
            assert isinstance(w, PBLoRALinear)
            set_identity_core(w)
            lora = peft_model.get_submodule(f"base_model.model.{name}")
            lora.lora_A["default"].weight.copy_(w.pblora_A)
            lora.lora_B["default"].weight.copy_(w.pblora_B)
    ids = input_ids()
    with torch.no_grad():
        want = peft_model(ids).logits
    got = logits(model, ctx, ids, ALPHAS)
    no_adapter = logits(model, ctx, ids, ALPHAS, active=torch.zeros(4, dtype=torch.bool))
    assert (want - no_adapter).abs().max() > 1e-3  # the comparison is not trivially base == base
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- linearity in alpha -------------------------------------------------------------------


def test_w2_is_linear_in_alpha() -> None:
    layer = PBLoRALinear(linear(), PreferenceContext(3), r1=2, r2=3)
    a1, a2 = torch.tensor([[0.2, 0.5, 0.3]]), torch.tensor([[0.9, 0.0, 0.1]])
    for c in (0.0, 0.25, 0.7, 1.0):
        mixed = layer.preference_core(c * a1 + (1 - c) * a2)
        want = c * layer.preference_core(a1) + (1 - c) * layer.preference_core(a2)
        torch.testing.assert_close(mixed, want)
    # W2(e_i) is Theta_i reshaped: the generation is exactly alpha^T Theta (§4.1)
    e1 = torch.tensor([[0.0, 1.0, 0.0]])
    torch.testing.assert_close(layer.preference_core(e1)[0], layer.pblora_Theta[1].view(3, 3))


def make_layer(kind: str, base: nn.Linear) -> nn.Module:
    if kind == "pblora":
        layer: nn.Module = PBLoRALinear(base, PreferenceContext(K), r1=2, r2=3)
    else:
        ctx = PreferenceContext(K, descriptors=torch.randn(K, 6))
        layer = ModulatedLoRALinear(base, ctx, r=4, modulation=kind.split("-")[1])  # type: ignore[arg-type]
    randomize({"layer": layer})
    return layer


@pytest.mark.parametrize("kind", KINDS)
def test_output_is_affine_in_alpha(kind: str) -> None:
    """Both adapters are affine in alpha, so a convex mix of alphas gives the same mix of
    outputs: the mixed-alpha ARM interpolates its vertex ARMs layer by layer."""
    layer = make_layer(kind, linear())
    x = torch.randn(3, 5, 16)
    a1, a2 = torch.tensor([0.2, 0.8]), torch.tensor([1.0, 0.0])
    outs = {}
    for key, a in {"a1": a1, "a2": a2, "mix": 0.3 * a1 + 0.7 * a2}.items():
        with layer.context.use(a):
            outs[key] = layer(x)
    torch.testing.assert_close(outs["mix"], 0.3 * outs["a1"] + 0.7 * outs["a2"])
    assert not torch.allclose(outs["a1"], outs["a2"])


# --- per-row alphas ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_alpha_batch_equals_single_alpha_forwards(kind: str) -> None:
    _, model, ctx = adapted_llama(kind)
    ids = input_ids()
    batched = logits(model, ctx, ids, ALPHAS)
    for i in range(len(ids)):
        single = logits(model, ctx, ids[i : i + 1], ALPHAS[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=1e-5)
    # and alpha matters: the same prompt under two alphas differs
    same = ids[:1].expand(2, -1)
    two = logits(model, ctx, same, ALPHAS[:2])
    assert (two[0] - two[1]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_inactive_rows_equal_base_model_exactly(kind: str) -> None:
    base, model, ctx = adapted_llama(kind)
    ids = input_ids()
    active = torch.tensor([True, False, True, False])
    got = logits(model, ctx, ids, ALPHAS, active)
    with torch.no_grad():
        want = base(ids).logits
    assert torch.equal(got[~active], want[~active])
    assert (got[active] - want[active]).abs().max() > 1e-3
    # the active rows are what an all-active batch gives them
    torch.testing.assert_close(got[active], logits(model, ctx, ids, ALPHAS)[active])


@pytest.mark.parametrize("kind", KINDS)
def test_inference_path_equals_training_path(kind: str) -> None:
    """Without gradients the layers compute the update only on the active rows (a tail of the
    batch, as in a fused base + guide batch) from per-row cores built once per alpha change:
    the same logits as the general (training) path, inactive rows exactly the base."""
    base, model, ctx = adapted_llama(kind)
    ids = input_ids()
    tail = torch.tensor([False, False, True, True])
    for alphas, active in ((ALPHAS, tail), (ALPHAS, None), (ALPHAS[2], tail), (ALPHAS[2], None)):
        with ctx.use(alphas, active):
            want = model(ids).logits.detach()  # gradients on: the general path
            with torch.no_grad():
                got, again = model(ids).logits, model(ids).logits  # second: cached cores
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(again, got)
    ctx.set(ALPHAS, tail)
    with torch.no_grad():
        assert torch.equal(model(ids).logits[:2], base(ids).logits[:2])
    ctx.select(torch.tensor([3, 0, 2]))  # the mask stops being a tail: general path, no stale core
    with torch.no_grad():
        got = model(ids[[3, 0, 2]]).logits
    ctx.clear()
    with ctx.use(ALPHAS[[3, 0, 2]], torch.tensor([True, False, True])):
        torch.testing.assert_close(got, model(ids[[3, 0, 2]]).logits.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_input_shapes_and_dtypes(kind: str) -> None:
    layer = make_layer(kind, linear())
    x3 = torch.randn(4, 5, 16)
    with layer.context.use(ALPHAS):
        y3 = layer(x3)
        y2 = layer(x3[:, 2])
        y16 = layer.to(torch.bfloat16)(x3.to(torch.bfloat16))
    assert y3.shape == (4, 5, 12) and y2.shape == (4, 12)
    torch.testing.assert_close(y2, y3[:, 2], atol=1e-6, rtol=1e-6)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y3, atol=0.1, rtol=0.05)


def test_fp32_adapter_on_bf16_input_computes_in_bf16() -> None:
    base = linear().to(torch.bfloat16)
    layer = PBLoRALinear(base, PreferenceContext(K), r1=2, r2=2)
    assert layer.pblora_A.dtype == torch.float32
    with layer.context.use(ALPHAS[:2]):
        assert layer(torch.randn(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_no_dense_delta_w() -> None:
    """The forward costs base + rank-sized work; a dense n x m delta-W would double it."""
    m = n = 256
    layer = PBLoRALinear(linear(m, n), PreferenceContext(K), r1=4, r2=4)
    x = torch.randn(2, m)
    with layer.context.use(ALPHAS[:2]), FlopCounterMode(display=False) as counter:
        layer(x)
    base_flops = 2 * 2 * m * n
    assert counter.get_total_flops() < 1.2 * base_flops


def test_context_errors_are_actionable() -> None:
    layer = PBLoRALinear(linear(), PreferenceContext(K))
    with pytest.raises(RuntimeError, match=r"context.use\(alphas\)"):
        layer(torch.randn(2, 16))
    with (
        layer.context.use(ALPHAS),
        pytest.raises(ValueError, match=r"batch size 3 .* 4 alpha rows"),
    ):
        layer(torch.randn(3, 16))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        layer.context.set(torch.ones(4, 3))
    with pytest.raises(ValueError, match="active has 3 rows"):
        layer.context.set(ALPHAS, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="descriptors=E"):
        ModulatedLoRALinear(linear(), PreferenceContext(K))
    ctx = PreferenceContext(K, descriptors=torch.randn(K, 6))
    ModulatedLoRALinear(linear(), ctx, r=4, modulation="shared")
    with pytest.raises(ValueError, match="same rank"):
        ModulatedLoRALinear(linear(), ctx, r=2, modulation="shared")
    with pytest.raises(ValueError, match=r"its linear layers are named: .*o_proj"):
        inject_adapters(tiny_llama(), pblora_factory(PreferenceContext(K)), ("qproj",))


def test_context_use_restores_and_select_drops_rows() -> None:
    ctx = PreferenceContext(K)
    ctx.set(ALPHAS)
    with ctx.use(ALPHAS[:1]):
        assert ctx.alphas is not None and ctx.alphas.shape == (1, K)
    assert ctx.alphas is ALPHAS
    ctx.set(ALPHAS, torch.tensor([True, False, True, True]))
    ctx.select(torch.tensor([3, 1]))
    assert ctx.alphas is not None and ctx.active is not None
    assert torch.equal(ctx.alphas, ALPHAS[[3, 1]])
    assert ctx.active.tolist() == [True, False]


# --- MoSLoRA specifics ------------------------------------------------------------------


@pytest.mark.parametrize("modulation", ["linear", "shared"])
def test_moslora_zero_modulation_equals_shared_lora(modulation: str) -> None:
    base = linear()
    ctx = PreferenceContext(K, descriptors=torch.randn(K, 6))
    layer = ModulatedLoRALinear(base, ctx, r=4, lora_alpha=6, modulation=modulation)  # type: ignore[arg-type]
    nn.init.normal_(layer.moslora_B)
    torch.testing.assert_close(layer.modulation_matrix(), torch.zeros(8, 6))  # init G = 0
    x = torch.randn(4, 3, 16)
    with ctx.use(ALPHAS):
        got = layer(x)
    want = base(x) + (6 / 4) * x @ layer.moslora_A.T @ layer.moslora_B.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_moslora_film_uses_mixed_descriptor() -> None:
    E = torch.randn(K, 6)
    layer = ModulatedLoRALinear(linear(), PreferenceContext(K, descriptors=E), r=4)
    randomize({"layer": layer})
    assert layer.moslora_G is not None
    gamma, delta = layer.film(ALPHAS)
    gd = (ALPHAS @ E) @ layer.moslora_G.T
    torch.testing.assert_close(torch.cat([gamma, delta], dim=-1), gd)


# --- injection, state, counts, gradients --------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_reproduces_logits_exactly(kind: str, tmp_path) -> None:
    _, model, ctx = adapted_llama(kind, seed=0)
    ids = input_ids()
    want = logits(model, ctx, ids, ALPHAS)
    path = tmp_path / "adapter.safetensors"
    save_adapters(model, path, metadata={"objectives": "harmless,helpful"})

    _, fresh, fresh_ctx = adapted_llama(kind, seed=7)  # different adapter weights
    assert not torch.allclose(logits(fresh, fresh_ctx, ids, ALPHAS), want)
    assert load_adapters(fresh, path) == {"objectives": "harmless,helpful"}
    assert torch.equal(logits(fresh, fresh_ctx, ids, ALPHAS), want)

    state = adapter_state_dict(model)
    assert all(k.rpartition(".")[2].startswith(("pblora_", "moslora_")) for k in state)
    assert not any("base_layer" in k for k in state)
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state_dict(fresh, dict(list(state.items())[1:]))


def test_inject_wraps_targets_and_freezes_base() -> None:
    model = tiny_llama()
    n_base = sum(p.numel() for p in model.parameters())
    ctx = PreferenceContext(K)
    wrappers = inject_adapters(model, pblora_factory(ctx))
    assert len(wrappers) == 2 * 3
    assert all(name.rpartition(".")[2] in TARGETS for name in wrappers)
    assert model.preference_context is ctx
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert sum(p.numel() for n, p in model.named_parameters() if n in frozen) == n_base
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_count_matches_formula(kind: str) -> None:
    _, model, _ = adapted_llama(kind)
    # tiny Llama: q 64->64, k and v 64->32 (2 kv heads of 16), 2 layers; d = hidden = 64
    shapes = [(64, 64), (64, 32), (64, 32)] * 2
    if kind == "pblora":  # METHODS §4.1: (r1+r2)(m+n) + r1^2 + k r2^2 per module
        r1 = r2 = 4
        want = sum((r1 + r2) * (m + n) + r1**2 + K * r2**2 for m, n in shapes)
    elif kind == "moslora-linear":  # r(m+n) + 2rd per module
        want = sum(8 * (m + n) + 2 * 8 * 64 for m, n in shapes)
    else:  # r(m+n) per module + one 2rd
        want = sum(8 * (m + n) for m, n in shapes) + 2 * 8 * 64
    assert count_adapter_parameters(model) == want


def test_pblora_7b_count_from_methods() -> None:
    """METHODS §4.1: 65,584 per LLaMA-7B q/k/v module with r1 = r2 = 4, k = 2."""
    r1 = r2 = 4
    assert (r1 + r2) * (4096 + 4096) + r1**2 + 2 * r2**2 == 65_584


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_adapters_not_base(kind: str) -> None:
    _, model, ctx = adapted_llama(kind)
    model.train()
    with ctx.use(ALPHAS):
        model(input_ids()).logits.logsumexp(-1).sum().backward()
    expected = {"pblora": {"A", "B", "W1", "Theta"}, "moslora": {"A", "B", "G"}}[kind[:7]]
    seen = set()
    for name, p in model.named_parameters():
        leaf = name.rpartition(".")[2]
        if leaf.startswith(("pblora_", "moslora_")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            seen.add(leaf.split("_", 1)[1])
        else:
            assert not p.requires_grad and p.grad is None, name
    assert seen == expected


def test_gradient_checkpointing_sees_the_alphas_set_for_training() -> None:
    """Checkpointed layers re-run their forward during backward: alphas set with ``set`` (one
    alpha per micro-batch, METHODS §4.2) are still there, and the gradients are unchanged."""
    grads = []
    for checkpointing in (False, True):
        _, model, ctx = adapted_llama("pblora")
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        ctx.set(torch.tensor([0.3, 0.7]))
        model(input_ids()).logits.logsumexp(-1).sum().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.pblora_Theta.grad)
    torch.testing.assert_close(grads[0], grads[1])


# --- dense formulas with random, non-identity cores and modulation ------------------------
# W(alpha) = I and G = 0 cannot tell a core from its transpose, or scale from shift: these
# tests build each update as the dense matrix of its equation, from random non-symmetric cores.


@pytest.mark.parametrize("grad", [True, False], ids=["training-path", "inference-path"])
def test_pblora_equals_its_dense_equation(grad: bool) -> None:
    """h = W0 x + s B blockdiag(W1, W2(alpha)) A x, W2(alpha) = reshape_{r2 x r2}(alpha^T Theta),
    s = lora_alpha / r2 (METHODS §4.1), per row, from a dense n x m delta-W per alpha."""
    base = linear()
    r1, r2 = 2, 3
    layer = PBLoRALinear(base, PreferenceContext(K), r1=r1, r2=r2, lora_alpha=6)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in (layer.pblora_A, layer.pblora_B, layer.pblora_W1, layer.pblora_Theta):
            p.copy_(torch.randn(p.shape, generator=g))
    W2_0 = layer.pblora_Theta[0].view(r2, r2)
    assert (W2_0 - W2_0.T).abs().max() > 0.1  # non-symmetric: a transposed core would differ
    x = torch.randn(len(ALPHAS), 5, 16, generator=g)
    with torch.set_grad_enabled(grad), layer.context.use(ALPHAS):
        got = layer(x)
    for row, alpha in enumerate(ALPHAS):
        W2 = (alpha @ layer.pblora_Theta).view(r2, r2)
        core = torch.block_diag(layer.pblora_W1, W2)
        delta_w = (6 / r2) * layer.pblora_B @ core @ layer.pblora_A  # (n, m)
        want = x[row] @ (base.weight + delta_w).T + base.bias
        torch.testing.assert_close(got[row], want.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("modulation", ["linear", "shared"])
@pytest.mark.parametrize("grad", [True, False], ids=["training-path", "inference-path"])
def test_affine_modulation_equals_its_dense_equation(modulation: str, grad: bool) -> None:
    """[gamma; delta] = G (alpha^T E); h = W0 x + s B ((1 + gamma) * (A x) + delta), s = lora_alpha
    / r (METHODS §5 step 2): the scale as a dense n x m matrix B diag(1 + gamma) A, the shift as a
    bias s B delta, with random G and E (gamma and delta both far from 0)."""
    base = linear()
    g = torch.Generator().manual_seed(8)
    E = torch.randn(K, 6, generator=g)
    ctx = PreferenceContext(K, descriptors=E)
    r = 4
    layer = ModulatedLoRALinear(base, ctx, r=r, lora_alpha=6, modulation=modulation)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in (layer.moslora_A, layer.moslora_B, layer.modulation_matrix()):
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(len(ALPHAS), 5, 16, generator=g)
    with torch.set_grad_enabled(grad), ctx.use(ALPHAS):
        got = layer(x)
    G = layer.modulation_matrix()
    for row, alpha in enumerate(ALPHAS):
        gd = G @ (alpha @ E)  # (2r,)
        gamma, delta = gd[:r], gd[r:]
        assert gamma.abs().min() > 0.01 and delta.abs().max() > 0.1
        scale = (6 / r) * layer.moslora_B @ torch.diag(1 + gamma) @ layer.moslora_A  # (n, m)
        shift = (6 / r) * layer.moslora_B @ delta  # (n,)
        want = x[row] @ (base.weight + scale).T + base.bias + shift
        torch.testing.assert_close(got[row], want.detach(), atol=1e-4, rtol=1e-4)
