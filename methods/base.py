"""``base``: the frozen base model alone, with no guide and no training.

Every front is read against this point: a method steers only as far as its per-alpha points move
away from it, and the unguided decode is the floor of the timing table. Decoding is the same
loop as every method's (:func:`mobench.decoding.guided_generate` with ``guide=None``), so the
rows, batching, caches and timing are identical; the answer does not depend on alpha, so its
"front" is one point repeated over the grid (and is expected not to steer).

Cost per token: 1 base forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mobench.config import RunSpec
from mobench.data import Splits
from mobench.interfaces import Method, Task
from mobench.models import ModelContext
from mobench.registry import register_method
from mobench.training import TrainerSettings


@dataclass(frozen=True)
class BaseConfig:
    """The unguided base has nothing to configure: decoding settings belong to the run's
    generation config, shared with every method."""


@register_method("base")
class Base(Method):
    """Plain decoding of the frozen base model (the reference row of every leaderboard)."""

    name = "base"
    config_cls = BaseConfig
    trains: ClassVar[bool] = False
    steers: ClassVar[bool] = False
    reference_row: ClassVar[bool] = True

    def train(
        self,
        task: Task,
        splits: Splits,
        spec: RunSpec,
        out_dir: Path,
        trainer: TrainerSettings | None = None,
    ) -> None:
        """Nothing to train (the pipeline does not call this for a method with ``trains``
        False; kept so the class satisfies the interface)."""

    def guide_spec(self, artifacts: Path, task: Task, models: ModelContext) -> None:
        return None

    def trainable_parameters(self, artifacts: Path) -> int:
        return 0

    @classmethod
    def estimated_forwards_per_token(cls, spec: RunSpec) -> dict[str, int] | None:
        return {"base": 1}
