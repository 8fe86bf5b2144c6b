"""Test helper: ``mobench run`` of the ``unit`` preset in a process of its own.

The ``unit`` preset is registered in-process by a pytest fixture, so a process started by
``torchrun`` cannot see it. This module registers the same preset (tests/conftest.py's
:func:`make_unit_preset` on the tiny model directory the test already saved) and then runs the
real CLI, so the launcher's RANK / WORLD_SIZE reach mobench exactly as they would in use:

    torchrun --nproc-per-node 2 -m tests.launch_unit_run MODEL_DIR --method genarm --out DIR
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from mobench.cli import main as cli_main
    from mobench.registry import register_preset
    from tests.conftest import make_unit_preset

    model_dir, *options = argv
    register_preset(make_unit_preset(model_dir))
    sys.argv = ["mobench", "run", "--task", "safety", "--preset", "unit", *options]
    cli_main()


if __name__ == "__main__":
    main(sys.argv[1:])
