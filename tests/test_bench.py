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

from mobench.bench import (
    BENCH_PRESETS,
    reference_decode,
    run_bench,
    token_agreement,
)
from mobench.config import GenerationConfig
from mobench.decoding import guided_generate, stock_attention
from mobench.memory import MemoryMeter
from mobench.models import ModelContext
from tests.conftest import build_llama
from tests.test_decoding import PROMPTS, _encode, random_lora_arms


def test_reference_loop_equals_mobench_loop(tiny_tokenizer: Any) -> None:
    """HF generate + the logits processor, one row at a time, gives the tokens of mobench's
    batched loop with the same (unfused) guide: the reference re-implementation does the same
    math, so the benchmark compares like with like."""
    from mobench.methods.genarm import GenARMGuide

    tok = tiny_tokenizer
    prompts = _encode(tok, PROMPTS)
    alphas = np.array([[0.2, 0.8], [0.7, 0.3], [1.0, 0.0]], dtype=np.float32)
    beta = 0.25  # the random tiny base alone repeats one token; amplify the guidance
    base = build_llama(tok)
    models = ModelContext(base, tok, "tiny", tok, "tiny", len(tok), "float32", "cpu")
    with stock_attention():
        guide = GenARMGuide(random_lora_arms(tok), len(tok), tok.pad_token_id)
    _, reference = reference_decode(
        models, guide, list(zip(prompts, alphas, strict=True)), max_new_tokens=8, beta=beta
    )
    ours = guided_generate(
        build_llama(tok),
        GenARMGuide(random_lora_arms(tok), len(tok), tok.pad_token_id),
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


def test_smoke_bench_writes_a_result_the_report_reads(tmp_path: Path) -> None:
    from mobench.report import load_bench_results

    preset = dataclasses.replace(
        BENCH_PRESETS["smoke"],
        dtypes=("float32",),
        methods=("genarm", "uniarm"),
        w2s_methods=("mod_w2s",),
    )
    result = run_bench(preset, tmp_path, log=lambda _: None)
    written = json.loads(Path(result["path"]).read_text())
    assert written["results"] == result["results"]
    configs = {e["config"] for e in written["results"]}
    assert configs == {*preset.methods, *(f"{m}-w2s" for m in preset.w2s_methods)}
    for entry in written["results"]:
        assert (
            entry["guided_unguided_ratio"] > 0
            and entry["row_tokens"] == result["settings"]["rows"] * preset.max_new_tokens
        )
        assert len(entry["times_s"]) == preset.repeats
        # mobench (fused, batched) and the reference loop (separate copies, batch 1) agree
        assert entry["reference"]["token_agreement"] == 1.0
        assert (entry["fused_lanes"] > 0) == (not entry["weak_to_strong"])
    assert {t["met"] for t in written["targets"]} <= {True, False}
    # the fused floor: plain decoding of twice the rows, reported with the guided/unguided checks
    floor = written["base"]["float32"]["x2_rows_over_base"]
    assert floor > 0 and written["base"]["float32"]["x2_rows_median_s"] > 0
    ratio_checks = [t for t in written["targets"] if "guided/unguided" in t["target"]]
    assert ratio_checks and all(f"{floor:.2f}x the base" in t["floor"] for t in ratio_checks)
    bench, warnings = load_bench_results(tmp_path)
    assert not warnings and {b.method for b in bench} == {e["method"] for e in written["results"]}
