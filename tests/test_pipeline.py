"""The run pipeline end to end on the tiny in-process model: resume, interruption, refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mobench import decoding, pipeline
from mobench.config import ConfigError
from mobench.resolve import resolve_spec
from mobench.runs import RunDirError


def _spec(**kw: Any) -> Any:
    return resolve_spec("safety", "genarm", "unit", device="cpu", **kw)


@pytest.fixture(scope="module")
def finished_run(unit_preset: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One complete unit run, shared: tests that modify a run work on a copy."""
    return pipeline.execute_run(_spec(), tmp_path_factory.mktemp("finished") / "run")


def _copy(run: Path, dest: Path, keep: tuple[str, ...] | None = None) -> Path:
    """Copy a run directory (only the names in ``keep`` when given)."""
    if keep is None:
        shutil.copytree(run, dest)
        return dest
    dest.mkdir()
    for name in keep:
        src = run / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    return dest


def _records(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        key = (rec["prompt_id"], rec["alpha_index"], rec.get("objective"))
        out[key] = rec
    return out


def test_full_run_writes_every_file_and_resumes_without_work(
    finished_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec()
    result = finished_run
    run = _copy(result.run_dir, tmp_path / "run")
    for name in (
        "spec.json",
        "env.json",
        "split.json",
        "generations.jsonl",
        "scores.jsonl",
        "metrics.json",
        "timing.json",
        "status.json",
    ):
        assert (run / name).exists(), name
    n_rows = 4 * 11
    assert result.generated == n_rows and result.scored == 2 * n_rows
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("objectives", "alphas", "points", "pareto", "hv", "hv_ref_point", "mip"):
        assert key in metrics
    assert metrics["objectives"] == ["helpful", "harmless"]
    assert len(metrics["points"]) == 11
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    split = json.loads((run / "split.json").read_text())
    assert len(split["test"]) == 8 and not set(split["test"]) & set(split["train"])
    timing = json.loads((run / "timing.json").read_text())
    assert timing["generate"]["rows"] == n_rows
    # GenARM on the base model itself: base + 2 ARMs as 3 lanes of one forward (mobench.fused)
    assert timing["generate"]["forwards_per_token"] == {"fused": 1}
    assert timing["generate"]["fused_lanes"] == 3
    assert timing["train"]["trainable_parameters"] > 0
    # each phase's own memory peak (issue 13 item 4), not the process's lifetime maximum RSS
    # (which every phase used to report, the same number for generation as for training)
    from mobench.memory import MemoryMeter, _status_mb

    if MemoryMeter("cpu").available:
        # the tiny model's decoding adds a few MB; the process holds hundreds (torch itself)
        resident = _status_mb("VmRSS")
        peak = timing["generate"]["peak_memory_mb"]
        assert peak is not None and 0 <= peak < 0.5 * resident
        assert 0 < timing["generate"]["weights_mb"] < 0.5 * resident
        assert timing["train"]["peak_memory_mb"] is not None

    # a re-run of the same spec loads no model and generates nothing
    def no_models(*a: Any, **k: Any) -> Any:
        raise AssertionError("resume must not load models")

    import mobench.models

    monkeypatch.setattr(mobench.models, "load_models", no_models)
    again = pipeline.execute_run(spec, run)
    assert (again.generated, again.scored) == (0, 0)
    assert again.metrics["hv"] == metrics["hv"] and again.metrics["mip"] == metrics["mip"]


def test_interrupted_run_resumes_to_the_uninterrupted_result(
    finished_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec()
    reference = finished_run.run_dir

    real = decoding.guided_generate
    calls = {"n": 0}

    def crash_on_third_batch(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash mid-generation")
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "guided_generate", crash_on_third_batch)
    # the same trained guide, nothing generated yet: generation is what gets interrupted
    target = _copy(reference, tmp_path / "interrupted", keep=("spec.json", "split.json", "guide"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.execute_run(spec, target)
    status = json.loads((target / "status.json").read_text())
    assert status["state"] == "failed" and "simulated crash" in status["error"]
    before = (target / "generations.jsonl").read_bytes()
    assert before.count(b"\n") == 2 * 8  # two finished batches of 8 rows were kept

    # resume: only the missing rows are generated; finished lines are kept byte for byte
    calls["n"] = 10
    resumed = pipeline.execute_run(spec, target)
    assert resumed.generated == 44 - 16
    assert (target / "generations.jsonl").read_bytes().startswith(before)

    gens_ref = _records(reference / "generations.jsonl")
    gens_new = _records(target / "generations.jsonl")
    assert gens_ref.keys() == gens_new.keys()
    for key, rec in gens_ref.items():
        assert gens_new[key]["text"] == rec["text"], key
    scores_ref = _records(reference / "scores.jsonl")
    scores_new = _records(target / "scores.jsonl")
    assert {k: v["value"] for k, v in scores_ref.items()} == {
        k: v["value"] for k, v in scores_new.items()
    }
    m_ref = json.loads((reference / "metrics.json").read_text())
    m_new = json.loads((target / "metrics.json").read_text())
    for key in ("points", "pareto", "hv", "mip"):
        assert m_new[key] == m_ref[key], key


def test_torn_last_line_is_dropped_and_redone(finished_run: Any, tmp_path: Path) -> None:
    spec = _spec()
    run = _copy(finished_run.run_dir, tmp_path / "run")
    gens = run / "generations.jsonl"
    lines = gens.read_text().splitlines(keepends=True)
    # simulate a crash while writing the last record
    gens.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    again = pipeline.execute_run(spec, run)
    assert again.generated == 1
    assert len(gens.read_text().splitlines()) == len(lines)
    assert all(json.loads(line) for line in gens.read_text().splitlines())


def test_a_different_spec_in_the_same_directory_is_refused(finished_run: Any) -> None:
    run = finished_run.run_dir
    with pytest.raises(RunDirError, match="different spec"):
        pipeline.execute_run(_spec(max_new_tokens=3), run)


def test_spec_hash_names_the_directory_and_changes_with_the_spec(unit_preset: Any) -> None:
    a, b = _spec(), _spec(max_new_tokens=3)
    assert a.run_name.startswith("safety__genarm__unit__") and a.hash8 != b.hash8
    assert _spec().hash8 == a.hash8  # deterministic


def test_bad_alphas_and_limits_are_config_errors(unit_preset: Any) -> None:
    with pytest.raises(ConfigError, match="3 weights but the task has 2 objectives"):
        _spec(alphas="0.2,0.3,0.5")
    with pytest.raises(ConfigError, match="sums to"):
        _spec(alphas="0.2,0.3")
    with pytest.raises(ConfigError, match="must be >= 0"):
        _spec(alphas="-0.5,1.5")
    with pytest.raises(ConfigError, match="--limit"):
        _spec(limit=0)
    with pytest.raises(ConfigError, match="unknown GenARMConfig field"):
        _spec(overrides={"method": {"lora_rank": 4}})


def test_custom_alphas_reuse_the_cached_guide(
    finished_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mobench.methods.genarm import GenARM

    def no_training(*a: Any, **k: Any) -> None:
        raise AssertionError("the guide depends on neither alphas nor --limit: reuse it")

    monkeypatch.setattr(GenARM, "train", no_training)
    spec = _spec(alphas="1,0;0.5,0.5;0,1", limit=2)
    result = pipeline.execute_run(spec, tmp_path / "run")
    assert result.metrics["alphas"] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    assert result.generated == 6
    timing = json.loads((result.run_dir / "timing.json").read_text())["train"]
    original = json.loads((finished_run.run_dir / "timing.json").read_text())["train"]
    assert timing["reused_from"] and timing["wall_s"] == original["wall_s"]
    # a change that matters for training (the learning rate) trains again
    other = _spec(limit=2, overrides={"method": {"learning_rate": 1e-4}})
    assert pipeline.guide_cache_key(other, _splits(other)) != timing["guide_key"]


def _splits(spec: Any) -> Any:
    from mobench.registry import get_task

    return get_task("safety")().load(spec)
