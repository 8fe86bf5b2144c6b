"""The command line through typer's CliRunner (in process) and one subprocess for import cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from mobench.cli import app

runner = CliRunner()


def _one_line_error(result: Any) -> str:
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert len(out.splitlines()) == 1, out
    return out


def test_unknown_method_task_and_preset_exit_2_with_one_line() -> None:
    out = _one_line_error(runner.invoke(app, ["run", "--method", "genarn", "--task", "safety"]))
    assert "unknown method 'genarn'" in out and "did you mean 'genarm'" in out and "known:" in out
    out = _one_line_error(runner.invoke(app, ["run", "--method", "genarm", "--task", "safty"]))
    assert "unknown task 'safty'" in out and "did you mean 'safety'" in out
    out = _one_line_error(
        runner.invoke(app, ["run", "--method", "genarm", "--task", "safety", "--preset", "tine"])
    )
    assert "'tine'" in out and "did you mean 'tiny'" in out


def test_wrong_alpha_dimension_exits_2_with_one_line() -> None:
    result = runner.invoke(
        app, ["run", "--method", "genarm", "--task", "safety", "--alphas", "0.2,0.3,0.5"]
    )
    out = _one_line_error(result)
    assert "3 weights" in out and "2 objectives (helpful, harmless)" in out


def test_bad_set_option_exits_2() -> None:
    result = runner.invoke(
        app, ["run", "--method", "genarm", "--task", "safety", "--set", "nonsense"]
    )
    assert "section.field=value" in _one_line_error(result)


def test_ls_lists_methods_tasks_presets() -> None:
    assert "genarm" in runner.invoke(app, ["ls", "methods"]).output
    assert "safety" in runner.invoke(app, ["ls", "tasks"]).output
    assert "safety/tiny" in runner.invoke(app, ["ls", "presets"]).output


def test_help_and_ls_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mobench.cli import app\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        "assert r.invoke(app, ['ls', 'presets']).exit_code == 0\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_run_prints_table_hv_mip_and_resumes(unit_preset: Any, tmp_path: Path) -> None:
    args = [
        "run",
        "--method",
        "genarm",
        "--task",
        "safety",
        "--preset",
        "unit",
        "--device",
        "cpu",
        "--limit",
        "2",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    import torch

    threads_before = torch.get_num_threads()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    # --threads holds for the run (env.json records it) and is given back afterwards
    assert json.loads((tmp_path / "run" / "env.json").read_text())["torch_threads"] == 1
    assert torch.get_num_threads() == threads_before
    assert "HV  =" in first.output and "MIP =" in first.output
    assert "mean helpful" in first.output and str(tmp_path / "run") in first.output.replace(
        "\n", ""
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"{metrics['hv']:.4f}" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "nothing to do" in second.output

    # `mobench score` re-scores without generating: delete the scores and recompute them
    scores = (tmp_path / "run" / "scores.jsonl").read_text()
    (tmp_path / "run" / "scores.jsonl").unlink()
    rescored = runner.invoke(app, ["score", str(tmp_path / "run")])
    assert rescored.exit_code == 0, rescored.output
    assert sorted((tmp_path / "run" / "scores.jsonl").read_text().splitlines()) == sorted(
        scores.splitlines()
    )


def test_run_and_bench_refuse_fewer_than_one_thread() -> None:
    for command in (["run", "--method", "genarm", "--task", "safety"], ["bench"]):
        out = _one_line_error(runner.invoke(app, [*command, "--threads", "0"]))
        assert "--threads must be at least 1" in out


def test_score_on_a_non_run_directory_exits_2(tmp_path: Path) -> None:
    assert "no spec.json" in _one_line_error(runner.invoke(app, ["score", str(tmp_path)]))
