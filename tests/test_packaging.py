"""The wheel installs methods/ and tasks/ under the mobench import root, never at top level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_methods_and_tasks_under_mobench(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="the dev extra (python -m build) is not installed")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mobench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert "methods" not in top_level and "tasks" not in top_level, sorted(top_level)
    assert {"mobench"} <= top_level
    for required in (
        "mobench/cli.py",
        "mobench/decoding.py",
        "mobench/methods/genarm.py",
        "mobench/methods/preference_arm.py",
        "mobench/tasks/safety.py",
        "mobench/tasks/data/safety_tiny.jsonl",
        "mobench/py.typed",
        "mobench/templates/report.html.j2",
        "mobench/templates/report.css",
        "mobench/templates/report.js",
    ):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mobench = mobench.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
