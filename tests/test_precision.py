"""bf16 numerics (issue 13, item 3): on a bf16 backbone the adapters compute in fp32 and their
update is added to the base output in fp32, rounded once (as peft's fp32 LoRA on a bf16 base),
and decode_attention keeps the scores QK^T in fp32 before the softmax."""

from __future__ import annotations

import copy

import torch
from mobench.methods.parm import PBLoRALinear
from mobench.methods.preference_arm import PreferenceContext
from mobench.methods.uniarm import ModulatedLoRALinear
from torch import nn

from mobench.decoding import decode_attention
from mobench.fused import LaneLayout, MultiLoRALinear

BF16 = torch.bfloat16


def _bf16_linear(m: int, n: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(m, n, bias=False).to(BF16)


def _bit_equal_fraction(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.dtype == want.dtype == BF16
    return (got == want).float().mean().item()


def test_multilora_on_bf16_backbone_rounds_once_like_peft() -> None:
    """Adapter rows equal round_bf16(W0 x + s B A x) with the update in fp32 (peft's numerics);
    plain rows stay W0 x bit for bit. bf16 A/B (the old behaviour) differ in most elements."""
    base = _bf16_linear(64, 48, 0)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 64, generator=gen), torch.randn(48, 8, generator=gen)
    layer = MultiLoRALinear(base, [(a, b, 0.5)], LaneLayout(n_plain=1, adapters=[0]))
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    x = torch.randn(2 * 5, 64, generator=gen).to(BF16)  # lane-major: 5 plain rows, 5 adapter rows
    with torch.no_grad():
        got = layer(x)
        plain = base(x)
        update = 0.5 * (x[5:].float() @ a.T) @ b.T
        want = (plain[5:].float() + update).to(BF16)
    assert torch.equal(got[:5], plain[:5])
    assert _bit_equal_fraction(got[5:], want) >= 0.99
    # the update must matter, or the comparison says nothing
    assert _bit_equal_fraction(got[5:], plain[5:]) < 0.1


def _fp32_update(layer: nn.Module, x: torch.Tensor, ctx: PreferenceContext) -> torch.Tensor:
    """The layer's update computed entirely in fp32 (a fp32 copy of the bf16 base)."""
    layer32 = copy.deepcopy(layer).float()
    object.__setattr__(layer32, "context", ctx)
    with torch.no_grad():
        return layer32(x.float()) - layer32.base_layer(x.float())


def test_preference_adapters_on_bf16_backbone_compute_in_fp32() -> None:
    """PBLoRA and MoSLoRA keep fp32 parameters on a bf16 base and compute in fp32 on both
    paths (inference tail and general): the result is the fp32 sum rounded once to bf16."""
    gen = torch.Generator().manual_seed(2)
    alphas = torch.tensor([[0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    for kind in ("pblora", "moslora"):
        ctx = PreferenceContext(2, descriptors=torch.randn(2, 6, generator=gen))
        base = _bf16_linear(32, 24, 3)
        layer: nn.Module
        if kind == "pblora":
            layer = PBLoRALinear(base, ctx, r1=2, r2=3, lora_alpha=6.0)
        else:
            layer = ModulatedLoRALinear(base, ctx, r=4, lora_alpha=8.0)
        with torch.no_grad():  # non-zero B and G, so the update is not zero
            for name, p in layer.named_parameters():
                if name.split("_")[0] in ("pblora", "moslora"):
                    p.copy_(torch.randn(p.shape, generator=gen))
        assert all(p.dtype == torch.float32 for p in layer.parameters() if p.requires_grad)
        x = torch.randn(3, 4, 32, generator=gen).to(BF16)
        with ctx.use(alphas):
            update = _fp32_update(layer, x, ctx)
            want = (base(x).float() + update).to(BF16)
            with torch.no_grad():  # the decoding path (active rows a tail)
                got = layer(x)
            got_general = layer(x).detach()  # gradients on: the general path
        assert _bit_equal_fraction(got, want) >= 0.99, kind
        assert _bit_equal_fraction(got_general, want) >= 0.99, kind
        assert _bit_equal_fraction(want, base(x).detach()) < 0.1, kind


def test_decode_attention_keeps_scores_in_fp32_on_bf16() -> None:
    """Scores near 200 that differ by about one (bf16's spacing there is 1): rounding them to
    bf16 before the softmax changes the attention weights by tens of percent; computed in fp32
    the output equals an fp32-score reference up to the bf16 rounding of the result."""
    gen = torch.Generator().manual_seed(4)
    module = nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True  # type: ignore[assignment]
    dim, kv = 64, 12
    query = (torch.randn(3, 4, 1, dim, generator=gen) * 2).to(BF16)
    mean_q = query.float().view(3, 2, 2, dim).mean(2, keepdim=True)  # per kv head
    shared = mean_q * 200 / (mean_q * mean_q).sum(-1, keepdim=True)  # mean_q . shared = 200
    key = (shared + 0.05 * torch.randn(3, 2, kv, dim, generator=gen)).to(BF16)
    value = torch.randn(3, 2, kv, dim, generator=gen).to(BF16)
    got, _ = decode_attention(module, query, key, value, None, scaling=1.0)
    # reference: fp32 scores and softmax; probabilities meet the values in bf16 (as eager)
    q = query.float().view(3, 2, 2, dim)
    scores = q @ key.float().transpose(-1, -2)
    assert 150 < scores.mean() < 250 and scores.std(-1).mean() > 0.5  # the regime described
    probs = torch.softmax(scores, dim=-1).to(BF16)
    want = (probs @ value).reshape(3, 1, 4, dim)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1e-2)
    # what rounding the scores to bf16 would give: far off (so this test can fail)
    rounded = torch.softmax(scores.to(BF16).float(), dim=-1).to(BF16)
    assert ((rounded @ value).reshape(3, 1, 4, dim).float() - want.float()).abs().max() > 0.1
