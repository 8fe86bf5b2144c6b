"""``mobench bench``: its reference loop computes what mobench's loop computes, its memory meter
sees allocations, and a whole (smoke) benchmark writes a result the report can read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mobench import bench as bench_module
from mobench.bench import (
    BENCH_PRESETS,
    _check,
    reference_decode,
    run_bench,
    token_agreement,
)
from mobench.config import GenerationConfig
from mobench.decoding import guided_generate, stock_attention
from mobench.memory import MemoryMeter
from mobench.models import ModelContext
from tests.conftest import build_llama
from tests.test_decoding import PROMPTS, _encode, genarm_separate, random_lora_arms


def test_reference_loop_equals_mobench_loop(tiny_tokenizer: Any) -> None:
    """HF generate + the logits processor, one row at a time, gives the tokens of mobench's
    batched loop with the same (unfused) guide: the reference re-implementation does the same
    math, so the benchmark compares like with like."""
    tok = tiny_tokenizer
    prompts = _encode(tok, PROMPTS)
    alphas = np.array([[0.2, 0.8], [0.7, 0.3], [1.0, 0.0]], dtype=np.float32)
    beta = 0.25  # the random tiny base alone repeats one token; amplify the guidance
    base = build_llama(tok)
    models = ModelContext(base, tok, "tiny", tok, "tiny", len(tok), "float32", "cpu")
    with stock_attention():
        guide = genarm_separate(random_lora_arms(tok), tok)
    _, reference = reference_decode(
        models, guide, list(zip(prompts, alphas, strict=True)), max_new_tokens=8, beta=beta
    )
    ours = guided_generate(
        build_llama(tok),
        genarm_separate(random_lora_arms(tok), tok),
        prompts,
        torch.from_numpy(alphas),
        GenerationConfig(max_new_tokens=8, beta=beta),
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_ids=set(),
    )
    assert reference == ours.tokens
    assert all(len(row) == 8 for row in reference)  # no EOS stop: the same token budget
    assert len({tuple(r) for r in reference}) > 1
    # a model whose own generation config names an EOS the rows emit: generate() would stop
    # there (it fills eos_token_id=None from the model), the reference loop must not
    base.generation_config.eos_token_id = reference[0][2]
    _, again = reference_decode(
        models, guide, list(zip(prompts, alphas, strict=True)), max_new_tokens=8, beta=beta
    )
    assert again == reference
    assert base.generation_config.eos_token_id == reference[0][2]  # restored


def test_token_agreement() -> None:
    got = token_agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6]])
    assert got == {"token_agreement": 5 / 6, "identical_rows": 0.5, "mean_first_difference": 2.0}
    assert token_agreement([[1, 2]], [[1]])["token_agreement"] == 0.5  # a missing token differs


def test_peak_memory_sees_an_allocation() -> None:
    meter = MemoryMeter("cpu")
    if not meter.available:
        pytest.skip(meter.method)
    meter.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, then freed
    del block
    peak = meter.peak_mb()
    assert peak is not None and peak >= 60
    meter.start()
    assert (meter.peak_mb() or 0.0) < 60  # the next configuration starts clean


@pytest.mark.slow
def test_smoke_bench_writes_a_result_the_report_reads(tmp_path: Path) -> None:
    from mobench.report import load_bench_results

    preset = dataclasses.replace(
        BENCH_PRESETS["smoke"],
        methods=("genarm", "uniarm"),
        w2s_methods=("mod_w2s",),
    )
    result = run_bench(preset, tmp_path, log=lambda _: None)
    written = json.loads(Path(result["path"]).read_text())
    assert written["results"] == result["results"]
    configs = {(e["config"], e["dtype"]) for e in written["results"]}
    names = {*preset.methods, *(f"{m}-w2s" for m in preset.w2s_methods)}
    assert configs == {(n, d) for n in names for d in preset.dtypes}
    settings = written["settings"]
    # the reference loop covers every grid point, on several prompts
    assert settings["reference_rows"] == settings["alphas"] and settings["reference_prompts"] == 2
    for entry in written["results"]:
        assert (
            entry["guided_unguided_ratio"] > 0
            and entry["row_tokens"] == settings["rows"] * preset.max_new_tokens
        )
        assert len(entry["times_s"]) == preset.repeats == 3
        spread = entry["guided_unguided"]
        assert spread["min"] <= spread["median"] <= spread["max"]
        assert entry["min_s"] <= entry["median_s"] <= entry["max_s"]
        # the batched peer (HF generate, padded batches of two prompts' fronts) and the
        # reference loop decode what mobench decodes, in fp32
        peer = entry["batched_peer"]
        assert len(peer["times_s"]) == 3 and peer["peer_over_mobench"]["median"] > 0
        assert entry["reference"]["rows"] == settings["alphas"]
        if entry["dtype"] == "float32":
            assert entry["reference"]["token_agreement"] == 1.0
            assert peer["token_agreement"] == 1.0
            assert "bf16_vs_fp32" not in entry
        else:  # bf16 against the fp32 run of the same configuration, every row
            assert 0 <= entry["bf16_vs_fp32"]["token_agreement"] <= 1
        assert (entry["fused_lanes"] > 0) == (not entry["weak_to_strong"])
        # memory: loaded weights and decoding peak, measured per configuration
        assert entry["weights_mb"] > 0 and entry["decode_peak_mb"] is not None
        assert entry["peak_memory_mb"] == pytest.approx(
            entry["weights_mb"] + entry["decode_peak_mb"], abs=0.11
        )
    # weak-to-strong loads a second model: more weights than the base alone
    base_weights = written["base"]["float32"]["weights_mb"]
    w2s = next(e for e in written["results"] if e["config"] == "mod_w2s-w2s")
    assert w2s["weights_mb"] > base_weights
    assert "bf16_vs_fp32" in written["base"]["bfloat16"]
    assert {t["met"] for t in written["targets"]} <= {True, False}
    assert any("batched generate / mobench" in t["target"] for t in written["targets"])
    # the fused floor: plain decoding of twice the rows, reported with the guided/unguided checks
    floor = written["base"]["float32"]["x2_rows_over_base"]
    assert floor > 0 and written["base"]["float32"]["x2_rows_median_s"] > 0
    ratio_checks = [t for t in written["targets"] if "guided/unguided (float32)" in t["target"]]
    assert ratio_checks and all(f"{floor:.2f}x the base" in t["floor"] for t in ratio_checks)
    assert all(len(t["spread"]) == 2 for t in ratio_checks)
    bench, warnings = load_bench_results(tmp_path)
    assert not warnings and {b.method for b in bench} == {e["method"] for e in written["results"]}


@pytest.mark.slow
def test_smoke_bench_times_the_paper_baselines(tmp_path: Path) -> None:
    """RS and MOD replace the base (no base forward; the reference loops: generate on the
    interpolated model, and MOD's k policies with the driving model unused), prompting decodes
    the base with longer prompts and has no reference loop."""
    preset = dataclasses.replace(
        BENCH_PRESETS["smoke"],
        methods=("prompt", "rs", "mod"),
        w2s_methods=(),
        dtypes=("float32",),
    )
    result = run_bench(preset, tmp_path, log=lambda _: None)
    by_method = {e["method"]: e for e in result["results"]}
    assert set(by_method) == {"prompt", "rs", "mod"}
    assert by_method["rs"]["forwards_per_token"] == {"soup": 1}
    assert by_method["mod"]["forwards_per_token"] == {"guide": 1}
    assert by_method["mod"]["guide_lanes"] == 2  # both policies: lanes of one forward
    assert by_method["prompt"]["forwards_per_token"] == {"base": 1}
    for method in ("rs", "mod"):
        entry = by_method[method]
        assert entry["reference"]["token_agreement"] == 1.0
        assert entry["batched_peer"]["token_agreement"] == 1.0
        assert entry["guided_unguided_ratio"] > 0 and entry["memory_over_base"] is not None
    prompt = by_method["prompt"]
    assert prompt["reference"] is None and "batched_peer" not in prompt
    assert prompt["guided_unguided_ratio"] > 0
    assert not any(t["target"].startswith("prompt reference") for t in result["targets"])


def test_a_target_is_met_only_beyond_the_spread() -> None:
    within = _check("x", {"median": 1.4, "min": 1.3, "max": 1.6}, "<=", 1.5)
    assert within["met"] is False and "within the spread" in within["miss"]
    assert _check("x", {"median": 1.4, "min": 1.3, "max": 1.45}, "<=", 1.5)["met"] is True
    over = _check("x", {"median": 1.7, "min": 1.6, "max": 1.8}, "<=", 1.5)
    assert over["met"] is False and "over the limit" in over["miss"]
    assert _check("x", {"median": 7.0, "min": 5.9, "max": 8.0}, ">=", 6)["met"] is False
    assert _check("x", {"median": 7.0, "min": 6.1, "max": 8.0}, ">=", 6)["met"] is True


@pytest.mark.slow
def test_memory_target_fails_for_a_configuration_that_allocates_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PARM guide that also holds 256 MiB while it decodes: the bench measures it (decoding
    peak above the loaded weights) and its memory target fails; the base is measured alike."""
    meter = MemoryMeter("cpu")
    if not meter.available:
        pytest.skip(meter.method)
    real_method = bench_module._method

    def hog_method(name: str) -> Any:
        method = real_method(name)
        make_guide = method.guide

        def guide(*args: Any, **kwargs: Any) -> Any:
            g = make_guide(*args, **kwargs)
            real_prefill = g.prefill

            def prefill(*a: Any, **k: Any) -> Any:
                g.hog = torch.ones(64 * 2**20)  # 256 MiB, written; freed with the next batch
                return real_prefill(*a, **k)

            g.prefill = prefill
            return g

        method.guide = guide
        return method

    monkeypatch.setattr(bench_module, "_method", hog_method)
    preset = dataclasses.replace(
        BENCH_PRESETS["smoke"],
        dtypes=("float32",),
        methods=("parm",),
        w2s_methods=(),
        repeats=1,
        batched_peer=False,
        fused_floor=False,
    )
    result = run_bench(preset, None, log=lambda _: None)
    (entry,) = result["results"]
    base = result["base"]["float32"]
    assert entry["decode_peak_mb"] >= 250 > base["decode_peak_mb"] + 200
    (check,) = [t for t in result["targets"] if "memory" in t["target"]]
    assert check["met"] is False and check["value"] > 1.2
