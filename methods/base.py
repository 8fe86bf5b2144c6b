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
from typing import ClassVar

from mobench.interfaces import UnguidedMethod
from mobench.registry import register_method


@dataclass(frozen=True)
class BaseConfig:
    """The unguided base has nothing to configure: decoding settings belong to the run's
    generation config, shared with every method."""


@register_method("base")
class Base(UnguidedMethod):
    """Plain decoding of the frozen base model (the reference row of every leaderboard)."""

    name = "base"
    config_cls = BaseConfig
    steers: ClassVar[bool] = False
    reference_row: ClassVar[bool] = True
