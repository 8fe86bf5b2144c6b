"""Resolving a run's spec, and the dry run: a task, a method and a preset with the command
line's overrides become one :class:`~mobench.config.RunSpec` (checked before anything loads), and
:func:`describe_run` says what a run of it would load and do without loading anything.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from mobench.config import ConfigError, RunSpec, alpha_grid, apply_overrides, parse_alphas
from mobench.data import DATA_DIR_PREFIX, resolve_data_dir_refs
from mobench.interfaces import Method, Task
from mobench.registry import METHODS, get_method, get_preset, get_task


def resolve_spec(
    task: str,
    method: str,
    preset: str = "tiny",
    *,
    base_model: str | None = None,
    guide_model: str | None = None,
    data: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    alphas: str | None = None,
    grid: str | None = None,
    dtype: str | None = None,
    device: str = "auto",
    overrides: dict[str, dict[str, Any]] | None = None,
    data_dir: str | Path | None = None,
    identify: bool = True,
) -> RunSpec:
    """Combine a task, a method and a preset with command-line overrides into a RunSpec.

    ``data_dir`` is a local copy of the data sets (``--data-dir``): ``data-dir:`` references in
    the data and scorer strings point into it, and a hub data source is replaced by the task's
    local copy there (:meth:`Task.local_data`).

    With ``identify`` (the default) every model is identified (:func:`identify_models`; hashes
    weight files once, may ask the hub for a revision); ``--dry-run`` passes False.
    """
    from mobench.models import resolve_device, resolve_dtype
    from mobench.training import ARMTrainingConfig, check_training_config

    overrides = overrides or {}
    if seed is not None and seed < 0:
        raise ConfigError("--seed must be >= 0")
    task_cls = get_task(task)
    method_cls = get_method(method)
    p = get_preset(task, preset)
    if overrides.get("preset"):
        p = apply_overrides(p, overrides["preset"])
    gen = p.generation
    if max_new_tokens is not None:
        gen = dataclasses.replace(gen, max_new_tokens=max_new_tokens)
    if seed is not None:
        gen = dataclasses.replace(gen, seed=seed)
    if overrides.get("generation"):
        gen = apply_overrides(gen, overrides["generation"])
    method_config = method_cls.config_cls()
    if method_cls.trains:  # the preset's training sizes are for trained guides only
        method_config = apply_overrides(method_config, dict(p.training))
        unknown = sorted(set(p.method_training) - set(METHODS.names()))
        if unknown:  # a misspelt method name would silently drop its overrides
            raise ConfigError(
                f"preset {p.task}/{p.name}: method_training names unknown method(s) "
                f"{', '.join(unknown)}; known: {', '.join(METHODS.names())}"
            )
        method_config = apply_overrides(method_config, dict(p.method_training.get(method, {})))
        if seed is not None:
            method_config = apply_overrides(method_config, {"seed": seed})
    if overrides.get("method"):
        method_config = apply_overrides(method_config, overrides["method"])
    if isinstance(method_config, ARMTrainingConfig):
        check_training_config(method_config)
    objectives = tuple(task_cls.objectives)
    if alphas is not None:
        grid_name, grid_arr = "custom", parse_alphas(alphas, objectives)
    else:
        grid_name = grid or p.grid
        grid_arr = alpha_grid(grid_name, len(objectives))
    if len(p.hv_ref_point) != len(objectives):
        raise ConfigError(
            f"preset {p.task}/{p.name} has a {len(p.hv_ref_point)}-D HV reference point but the "
            f"task has {len(objectives)} objectives"
        )
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")
    _check_preset(p)
    dev = resolve_device(device)
    base = base_model or p.base_model
    data_source = data or p.data
    if data_dir is not None and not data and DATA_DIR_PREFIX not in data_source:
        data_source = task_cls.local_data(Path(data_dir), data_source)
    data_source = resolve_data_dir_refs(data_source, data_dir)
    scorers = {o: resolve_data_dir_refs(s, data_dir) for o, s in p.scorers.items()}
    task_options = _task_options(task_cls, p.task_options, overrides.get("task", {}))
    check_generation(gen)
    scorer_dtype = resolve_dtype(p.scorer_dtype, dev)
    guide = guide_model or p.guide_model or base
    if method_cls.replaces_base or not method_cls.trains:
        # no guide backbone of its own: a method that replaces the base sits on the base
        # model (a preset's weak-to-strong guide does not apply), one without a guide has none
        if guide_model is not None and guide_model != base:
            raise ConfigError(
                f"method {method} {method_cls.relation_to_base()}, so it runs on the base model "
                f"'{base}'; drop --guide-model {guide_model} (or pass it as --base-model)"
            )
        guide = base
    spec = RunSpec(
        task=task,
        method=method,
        preset=preset,
        objectives=objectives,
        base_model=base,
        guide_model=guide,
        data=data_source,
        split_sizes=p.split_sizes,
        split_seed=p.split_seed if seed is None else seed,
        test_limit=limit if limit is not None else p.test_limit,
        grid=grid_name,
        alphas=tuple(tuple(float(a) for a in row) for row in grid_arr),
        generation=gen,
        method_config=_plain(dataclasses.asdict(method_config)),
        scorers=scorers,
        hv_ref_point=tuple(float(v) for v in p.hv_ref_point),
        dtype=resolve_dtype(dtype or p.dtype, dev),
        device=dev,
        templates=dict(p.templates),
        task_options=task_options,
        scorer_dtype=scorer_dtype,
    )
    return dataclasses.replace(spec, models=identify_models(spec)) if identify else spec


def _check_preset(p: Any) -> None:
    """The preset's sizes (``--set preset.X=V`` may have changed them) make sense."""
    if len(p.split_sizes) != 3 or any(n < 0 for n in p.split_sizes) or p.split_sizes[2] < 1:
        raise ConfigError(
            f"preset.split_sizes={list(p.split_sizes)}; give [train, validation, test] with "
            "counts >= 0 and at least 1 test row"
        )
    if p.test_limit is not None and p.test_limit < 1:
        raise ConfigError(f"preset.test_limit={p.test_limit}; it must be at least 1 or null")
    if p.batch_size < 1:
        raise ConfigError(f"preset.batch_size={p.batch_size}; it must be at least 1")
    if p.split_seed < 0:
        raise ConfigError(f"preset.split_seed={p.split_seed}; it must be >= 0")


def identify_models(spec: RunSpec) -> dict[str, str]:
    """Every model string of the run (base, guide backbone, each scorer spec) -> the identity
    of the weights it stands for (:func:`mobench.models.model_identity`)."""
    from mobench.models import model_identity

    task = get_task(spec.task)()
    out = {spec.base_model: model_identity(spec.base_model)}
    out.setdefault(spec.guide_model, model_identity(spec.guide_model))
    for objective, scorer in spec.scorers.items():
        out[scorer] = task.scorer_identity(scorer, objective)
    return out


def check_generation(gen: Any) -> None:
    """Refuse generation settings no run can use, before anything loads.

    Raises:
        ConfigError: naming the field and what it must be.
    """
    if isinstance(gen.max_new_tokens, bool) or not isinstance(gen.max_new_tokens, int):
        raise ConfigError(f"max_new_tokens={gen.max_new_tokens!r}; give a whole number >= 1")
    if gen.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={gen.max_new_tokens}; it must be at least 1")
    if not isinstance(gen.sampling, bool):
        raise ConfigError(f"generation.sampling={gen.sampling!r}; use true or false")
    if isinstance(gen.seed, bool) or not isinstance(gen.seed, int):
        raise ConfigError(f"seed={gen.seed!r}; give a whole number")
    for name, low, high in (("temperature", 0.0, None), ("top_p", 0.0, 1.0), ("beta", 0.0, None)):
        value = getattr(gen, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and value > low and (high is None or value <= high)
        if not ok:
            bound = f"in (0, {high:g}]" if high is not None else "a number > 0"
            raise ConfigError(f"generation.{name}={value!r}; it must be {bound}")


def _task_options(
    task_cls: type[Task], preset_options: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    """The task's default options, then the preset's, then ``--set task.X=V``; all checked."""
    known = dict(task_cls.default_options)
    for where, given in (("preset task_options", preset_options), ("--set task.", overrides)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown task option(s) {', '.join(unknown)} in {where} for task "
                f"'{task_cls.name}'; known: {', '.join(sorted(known)) or 'none'}"
            )
    options = {**known, **preset_options, **overrides}
    task_cls.check_options(options)
    return options


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def method_from_spec(spec: RunSpec) -> Method:
    cls = get_method(spec.method)
    fields = {f.name: f for f in dataclasses.fields(cls.config_cls)}
    kwargs = {
        k: tuple(v) if isinstance(v, list) and k in fields else v
        for k, v in spec.method_config.items()
    }
    return cls(cls.config_cls(**kwargs))


# ------------------------------------------------------------------------------- dry run


def _model_origin(source: str) -> str:
    """Where a model source would come from, decided without loading or converting it."""
    from mobench.models import PACKAGED_MODELS

    path = Path(source).expanduser()
    if path.is_dir():
        return "local folder"
    if path.suffix == ".gguf":
        return "GGUF file (converted once to safetensors)"
    if source in PACKAGED_MODELS:
        return f"packaged alias of {PACKAGED_MODELS[source].hub_id}"
    return "Hugging Face hub"


def describe_run(spec: RunSpec) -> dict[str, Any]:
    """What ``execute_run(spec)`` would load and do, and how much work it is, without loading
    any model or data set (``mobench run --dry-run``)."""
    from mobench.tasks.scorers import describe_scorer

    task = get_task(spec.task)()
    method_cls = get_method(spec.method)
    n_train, _, n_test = spec.split_sizes
    prompts = n_test if spec.test_limit is None else min(n_test, spec.test_limit)
    rows = prompts * len(spec.alphas)
    tokens = rows * spec.generation.max_new_tokens
    per_token = method_cls.estimated_forwards_per_token(spec)
    cfg = spec.method_config
    train: dict[str, Any] = {"pairs_at_most": n_train}
    for key in ("epochs", "max_steps", "per_device_batch_size", "gradient_accumulation_steps"):
        if key in cfg:
            train[key] = cfg[key]
    generation: dict[str, Any] = {
        "test_prompts": prompts,
        "alphas": len(spec.alphas),
        "rows": rows,
        "max_new_tokens": spec.generation.max_new_tokens,
        "generated_tokens_at_most": tokens,
        "decoding": "sampling" if spec.generation.sampling else "greedy",
        "beta": spec.generation.beta,
    }
    if per_token is not None:
        # model evaluations per generated token (a fused forward counts each lane)
        generation["evaluations_per_token"] = per_token
        generation["model_evaluations_at_most"] = {m: n * tokens for m, n in per_token.items()}
    else:
        generation["evaluations_per_token"] = "not known before the guide is built"
    models: dict[str, Any] = {
        "base": {"source": spec.base_model, "from": _model_origin(spec.base_model)}
    }
    models["guide backbone"] = (
        {"source": spec.guide_model, "from": _model_origin(spec.guide_model)}
        if spec.guide_model != spec.base_model
        else "same as base"
    )
    for role, source in (("base", spec.base_model), ("guide backbone", spec.guide_model)):
        entry = models[role]
        if source in spec.templates and isinstance(entry, dict):
            entry["template"] = spec.templates[source]
    if not spec.models:
        models["identities"] = (
            "resolved when the run starts (weights hashed once, hub ids by revision); they are "
            "part of the spec, so the run directory's hash is known then"
        )
    return {
        "run": spec.run_name,
        "spec": spec.to_json(),
        "models": models,
        "data": task.describe_data(spec),
        "scorers": {o: describe_scorer(spec.scorers[o], o) for o in spec.objectives},
        "work": {
            "train": train,
            "generate": generation,
            "score": {"responses": rows, "scorer_calls": rows * len(spec.objectives)},
        },
    }
