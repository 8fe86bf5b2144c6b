"""The fused backbone (mobench.fused, LaneStepper, FusedGuide) equals the unfused models it
replaces: logits row by row, and greedy tokens through the one decoding loop (tiny models, fp32)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mobench.config import GenerationConfig
from mobench.decoding import CausalLMStepper, LaneStepper, guided_generate
from mobench.engine import GuideSpec, Lane, LoRA, SeparateModels
from mobench.fused import AdapterFormatError, inject_multi_lora, read_peft_lora
from mobench.interfaces import FusedGuide, Guide, Method
from mobench.models import ModelContext
from tests.conftest import build_llama
from tests.test_decoding import PROMPTS, _encode, random_lora_arms

OBJECTIVES = ("helpful", "harmless")
GRID = torch.tensor([[0.0, 1.0], [0.3, 0.7], [1.0, 0.0]])
BETA = 0.25  # amplifies the guidance: the random tiny base alone repeats one token


@pytest.fixture(scope="module")
def genarm_artifacts(tiny_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GenARM guide directory (as GenARM.train writes it) with two random LoRA ARMs."""
    out = tmp_path_factory.mktemp("genarm")
    for name, arm in zip(OBJECTIVES, random_lora_arms(tiny_tokenizer), strict=True):
        arm.save_pretrained(str(out / name), safe_serialization=True)
    config = {
        "objectives": list(OBJECTIVES),
        "adapters": {o: o for o in OBJECTIVES},
        "guide_model": "tiny",
    }
    (out / "guide_config.json").write_text(json.dumps(config))
    return out


def _context(
    tok: Any, fuse: bool, base: Any | None = None, guide_hidden: int | None = None
) -> ModelContext:
    """A fresh base (the fused guide modifies it) and a guide backbone: the base model itself, or
    with ``guide_hidden`` a smaller one that shares the tokenizer (weak-to-strong)."""
    w2s = guide_hidden is not None
    return ModelContext(
        base=base if base is not None else build_llama(tok),
        base_tokenizer=tok,
        base_source="tiny-large" if w2s else "tiny",
        guide_tokenizer=tok,
        guide_source="tiny",
        vocab_size=len(tok),
        dtype="float32",
        device="cpu",
        fuse=fuse,
        guide_loader=lambda: build_llama(tok),
    )


def _genarm(artifacts: Path, models: ModelContext) -> Guide | FusedGuide:
    from mobench.methods.genarm import GenARM, GenARMConfig

    from mobench.registry import get_task

    return GenARM(GenARMConfig()).guide(artifacts, get_task("safety")(), models)


def _decode(
    models: ModelContext, guide: Any, prompts: list[list[int]], alphas: torch.Tensor, **kw: Any
) -> Any:
    tok = models.base_tokenizer
    return guided_generate(
        models.base,
        guide,
        prompts,
        alphas,
        GenerationConfig(max_new_tokens=kw.pop("max_new_tokens", 10), beta=BETA),
        vocab_size=models.vocab_size,
        pad_token_id=tok.pad_token_id,
        eos_token_ids=kw.pop("eos", {tok.eos_token_id}),
        guide_prompt_ids=kw.pop("guide_prompt_ids", None),
    )


def _rows(tok: Any) -> tuple[list[list[int]], torch.Tensor]:
    """Every prompt with every alpha of GRID (prompts of different lengths: left padding)."""
    prompts = _encode(tok, PROMPTS)
    pairs = [(p, a) for p in range(len(prompts)) for a in range(len(GRID))]
    return [prompts[p] for p, _ in pairs], torch.stack([GRID[a] for _, a in pairs])


# ------------------------------------------------------------------------- multi-LoRA layer


def test_multilora_lanes_equal_base_and_each_peft_adapter(
    tiny_tokenizer: Any, genarm_artifacts: Path
) -> None:
    """Lane-major rows through one forward: lane 0 = the plain backbone, lane 1 + j = peft's
    model with adapter j, logits row by row; with no adapter lanes it is the backbone exactly."""
    from peft import PeftModel

    tok = tiny_tokenizer
    ids = torch.randint(0, len(tok), (2, 7), generator=torch.Generator().manual_seed(0))
    plain = build_llama(tok)
    want = [plain(ids).logits]
    for name in OBJECTIVES:
        want.append(
            PeftModel.from_pretrained(build_llama(tok), genarm_artifacts / name)(ids).logits
        )
    fused = build_llama(tok)
    layout = inject_multi_lora(fused, [read_peft_lora(genarm_artifacts / n) for n in OBJECTIVES])
    assert torch.equal(fused(ids).logits, want[0])  # default layout: every row plain, bit-exact
    layout.set(n_plain=1, adapters=[0, 1])
    got = fused(ids.repeat(3, 1)).logits.view(3, *ids.shape, -1)
    for lane in range(3):
        torch.testing.assert_close(got[lane], want[lane], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[0], want[0])  # plain rows are W0 x exactly
    assert not torch.allclose(want[1], want[2], atol=1e-2)  # the adapters really differ
    layout.set(n_plain=0, adapters=[1, 1, 0])  # any order, repeats allowed
    got = fused(ids.repeat(3, 1)).logits.view(3, *ids.shape, -1)
    for lane, adapter in enumerate([1, 1, 0]):
        torch.testing.assert_close(got[lane], want[1 + adapter], atol=1e-5, rtol=1e-5)


def test_read_peft_lora_refuses_what_it_would_not_reproduce(
    genarm_artifacts: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "dora"
    shutil.copytree(genarm_artifacts / "helpful", copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterFormatError, match="use_dora"):
        read_peft_lora(copy)
    with pytest.raises(AdapterFormatError, match=r"adapter_config\.json"):
        read_peft_lora(tmp_path)


def test_inject_refuses_an_adapter_of_another_backbone(
    tiny_tokenizer: Any, genarm_artifacts: Path
) -> None:
    wider = build_llama(tiny_tokenizer, hidden=128, layers=3)
    with pytest.raises(AdapterFormatError, match="another model"):
        inject_multi_lora(wider, [read_peft_lora(genarm_artifacts / "helpful")])


def test_lane_stepper_drop_equals_the_kept_rows_alone(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    prompts = _encode(tok, PROMPTS)
    model = build_llama(tok)
    lanes = LaneStepper(model, 2, len(tok), tok.pad_token_id)
    lanes.prefill([prompts, prompts[::-1]])
    lanes.drop(torch.tensor([2, 0]))
    got = lanes.step(torch.tensor([5, 9]))
    alone = CausalLMStepper(model, len(tok), tok.pad_token_id)
    alone.prefill([prompts[2], prompts[0], prompts[0], prompts[2]])
    want = alone.step(torch.tensor([5, 9, 5, 9]))
    torch.testing.assert_close(got.reshape(4, -1), want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ every method


METHODS = ["genarm", "parm", "uniarm", "mod_w2s"]
SETUPS = ["same-backbone", "weak-to-strong"]


def _method(name: str) -> Any:
    from mobench.registry import get_method

    cls = get_method(name)
    return cls(cls.config_cls())


def _models(tok: Any, setup: str, fuse: bool) -> ModelContext:
    big = build_llama(tok, hidden=128, layers=3, seed=1) if setup == "weak-to-strong" else None
    return _context(tok, fuse, base=big, guide_hidden=128 if big is not None else None)


@pytest.fixture(scope="module")
def random_guides(tiny_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each method's random_guide on the tiny guide backbone (shared by both setups: the guide
    model is the same tiny model, only the base differs)."""
    from mobench.registry import get_task

    out = {}
    for name in METHODS:
        path = tmp_path_factory.mktemp(name)
        _method(name).random_guide(get_task("safety")(), _context(tiny_tokenizer, True), path, 0)
        out[name] = path
    return out


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("method", METHODS)
def test_fused_equals_unfused_for_every_method(
    tiny_tokenizer: Any, random_guides: dict[str, Path], method: str, setup: str
) -> None:
    """For each method's guide (random weights of the trained shapes): fused and unfused give
    the same base log-probs and guidance at prefill and at a step, and the same greedy tokens
    through guided_generate with rows leaving the batch at EOS on the way. Fused = the base and
    guide rows in one forward of the base's weights (same backbone), or the guide's models in
    one forward of the small backbone (weak-to-strong)."""
    from mobench.registry import get_task

    tok, task = tiny_tokenizer, get_task("safety")()
    prompts, alphas = _rows(tok)
    unfused_ctx = _models(tok, setup, fuse=False)
    fused_ctx = _models(tok, setup, fuse=True)
    unfused = _method(method).guide(random_guides[method], task, unfused_ctx)
    fused = _method(method).guide(random_guides[method], task, fused_ctx)
    assert isinstance(unfused, Guide)
    assert isinstance(fused, FusedGuide if setup == "same-backbone" else Guide)

    # log-probs: prefill, a step, rows leaving the batch, another step
    base = CausalLMStepper(unfused_ctx.base, len(tok), tok.pad_token_id)
    nxt, keep = torch.arange(len(prompts)) + 7, torch.tensor([6, 0, 4, 5])
    want = [(base.prefill(prompts), unfused.prefill(prompts, alphas))]
    want.append((base.step(nxt), unfused.step(nxt)))
    base.drop(keep)
    unfused.drop(keep)
    want.append((base.step(nxt[keep]), unfused.step(nxt[keep])))
    if isinstance(fused, FusedGuide):
        got = [fused.prefill(prompts, prompts, alphas), fused.step(nxt)]
        fused.drop(keep)
        got.append(fused.step(nxt[keep]))
    else:
        fused_base = CausalLMStepper(fused_ctx.base, len(tok), tok.pad_token_id)
        got = [(fused_base.prefill(prompts), fused.prefill(prompts, alphas))]
        got.append((fused_base.step(nxt), fused.step(nxt)))
        fused_base.drop(keep)
        fused.drop(keep)
        got.append((fused_base.step(nxt[keep]), fused.step(nxt[keep])))
    for (got_base, got_guide), (want_base, want_guide) in zip(got, want, strict=True):
        torch.testing.assert_close(got_base, want_base, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_guide, want_guide, atol=1e-5, rtol=1e-5)
    # the guidance is not trivial: it depends on alpha (rows 0 and 2: alpha (0, 1) and (1, 0))
    assert (want[0][1][0] - want[0][1][2]).abs().max() > 1e-3

    # greedy tokens through the loop
    got_out = _decode(fused_ctx, fused, prompts, alphas)
    assert got_out.tokens == _decode(unfused_ctx, unfused, prompts, alphas).tokens


@pytest.mark.parametrize("method", METHODS)
def test_fused_with_another_guide_template(
    tiny_tokenizer: Any, random_guides: dict[str, Path], method: str
) -> None:
    """Same backbone, but the guide's prompts differ from the base's (another template): the
    fused lanes take each model's own prompt (MOD-w2s then keeps a separate reference lane)."""
    from mobench.registry import get_task

    tok, task = tiny_tokenizer, get_task("safety")()
    prompts, alphas = _rows(tok)
    guide_prompts = [[tok.bos_token_id, *p[:-1]] for p in prompts]
    outs = []
    for fuse in (False, True):
        ctx = _context(tok, fuse)
        guide = _method(method).guide(random_guides[method], task, ctx)
        outs.append(_decode(ctx, guide, prompts, alphas, guide_prompt_ids=guide_prompts))
    assert outs[0].tokens == outs[1].tokens
    if method == "mod_w2s":
        assert outs[1].fused_lanes == 4  # base, reference, 2 policies


def _token_of_half_the_rows(rows: list[list[int]]) -> int:
    """A token that about half of the rows generate after their first two tokens: as EOS it
    makes rows leave the batch at different steps."""
    counts: dict[int, int] = {}
    for row in rows:
        for t in set(row[2:]):
            counts[t] = counts.get(t, 0) + 1
    return min(counts, key=lambda t: (abs(counts[t] - len(rows) / 2), t))


# --------------------------------------------------------------------------------- GenARM


@pytest.mark.parametrize("w2s", [False, True], ids=["same-backbone", "weak-to-strong"])
def test_genarm_fused_equals_unfused_greedy_tokens(
    tiny_tokenizer: Any, genarm_artifacts: Path, w2s: bool
) -> None:
    """Same greedy tokens through guided_generate, fused (base + ARMs in one forward; or, for a
    smaller guide model, the ARMs in one forward of it) and unfused, with rows leaving the batch
    at EOS on the way."""
    tok = tiny_tokenizer
    prompts, alphas = _rows(tok)
    hidden = 128 if w2s else None
    big = (lambda: build_llama(tok, hidden=128, layers=3, seed=1)) if w2s else (lambda: None)
    unfused_ctx = _context(tok, fuse=False, base=big(), guide_hidden=hidden)
    plain = _decode(unfused_ctx, _genarm(genarm_artifacts, unfused_ctx), prompts, alphas)
    eos = {_token_of_half_the_rows(plain.tokens)}  # rows drop out mid-way
    unfused = _decode(unfused_ctx, _genarm(genarm_artifacts, unfused_ctx), prompts, alphas, eos=eos)
    fused_ctx = _context(tok, fuse=True, base=big(), guide_hidden=hidden)
    guide = _genarm(genarm_artifacts, fused_ctx)
    assert isinstance(guide, Guide if w2s else FusedGuide)
    fused = _decode(fused_ctx, guide, prompts, alphas, eos=eos)
    assert fused.tokens == unfused.tokens
    assert fused.finish_reasons == unfused.finish_reasons
    assert 0 < unfused.finish_reasons.count("eos") < len(prompts)
    assert len({tuple(t) for t in unfused.tokens}) > len(PROMPTS)  # alpha changes the text
    if not w2s:
        assert fused.forwards == {"fused": unfused.forwards["base"]}
        assert unfused.forwards["guide"] == 2 * unfused.forwards["base"]


# ------------------------------------------------------------------------------ the engine


class _ContrastConfig:
    """No settings: the test method below only states its lanes and weights."""


class Contrast(Method):
    """A method written against the public interface only, with no speed code: two LoRA lanes
    (GenARM-shaped folders) weighted ``w_0 = alpha_0 + alpha_1 / 2`` and ``w_1 = -alpha_1``
    (not on the simplex, to exercise signed weights)."""

    name = "contrast"
    config_cls = _ContrastConfig

    def train(self, task: Any, splits: Any, spec: Any, out_dir: Path) -> None:
        raise NotImplementedError

    def trainable_parameters(self, artifacts: Path) -> int:
        return 0

    def guide_spec(self, artifacts: Path, task: Any, models: ModelContext) -> GuideSpec:
        def weights(alphas: torch.Tensor) -> torch.Tensor:
            return torch.stack([alphas[:, 0] + alphas[:, 1] / 2, -alphas[:, 1]])

        lanes = tuple(Lane(LoRA(artifacts / name, name)) for name in OBJECTIVES)
        return GuideSpec(lanes, weights)


@pytest.mark.parametrize("setup", SETUPS)
def test_a_method_without_speed_code_gets_the_fused_path(
    tiny_tokenizer: Any, genarm_artifacts: Path, setup: str
) -> None:
    """The test-only method above runs fused (base and its lanes in one forward of the base's
    weights; or its lanes in one forward of the guide backbone), with the tokens of the separate
    models, and its guidance is its own weighted sum of the lanes' log-probs."""
    tok = tiny_tokenizer
    prompts, alphas = _rows(tok)
    unfused_ctx, fused_ctx = _models(tok, setup, fuse=False), _models(tok, setup, fuse=True)
    unfused = Contrast(_ContrastConfig()).guide(genarm_artifacts, None, unfused_ctx)
    fused = Contrast(_ContrastConfig()).guide(genarm_artifacts, None, fused_ctx)
    assert isinstance(unfused, SeparateModels)
    want = _decode(unfused_ctx, unfused, prompts, alphas)
    got = _decode(fused_ctx, fused, prompts, alphas)
    assert got.tokens == want.tokens
    if setup == "same-backbone":
        assert isinstance(fused, FusedGuide) and got.fused_lanes == 3
        assert got.forwards == {"fused": want.forwards["base"]}
    else:
        assert fused.forwards_per_token == {"guide": 1} and fused.lanes == 2
    # the guidance is the method's formula over the lanes' own log-probs
    arms = [m.stepper for m in unfused.models]
    with torch.inference_mode():
        lps = [arm.prefill(prompts) for arm in arms]
        guidance = unfused.prefill(prompts, alphas)
    w0, w1 = alphas[:, :1] + alphas[:, 1:] / 2, -alphas[:, 1:]
    torch.testing.assert_close(guidance, w0 * lps[0] + w1 * lps[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
def test_a_lane_with_zero_weight_for_every_row_is_not_run(
    tiny_tokenizer: Any, genarm_artifacts: Path, fuse: bool
) -> None:
    """GenARM with alpha = (1, 0) on every row runs the helpful ARM only (GenARM's script drops
    an ARM whose alpha is 0), and those rows' guidance equals the same rows in a batch where
    both ARMs run."""
    tok = tiny_tokenizer
    prompts = _encode(tok, PROMPTS)
    one_hot = torch.tensor([[1.0, 0.0]]).repeat(len(prompts), 1)
    ctx = _context(tok, fuse)
    guide = _genarm(genarm_artifacts, ctx)
    out = _decode(ctx, guide, prompts, one_hot)
    if fuse:
        assert out.fused_lanes == 2  # the base and one ARM (both ARMs: 3)
    else:
        assert out.forwards["guide"] == out.forwards["base"]  # one ARM forward per token
    mixed = torch.cat([one_hot, torch.tensor([[0.0, 1.0]]).repeat(len(prompts), 1)])
    with torch.inference_mode():
        if fuse:
            alone = guide.prefill(prompts, prompts, one_hot)[1]
            both = guide.prefill(prompts * 2, prompts * 2, mixed)[1]
        else:
            alone = guide.prefill(prompts, one_hot)
            both = guide.prefill(prompts * 2, mixed)
    torch.testing.assert_close(alone, both[: len(prompts)], atol=1e-5, rtol=1e-5)
    assert (both[len(prompts) :] - alone).abs().max() > 1e-3  # the other ARM does differ


class _Gated(Method):
    """Test-only: PARM's conditioned lane weighted by alpha_0, so a batch of alpha_0 = 0 rows does
    not run it (the adapters stay injected in the fused base and must leave its rows plain)."""

    name = "gated"
    config_cls = _ContrastConfig

    def __init__(self, parm_artifacts: Path) -> None:
        super().__init__(_ContrastConfig())
        self.parm_artifacts = parm_artifacts

    def train(self, task: Any, splits: Any, spec: Any, out_dir: Path) -> None:
        raise NotImplementedError

    def trainable_parameters(self, artifacts: Path) -> int:
        return 0

    def guide_spec(self, artifacts: Path, task: Any, models: ModelContext) -> GuideSpec:
        parm = _method("parm").guide_spec(self.parm_artifacts, task, models)
        return GuideSpec(parm.lanes, lambda alphas: alphas[:, :1].T)


def test_a_conditioned_lane_with_zero_weight_leaves_the_base_rows_plain(
    tiny_tokenizer: Any, random_guides: dict[str, Path]
) -> None:
    """A batch whose conditioned lane is skipped gets the plain base's log-probs and zero
    guidance, after a batch that did run it (the adapter's per-row state of that batch must not
    leak into this one)."""
    from mobench.registry import get_task

    tok, task = tiny_tokenizer, get_task("safety")()
    prompts = _encode(tok, PROMPTS)
    ctx = _context(tok, fuse=True)
    guide = _Gated(random_guides["parm"]).guide(random_guides["parm"], task, ctx)
    assert isinstance(guide, FusedGuide)
    first = torch.tensor([[1.0, 0.0]]).repeat(len(prompts), 1)
    plain = CausalLMStepper(_context(tok, fuse=True).base, len(tok), tok.pad_token_id)
    with torch.inference_mode():
        _, ran = guide.prefill(prompts, prompts, first)
        assert guide.lanes == 2 and ran.abs().max() > 0.1
        skipped_base, skipped = guide.prefill(prompts[:2], prompts[:2], first[:2].flip(1))
        assert guide.lanes == 1 and skipped.abs().max() == 0
        torch.testing.assert_close(skipped_base, plain.prefill(prompts[:2]), atol=1e-6, rtol=0)
        nxt = torch.tensor([5, 9])
        torch.testing.assert_close(guide.step(nxt)[0], plain.step(nxt), atol=1e-6, rtol=0)
