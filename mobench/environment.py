"""The environment a run or a benchmark ran in, for provenance (``env.json``, bench results):
versions, hardware, threads, allocator settings, git commit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import subprocess
from pathlib import Path
from typing import Any

from mobench import __version__, allocator
from mobench.config import RunSpec


def environment(spec: RunSpec) -> dict[str, Any]:
    """Versions and hardware, for provenance (env.json)."""
    return environment_info(spec.device, spec.dtype)


def environment_info(device: str, dtype: str) -> dict[str, Any]:
    """Versions and hardware for a run on ``device`` in ``dtype`` (env.json, bench results)."""
    import importlib.metadata as md

    import torch

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    git_sha = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git_sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    device_name = platform.processor() or platform.machine()
    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(0)
    return {
        "mobench": __version__,
        "git_sha": git_sha,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            p: version(p)
            for p in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "pymoo")
        },
        "device": device,
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "malloc": allocator.describe(),
        "dtype": dtype,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
