"""Configuration as data: generation and training settings, presets, alpha grids, the RunSpec.

Everything here is a frozen dataclass with a JSON round trip. A run is fully described by its
:class:`RunSpec`; the run directory's name carries the first 8 hex digits of the sha256 of the
spec's canonical JSON, so two runs with the same spec share a directory and resume each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: 2: the spec names every model's identity (``models``) and the scorers' dtype
SCHEMA_VERSION = 2


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the problem and the fix."""


@dataclass(frozen=True)
class GenerationConfig:
    """How the shared decoding loop picks tokens (METHODS §12.1)."""

    max_new_tokens: int = field(default=512, metadata={"help": "new-token cap (papers: 512)"})
    sampling: bool = field(
        default=False,
        metadata={"help": "False: greedy on the combined log-probs (PARM-faithful default)"},
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling; 1.0 = off (GenARM)"})
    beta: float = field(
        default=1.0, metadata={"help": "guidance strength: log pi_base + guide / beta (papers: 1)"}
    )
    seed: int = field(default=0, metadata={"help": "per-row sampling seeds derive from it"})


@dataclass(frozen=True)
class Preset:
    """One task at one scale: models, data, sizes and scorers. Any field can be overridden.

    Attributes:
        name: preset name ("tiny", "mini", "paper").
        task: the task this preset belongs to.
        description: one line for ``mobench ls presets``.
        base_model: the frozen generator: hub id, local directory, GGUF file, or a packaged alias.
        guide_model: the backbone the guide is trained on; None = same as ``base_model``.
        data: the data source: hub id, local file, or ``builtin:NAME`` (ships in mobench.tasks).
        split_sizes: (train, validation, test) rows after a seeded shuffle.
        split_seed: the shuffle seed (split ids are saved in the run directory either way).
        test_limit: how many test prompts to generate for (None = all).
        generation: decoding settings.
        training: overrides applied to the method's config (e.g. a step budget for CPU).
        method_training: per method name, overrides applied after ``training`` (for fields only
            some methods have, such as GenARM's and PARM's ``beta_r``).
        scorers: objective -> scorer spec ``KIND:SOURCE`` (the task builds them).
        hv_ref_point: the HV reference point of this (task, preset), in objective order.
        grid: alpha grid name (see :func:`alpha_grid`).
        dtype: "auto" | "float32" | "bfloat16" | "float16" (base model and guides).
        scorer_dtype: the scorers' dtype, float32 by default: a bf16 score depends on how many
            threads (and so processes) computed it, fp32 does not; scorers are cheap next to
            generation.
        batch_size: decoding rows per batch (an execution detail, not part of the spec hash).
        templates: model source -> prompt template with ``{prompt}``, for models without a chat
            template or where the paper used a specific one.
        task_options: how the task prepares its data (relabelling, filters, ...); keys and
            defaults are the task's ``default_options``; unknown keys are refused.
    """

    name: str
    task: str
    description: str
    base_model: str
    data: str
    split_sizes: tuple[int, int, int]
    scorers: dict[str, str]
    hv_ref_point: tuple[float, ...]
    guide_model: str | None = None
    split_seed: int = 0
    test_limit: int | None = None
    generation: GenerationConfig = GenerationConfig()
    training: dict[str, Any] = field(default_factory=dict)
    method_training: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: str = "simplex-0.1"
    dtype: str = "auto"
    scorer_dtype: str = "float32"
    batch_size: int = 16
    templates: dict[str, str] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's results. Its hash names the run directory.

    ``models`` maps every model string the run uses (base, guide backbone, each scorer spec) to
    the identity of the weights it resolved to (:func:`mobench.models.model_identity`), so the
    same alias on other weights is another run.
    """

    task: str
    method: str
    preset: str
    objectives: tuple[str, ...]
    base_model: str
    guide_model: str
    data: str
    split_sizes: tuple[int, int, int]
    split_seed: int
    test_limit: int | None
    grid: str
    alphas: tuple[tuple[float, ...], ...]
    generation: GenerationConfig
    method_config: dict[str, Any]
    scorers: dict[str, str]
    hv_ref_point: tuple[float, ...]
    dtype: str
    device: str
    templates: dict[str, str] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    scorer_dtype: str = "float32"
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunSpec:
        """Read a spec.json.

        Raises:
            ConfigError: the spec was written by a mobench with another schema version.
        """
        obj = dict(obj)
        version = obj.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"spec.json has schema_version {version}, this mobench reads {SCHEMA_VERSION} "
                "(older specs do not record model identities or the scorer dtype); start the "
                "run again in a new directory"
            )
        obj["objectives"] = tuple(obj["objectives"])
        obj["split_sizes"] = tuple(obj["split_sizes"])
        obj["alphas"] = tuple(tuple(float(a) for a in row) for row in obj["alphas"])
        obj["generation"] = GenerationConfig(**obj["generation"])
        obj["hv_ref_point"] = tuple(obj["hv_ref_point"])
        return cls(**obj)

    def canonical_json(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @property
    def hash8(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:8]

    @property
    def run_name(self) -> str:
        return f"{self.task}__{self.method}__{self.preset}__{self.hash8}"

    @property
    def alpha_array(self) -> np.ndarray:
        return np.asarray(self.alphas, dtype=np.float64)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- alpha grids

#: MOD's 13 preference vectors for three objectives (METHODS §6.1, §12.6).
MOD_13 = (
    (0.0, 0.0, 1.0),
    (0.0, 1.0, 0.0),
    (0.1, 0.1, 0.8),
    (0.1, 0.8, 0.1),
    (0.2, 0.2, 0.6),
    (0.2, 0.4, 0.4),
    (0.2, 0.6, 0.2),
    (0.33, 0.33, 0.34),
    (0.4, 0.4, 0.2),
    (0.4, 0.2, 0.4),
    (0.6, 0.2, 0.2),
    (0.8, 0.1, 0.1),
    (1.0, 0.0, 0.0),
)

GRIDS = {
    "simplex-0.1": "every vector on the simplex with steps of 0.1 (11 for 2 objectives, 66 for 3)",
    "mod13": "MOD's 13 vectors (3 objectives only)",
    "corners": "one-hot vectors only (K points; quick checks)",
}


def alpha_grid(name: str, k: int) -> np.ndarray:
    """The named preference grid for ``k`` objectives, shape (A, k), rows on the simplex.

    The 0.1 grid for two objectives is ordered (0, 1), (0.1, 0.9), ..., (1, 0) (METHODS §8.1).
    MOD's 13-vector set has (0.33, 0.33, 0.33) in the source; mobench stores (0.33, 0.33, 0.34)
    so that every row sums to 1.
    """
    if name == "simplex-0.1":
        steps = 10
        rows = [
            tuple(c / steps for c in combo)
            for combo in itertools.product(range(steps + 1), repeat=k)
            if sum(combo) == steps
        ]
        return np.asarray(rows, dtype=np.float64)
    if name == "mod13":
        if k != 3:
            raise ConfigError(
                f"grid 'mod13' is for 3 objectives, this task has {k}; use simplex-0.1"
            )
        return np.asarray(MOD_13, dtype=np.float64)
    if name == "corners":
        return np.eye(k, dtype=np.float64)
    raise ConfigError(f"unknown alpha grid '{name}'; known: {', '.join(sorted(GRIDS))}")


def parse_alphas(text: str, objectives: tuple[str, ...]) -> np.ndarray:
    """Parse ``"0.7,0.3;0.5,0.5"`` into an (A, K) array and validate it against the task.

    Raises:
        ConfigError: wrong dimension, negative weights, or rows that do not sum to 1.
    """
    rows = []
    for chunk in text.replace(" ", "").split(";"):
        if not chunk:
            continue
        try:
            row = [float(v) for v in chunk.split(",")]
        except ValueError:
            raise ConfigError(
                f"cannot read alpha '{chunk}'; write numbers separated by commas, rows by ';'"
            ) from None
        rows.append(row)
    if not rows:
        raise ConfigError("no alpha vectors given; e.g. --alphas '0.7,0.3;0.3,0.7'")
    return validate_alphas(rows, objectives)


def validate_alphas(alphas: Any, objectives: tuple[str, ...]) -> np.ndarray:
    """Check that every row has one weight per objective, non-negative, summing to 1."""
    k = len(objectives)
    names = ", ".join(objectives)
    rows = [list(r) for r in alphas]
    for row in rows:
        if len(row) != k:
            raise ConfigError(
                f"alpha {tuple(row)} has {len(row)} weights but the task has {k} objectives "
                f"({names}); give {k} comma-separated weights per vector"
            )
    arr = np.asarray(rows, dtype=np.float64)
    if (arr < 0).any():
        raise ConfigError(f"alpha weights must be >= 0 (objectives: {names})")
    bad = np.abs(arr.sum(axis=1) - 1.0) > 1e-6
    if bad.any():
        first = arr[int(np.argmax(bad))]
        raise ConfigError(
            f"alpha {tuple(first.tolist())} sums to {first.sum():g}; each vector must sum to 1"
        )
    return arr


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of dataclass ``config`` with ``overrides`` applied, rejecting unknown keys."""
    known = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown {type(config).__name__} field(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(type(config))
    for name, value in overrides.items():
        if not _matches(value, hints.get(name, Any)):
            raise ConfigError(
                f"{type(config).__name__}.{name}={value!r} has the wrong type (expected "
                f"{_type_name(hints[name])}, e.g. {json.dumps(dataclasses.asdict(config)[name])})"
            )
    return dataclasses.replace(config, **overrides)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a ``--set`` value (parsed JSON) fits a dataclass field's annotation."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # JSON true/false are not counts
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and bool(np.isfinite(value))
        )
    if hint is str:
        return isinstance(value, str)
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_set_option(items: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``--set section.field=value`` options (value parsed as JSON, else a string).

    Sections: ``method`` (the method's config), ``generation``, ``preset``, ``task`` (the
    task's data options, e.g. ``task.relabel=all``).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("method", "generation", "preset", "task"):
            raise ConfigError(
                f"cannot read --set '{item}'; write section.field=value with section one of "
                "method, generation, preset, task (e.g. --set method.learning_rate=1e-4)"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out
