"""The ``base`` method: the frozen model alone, run and recorded like any method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobench import pipeline
from mobench.registry import METHODS
from mobench.resolve import describe_run, resolve_spec


def test_base_is_listed_and_runs_like_any_method(unit_preset: Any, tmp_path: Path) -> None:
    assert "base" in METHODS.names()
    spec = resolve_spec("safety", "base", "unit", device="cpu")
    assert spec.method_config == {}  # the preset's ARM training sizes do not apply
    result = pipeline.execute_run(spec, tmp_path / "run")
    run = result.run_dir
    n_rows = 4 * len(spec.alphas)
    assert result.generated == n_rows and result.scored == 2 * n_rows
    timing = json.loads((run / "timing.json").read_text())
    assert "train" not in timing  # nothing was trained
    assert timing["generate"]["forwards_per_token"] == {"base": 1}
    assert not (run / "guide").exists()
    # no guide: every alpha of a prompt decodes to the same answer
    texts: dict[str, set[str]] = {}
    for line in (run / "generations.jsonl").read_text().splitlines():
        rec = json.loads(line)
        texts.setdefault(rec["prompt_id"], set()).add(rec["text"])
    assert len(texts) == 4 and all(len(t) == 1 for t in texts.values())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "base" and len(metrics["points"]) == len(spec.alphas)
    # a resume does nothing
    again = pipeline.execute_run(spec, tmp_path / "run")
    assert again.generated == 0 and again.scored == 0


def test_base_dry_run_counts_one_forward_per_token(unit_preset: Any) -> None:
    spec = resolve_spec("safety", "base", "unit", device="cpu")
    plan = describe_run(spec)
    assert plan["work"]["generate"]["evaluations_per_token"] == {"base": 1}


def test_a_method_run_beside_a_base_run_records_its_gain_over_base(
    unit_preset: Any, tmp_path: Path
) -> None:
    import numpy as np

    base = pipeline.execute_run(
        resolve_spec("safety", "base", "unit", device="cpu"), tmp_path / "base"
    )
    guided = pipeline.execute_run(
        resolve_spec("safety", "genarm", "unit", device="cpu"), tmp_path / "genarm"
    )
    base_metrics = json.loads((base.run_dir / "metrics.json").read_text())
    assert "gain_over_base" not in base_metrics["steering"]  # the base is its own reference
    assert base_metrics["steering"]["expected_to_steer"] is False
    steering = json.loads((guided.run_dir / "metrics.json").read_text())["steering"]
    gain = steering["gain_over_base"]
    assert Path(gain["base_run"]) == base.run_dir
    base_point = np.mean(base_metrics["points"], axis=0)
    assert np.allclose(gain["base_point"], base_point)
    expected = np.asarray(json.loads((guided.run_dir / "metrics.json").read_text())["points"])
    assert np.allclose(gain["delta"], expected - base_point)
    for key in ("objectives", "answers_changed", "score_correlation", "steers", "warnings"):
        assert key in steering
