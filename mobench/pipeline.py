"""One run, start to finish: resolve the spec, load data, train, generate, score, metrics.

Each step reads only what the step before it wrote into the run directory, so a run can stop
anywhere (an exception, Ctrl-C, a killed job) and a re-run of the same spec does only what is
missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mobench import __version__, allocator
from mobench.config import (
    ConfigError,
    RunSpec,
    alpha_grid,
    apply_overrides,
    parse_alphas,
)
from mobench.data import DATA_DIR_PREFIX, PreferencePair, resolve_data_dir_refs
from mobench.interfaces import Method, Task
from mobench.registry import METHODS, get_method, get_preset, get_task
from mobench.runs import IncompleteShardsError, RunDirectory, RunDirError
from mobench.sharding import (
    Shard,
    agree_with_rank_0,
    merge_timings,
    process_device,
    shard_items,
    wait_for_file,
)

DEFAULT_RUNS_ROOT = Path("runs")


class Progress(Protocol):
    """What the pipeline reports; the CLI draws it with rich, tests ignore it."""

    def start(self, phase: str, total: int) -> None: ...
    def advance(self, phase: str, n: int = 1) -> None: ...
    def log(self, message: str) -> None: ...


class NullProgress:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, phase: str, n: int = 1) -> None:
        pass

    def log(self, message: str) -> None:
        pass


# --------------------------------------------------------------------------------- the spec


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
    spec = RunSpec(
        task=task,
        method=method,
        preset=preset,
        objectives=objectives,
        base_model=base,
        guide_model=guide_model or p.guide_model or base,
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


# ---------------------------------------------------------------------------- environment


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


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _phase_meter(device: str) -> Any:
    """A started :class:`mobench.memory.MemoryMeter`: the phase's own peak above its start
    (not the process's lifetime peak, which the first model load sets)."""
    from mobench.memory import MemoryMeter

    meter = MemoryMeter(device)
    meter.start()
    return meter


# ------------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    """What :func:`execute_run` did.

    Attributes:
        metrics: the run's metrics; None when this process is one shard and other shards
            have not finished yet (the last shard to finish writes them).
        generated / scored: rows generated / scored by THIS call (0 on a full resume).
        waiting_for: the unfinished shards' indices when ``metrics`` is None.
    """

    run_dir: Path
    metrics: dict[str, Any] | None
    generated: int
    scored: int
    waiting_for: tuple[int, ...] = ()


def default_run_dir(spec: RunSpec, root: Path = DEFAULT_RUNS_ROOT) -> Path:
    return Path(root) / spec.run_name


def execute_run(
    spec: RunSpec,
    out_dir: Path | None = None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    shard: Shard | None = None,
    placement: Placement | None = None,
    trainer_arguments: dict[str, Any] | None = None,
) -> RunResult:
    """Run (or resume) ``spec`` in ``out_dir`` (default ``runs/<name>``).

    Args:
        shard: this process's share of a sharded run (mobench/sharding.py); None = all rows.
        placement: where the base model and guides go (big models); None = all on
            ``spec.device``.
        trainer_arguments: extra ``transformers.TrainingArguments`` for guide training
            (DeepSpeed / FSDP configs, ...; see :func:`mobench.training.trainer_arguments`).
    """
    from mobench.training import trainer_arguments as use_trainer_arguments

    progress = progress or NullProgress()
    if spec.device == "cpu":
        allocator.reuse_freed_memory()  # per-token logits tensors: no page faults each token
    if not spec.models:  # a spec resolved with identify=False (e.g. built for --dry-run)
        spec = dataclasses.replace(spec, models=identify_models(spec))
    run = RunDirectory.open(out_dir or default_run_dir(spec), spec, shard=shard)
    if batch_size is None:
        batch_size = get_preset(spec.task, spec.preset).batch_size
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    task = get_task(spec.task)()
    method = method_from_spec(spec)
    # the spec names the device kind; under a launcher each rank computes on its own GPU
    work = dataclasses.replace(spec, device=process_device(spec.device, shard))
    try:
        if run.read("env.json") is None:
            run.write("env.json", environment(work))
        # the data step may build scorers (relabelling): on this rank's device
        splits, test = _load_splits(run, task, work)
        if spec.guide_model != spec.base_model:
            load_tokenizers(spec)  # weak-to-strong: refuse tokenizers that differ before training
        mine = shard_items(test, shard)
        with use_trainer_arguments(trainer_arguments or {}):
            _train(run, task, method, splits, work, progress)
        generated = _generate(run, task, method, mine, work, batch_size, progress, placement)
        scored = _score(run, task, mine, work, progress)
        run.set_status("complete", rows=len(mine) * len(spec.alphas))
        if shard is None:
            return RunResult(run.path, _metrics(run, task, test, spec), generated, scored)
        try:
            metrics = _metrics(run, task, test, spec)
        except IncompleteShardsError as e:
            progress.log(f"shard {shard} done; metrics follow when shards {e.shards} finish")
            return RunResult(run.path, None, generated, scored, tuple(e.shards))
        _merge_shard_files(run, shard.count)
        return RunResult(run.path, metrics, generated, scored)
    except BaseException as e:
        run.set_status("failed", error=f"{type(e).__name__}: {e}")
        raise


def _merge_shard_files(run: RunDirectory, count: int) -> None:
    """After the last shard: one ``timing.json`` and ``status.json`` for the whole run."""
    names = [f"shard-{i}-of-{count}" for i in range(count)]
    timings = {n: run.read(f"timing.{n}.json", {}) or {} for n in names}
    run.write("timing.json", merge_timings(timings))
    rows = len(run.test_prompt_ids()) * len(run.spec.alphas)
    run.write("status.json", {"state": "complete", "rows": rows, "shards": count})


def _load_splits(run: RunDirectory, task: Task, spec: RunSpec) -> tuple[Any, list[PreferencePair]]:
    """The task's splits (checked against, or saved as, split.json) and the generation prompts."""
    t0 = time.perf_counter()
    splits = task.load(spec)
    if splits.info and run.read("data.json") is None:  # the first load is the record
        run.write("data.json", splits.info)
        # reading, relabelling (and training the scorers it needs, when not cached)
        _update_timing(run, "data", wall_s=time.perf_counter() - t0)
    stored_ids = run.read("split.json")
    if stored_ids is not None and stored_ids != splits.ids():
        raise RunDirError(
            f"{run.path}: the data now splits differently from the stored split.json "
            "(the data source changed); use a new run directory"
        )
    run.write("split.json", splits.ids())
    test = splits.test if spec.test_limit is None else splits.test[: spec.test_limit]
    if not test:
        raise ConfigError("the test split is empty: nothing to generate (check the data)")
    return splits, test


def rescore(run: RunDirectory, progress: Progress | None = None) -> dict[str, Any]:
    """Score whatever generations have no score yet and recompute metrics (no generation)."""
    progress = progress or NullProgress()
    now = identify_models(run.spec)
    changed = sorted(k for k in now if run.spec.models.get(k) != now[k])
    if changed:
        raise RunDirError(
            f"{run.path}: the weights behind {', '.join(changed)} changed since the run was made "
            f"({', '.join(f'{run.spec.models.get(k)} -> {now[k]}' for k in changed)}); scores "
            "from other weights would be mixed in: run the spec again in a new directory"
        )
    task = get_task(run.spec.task)()
    _, test = _load_splits(run, task, run.spec)
    _score(run, task, test, run.spec, progress)
    metrics = _metrics(run, task, test, run.spec)
    count = max((n for _, _, n in run.shard_files()), default=0)
    if count:
        _merge_shard_files(run, count)
    else:
        run.set_status("complete" if (run.path / "generations.jsonl").exists() else "scoring")
    return metrics


def _update_timing(run: RunDirectory, phase: str, **values: Any) -> None:
    name = run.own("timing.json")
    timing = run.read(name, {}) or {}
    timing.setdefault(phase, {}).update(values)
    run.write(name, timing)


def _train(
    run: RunDirectory,
    task: Task,
    method: Method,
    splits: Any,
    spec: RunSpec,
    progress: Progress,
) -> None:
    from mobench.models import guide_cache_dir
    from mobench.training import current_trainer_arguments, report_training_progress

    if not method.trains:
        return
    guide = run.guide_dir
    shard = run.shard
    key = guide_cache_key(run.spec, splits)  # the spec's device, not this rank's own GPU
    cached = guide_cache_dir() / f"{spec.method}-{key}"
    if (guide / "DONE").exists():
        plan = "done"
    elif (cached / "DONE").exists():
        plan = "cached"
    else:
        plan = "train"
    if shard is not None and shard.launched:
        plan = agree_with_rank_0(plan, cpu=spec.device == "cpu")  # all ranks train, or none
    if plan == "done":
        return
    if shard is not None and shard.index != 0 and (plan == "cached" or not shard.launched):
        _wait_for_guide(run, progress)  # shard 0 trains (or copies the cached guide) alone
        return
    if plan == "cached":
        progress.log(f"reusing the trained guide {cached}")
        shutil.copytree(cached, run.path / ".guide-tmp", dirs_exist_ok=True)
        (run.path / ".guide-tmp").rename(guide)
        original = json.loads((cached / "train_timing.json").read_text())
        _update_timing(run, "train", **original, reused_from=str(cached))
        return
    run.set_status("training")
    progress.log(f"training {spec.method} on {len(splits.train)} pairs")
    # Under a launcher every rank trains (data parallel, in step); rank 0's copy is published.
    copy = shard is not None and shard.index != 0
    tmp = run.path / (f".guide-tmp.{shard.name}" if copy and shard else ".guide-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    meter = _phase_meter(spec.device)

    def on_update(done: int, total: int) -> None:
        if done == 1:  # a new guide (e.g. GenARM's next ARM) starts its own bar
            progress.start("train", total)
        progress.advance("train", 1)

    with report_training_progress(on_update):
        method.train(task, splits, spec, tmp)
    if copy:
        shutil.rmtree(tmp, ignore_errors=True)
        _wait_for_guide(run, progress)
        return
    shutil.rmtree(tmp / ".trainer", ignore_errors=True)
    train_timing = {
        "wall_s": time.perf_counter() - t0,
        "train_pairs": len(splits.train),
        "trainable_parameters": method.trainable_parameters(tmp),
        # this phase's peak above its start (loading the backbone included), None if unmeasured
        "peak_memory_mb": meter.peak_mb(),
        "peak_memory_method": meter.method,
        "guide_key": key,
        "processes": shard.count if shard is not None and shard.launched else 1,
        "trainer_arguments": current_trainer_arguments(),
    }
    (tmp / "train_timing.json").write_text(json.dumps(train_timing, indent=2))
    (tmp / "DONE").write_text("ok\n")
    _store_in_cache(tmp, cached)
    tmp.rename(guide)
    _update_timing(run, "train", **train_timing)


def guide_cache_key(spec: RunSpec, splits: Any) -> str:
    """Hash of everything a trained guide depends on, its training pairs' labels and response
    order included (not the alphas, the token budget, the scorers as such or the number of test
    prompts), so runs that differ only in those reuse it."""
    from mobench.models import model_identity

    payload = {
        "task": spec.task,
        "objectives": list(spec.objectives),
        "method": spec.method,
        "method_config": spec.method_config,
        # the weights, not the name: one alias can stand for two copies (hub / packaged GGUF)
        "guide_model": spec.models.get(spec.guide_model) or model_identity(spec.guide_model),
        "template": spec.templates.get(spec.guide_model),
        "train_ids": [p.id for p in splits.train],
        # the labels too: the same rows relabelled another way (task.relabel, other scorers,
        # another response order) must train a new guide, not reuse one trained on other labels
        "train_labels": [[p.responses, sorted(p.labels.items())] for p in splits.train],
        "data": spec.data,
        "dtype": spec.dtype,
        "device": spec.device,
        "schema": spec.schema_version,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _store_in_cache(guide: Path, cached: Path) -> None:
    """Copy a finished guide into the cache (atomically: a half-copied entry has no DONE)."""
    staging = cached.parent / f".{cached.name}.{os.getpid()}"
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(guide, staging, dirs_exist_ok=True)
        staging.rename(cached)
    except OSError:  # another process stored it first, or the cache is read-only: not an error
        shutil.rmtree(staging, ignore_errors=True)


def _wait_for_guide(run: RunDirectory, progress: Progress) -> None:
    """Wait for shard 0 to publish the guide; fail if shard 0 fails meanwhile."""
    assert run.shard is not None
    count = run.shard.count
    trainer = f"shard-0-of-{count}"
    status_file = run.path / f"status.{trainer}.json"
    since = time.time()

    def failed() -> str | None:
        if not status_file.exists() or status_file.stat().st_mtime < since:
            return None  # an old failure does not count: shard 0 may be re-running now
        status = run.read(status_file.name, {}) or {}
        if status.get("state") != "failed":
            return None
        return (
            f"shard 0/{count} failed while training the guide ({status.get('error')}); "
            "fix it and re-run shard 0"
        )

    try:
        wait_for_file(
            run.guide_dir / "DONE",
            failed=failed,
            on_wait=lambda: progress.log(f"waiting for shard 0 to train the guide ({trainer})"),
        )
    except RuntimeError as e:
        raise RunDirError(str(e)) from None


@dataclass(frozen=True)
class Placement:
    """Where models go when they do not fit one device (not part of the spec: results do not
    depend on it).

    Attributes:
        device_map: the base model's ``from_pretrained`` device map: ``"auto"`` (spread over
            every visible GPU, then CPU), ``"balanced"``, or an explicit module -> device dict.
        guide_device: the device the guides are loaded on (default: the spec's device).
    """

    device_map: str | dict[str, Any] | None = None
    guide_device: str | None = None


def load_tokenizers(spec: RunSpec) -> tuple[Any, Any, int]:
    """The base and guide tokenizers and the size of the vocabulary they share.

    Raises:
        ModelError: the guide's tokenizer maps some shared id to another token than the base's
            (weak-to-strong guidance needs one vocabulary).
    """
    from mobench.models import load_tokenizer, shared_vocab_size

    base_tok = load_tokenizer(spec.base_model)
    same = spec.guide_model == spec.base_model
    guide_tok = base_tok if same else load_tokenizer(spec.guide_model)
    vocab = shared_vocab_size(base_tok, guide_tok, (spec.base_model, spec.guide_model))
    return base_tok, guide_tok, vocab


def _load_models(spec: RunSpec, task: Task, placement: Placement | None = None) -> Any:
    from mobench.models import ModelContext, load_causal_lm, logit_rows

    placement = placement or Placement()
    base, base_resolved = load_causal_lm(
        spec.base_model, dtype=spec.dtype, device=spec.device, device_map=placement.device_map
    )
    base_tok, guide_tok, vocab = load_tokenizers(spec)
    # a padded LM head (more rows than the tokenizer, e.g. Qwen2.5, Alpaca) is cut to the shared
    # tokenizer range; a head with fewer rows than its tokenizer narrows the range instead
    vocab = min(vocab, logit_rows(base))
    return ModelContext(
        base=base,
        base_tokenizer=base_tok,
        base_source=spec.base_model,
        guide_tokenizer=guide_tok,
        guide_source=spec.guide_model,
        vocab_size=vocab,
        dtype=spec.dtype,
        device=placement.guide_device or spec.device,
        resolved={"base": base_resolved},
    )


def eos_ids(tokenizer: Any, model: Any, vocab_size: int | None = None) -> set[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation EOS ids.

    With ``vocab_size`` (the vocabulary base and guide share), ids past it are left out: decoding
    can never pick them.
    """
    from mobench.models import ModelError

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    if not ids:
        raise ModelError("the base tokenizer has no EOS token; set one in its tokenizer config")
    if vocab_size is not None:
        usable = {i for i in ids if i < vocab_size}
        if not usable:
            raise ModelError(
                f"the base model's EOS ids {sorted(ids)} lie outside the {vocab_size} token ids "
                "it shares with the guide, so no response could end; use a guide model with the "
                "base's full tokenizer"
            )
        ids = usable
    return ids


def plan_batches(
    rows: Sequence[tuple[PreferencePair, int]], lengths: dict[str, int], batch_size: int
) -> list[list[tuple[PreferencePair, int]]]:
    """Rows sorted by prompt length (longest first), all alphas of a prompt kept adjacent, cut
    into batches of ``batch_size`` rows: similar lengths pad little, and the whole front of a
    prompt decodes together."""
    ordered = sorted(rows, key=lambda r: (-lengths[r[0].id], r[0].id, r[1]))
    return [list(ordered[i : i + batch_size]) for i in range(0, len(ordered), batch_size)]


def _generate(
    run: RunDirectory,
    task: Task,
    method: Method,
    test: list[PreferencePair],
    spec: RunSpec,
    batch_size: int,
    progress: Progress,
    placement: Placement | None = None,
) -> int:
    import torch

    from mobench.decoding import guided_generate
    from mobench.training import encode_prompt

    done = run.generations(allow_partial=True)
    rows = [(p, a) for p in test for a in range(len(spec.alphas)) if (p.id, a) not in done]
    if not rows:
        return 0
    run.set_status("generating", done=len(done), todo=len(rows))
    progress.log("loading models for generation")
    models = _load_models(spec, task, placement)
    guide = method.guide(run.guide_dir, task, models)
    run.write("models.json", model_record(spec, models))
    base_template = spec.templates.get(spec.base_model)
    guide_template = spec.templates.get(spec.guide_model)
    prompts = {p.id: p for p, _ in rows}
    base_ids = {
        pid: encode_prompt(
            models.base_tokenizer, task.render(p.prompt, models.base_tokenizer, base_template)
        )
        for pid, p in prompts.items()
    }
    guide_ids = {
        pid: encode_prompt(
            models.guide_tokenizer, task.render(p.prompt, models.guide_tokenizer, guide_template)
        )
        for pid, p in prompts.items()
    }
    eos = eos_ids(models.base_tokenizer, models.base, models.vocab_size)
    alphas = np.asarray(spec.alphas, dtype=np.float32)
    from mobench.memory import weights_mb

    loaded_mb = weights_mb(models, guide)
    meter = _phase_meter(spec.device)  # after loading: decoding's own peak
    progress.start("generate", len(rows))
    totals = dict((run.read(run.own("timing.json"), {}) or {}).get("generate", {}))
    acc = {
        k: float(totals.get(k, 0.0)) for k in ("wall_s", "prefill_s", "row_tokens", "steps", "rows")
    }
    forwards: dict[str, float] = dict(totals.get("forwards", {}))
    for batch in plan_batches(rows, {pid: len(ids) for pid, ids in base_ids.items()}, batch_size):
        out = guided_generate(
            models.base,
            guide,
            [base_ids[p.id] for p, _ in batch],
            torch.from_numpy(alphas[[a for _, a in batch]]),
            spec.generation,
            vocab_size=models.vocab_size,
            pad_token_id=models.base_tokenizer.pad_token_id,
            eos_token_ids=eos,
            guide_prompt_ids=[guide_ids[p.id] for p, _ in batch],
            row_seeds=[row_seed(spec.generation.seed, p.id, a) for p, a in batch],
        )
        records = [
            {
                "prompt_id": p.id,
                "alpha_index": a,
                "alpha": list(spec.alphas[a]),
                "prompt": p.prompt,  # the report shows it beside the answers
                "text": models.base_tokenizer.decode(toks, skip_special_tokens=True),
                "num_tokens": len(toks),
                "finish_reason": reason,
            }
            for (p, a), toks, reason in zip(batch, out.tokens, out.finish_reasons)
        ]
        run.append_generations(records)
        for key, value in (
            ("wall_s", out.wall_s),
            ("prefill_s", out.prefill_s),
            ("row_tokens", out.row_tokens),
            ("steps", out.steps),
            ("rows", len(batch)),
        ):
            acc[key] += value
        for name, n in out.forwards.items():
            forwards[name] = forwards.get(name, 0) + n
        _update_timing(
            run,
            "generate",
            **acc,
            forwards=forwards,
            # a fused guide runs the base rows in its own forwards ("fused": base + guide lanes)
            forwards_per_token=(
                dict(guide.forwards_per_token)
                if guide is not None and out.fused_lanes
                else {"base": 1, **(guide.forwards_per_token if guide is not None else {})}
            ),
            fused_lanes=out.fused_lanes,
            guide_lanes=getattr(guide, "lanes", 1) if guide is not None else 0,
            tokens_per_s=acc["row_tokens"] / acc["wall_s"] if acc["wall_s"] else None,
            # amortised over the batch: the time one row's 512 tokens cost in this setup
            s_per_512_tokens=512 * acc["wall_s"] / acc["row_tokens"] if acc["row_tokens"] else None,
            batch_size=batch_size,
            dtype=spec.dtype,
            device=spec.device,
            # decoding's peak above the loaded models (this process's batches so far), and the
            # loaded weights apart; None where the meter cannot measure (memory_method says why)
            peak_memory_mb=meter.peak_mb(),
            weights_mb=loaded_mb,
            memory_method=meter.method,
            model_origins={k: dataclasses.asdict(v) for k, v in models.resolved.items()},
        )
        progress.advance("generate", len(batch))
    return len(rows)


def model_record(spec: RunSpec, models: Any) -> dict[str, Any]:
    """models.json: per model role, the source string, the identity of its weights, where it
    was loaded from, and whether its prompts start with BOS (the rule of
    :func:`mobench.training.uses_bos`, used alike in training, decoding and scoring)."""
    from mobench.training import uses_bos

    out: dict[str, Any] = {
        role: {"source": source, "identity": spec.models.get(source), "bos": uses_bos(tok)}
        for role, source, tok in (
            ("base", spec.base_model, models.base_tokenizer),
            ("guide", spec.guide_model, models.guide_tokenizer),
        )
    }
    if "base" in models.resolved:
        out["base"]["loaded_from"] = dataclasses.asdict(models.resolved["base"])
    return out


def row_seed(seed: int, prompt_id: str, alpha_index: int) -> int:
    """A per-row sampling seed that depends only on the row, never on batch composition."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{alpha_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _score(
    run: RunDirectory, task: Task, test: list[PreferencePair], spec: RunSpec, progress: Progress
) -> int:
    # a shard scores only its own prompts' rows, so it never needs the other shards finished
    gens = run.generations(allow_partial=run.shard is not None)
    prompts = {p.id: p for p in test}
    done = run.scores(allow_partial=True)
    todo = {
        obj: [k for k in sorted(gens) if k[0] in prompts and (k[0], k[1], obj) not in done]
        for obj in task.objectives
    }
    n_todo = sum(len(v) for v in todo.values())
    if n_todo == 0:
        return 0
    run.set_status("scoring", todo=n_todo)
    progress.start("score", n_todo)
    t0 = time.perf_counter()
    scorers = task.scorers(spec, spec.device)
    run.write(
        "scorers.json",
        {
            obj: {"spec": spec.scorers.get(obj), "fingerprint": s.fingerprint, **s.info}
            for obj, s in scorers.items()
        },
    )
    for obj, keys in todo.items():
        scorer = scorers[obj]
        # One call per prompt (its alpha front): a row is scored in the same batch in every
        # sharding and on every resume, so its score is reproducible to the last bit (fp32
        # reductions depend on the batch, and near-tied fronts make metrics depend on it).
        for _, rows in itertools.groupby(keys, key=lambda k: k[0]):
            part = list(rows)
            with scoring_threads(spec.device):
                values = scorer.score(
                    [prompts[pid].prompt for pid, _ in part],
                    [task.postprocess(gens[k]["text"]) for k in part],
                )
            run.append_scores(
                {
                    "prompt_id": pid,
                    "alpha_index": a,
                    "objective": obj,
                    "value": float(v),
                    "scorer": scorer.fingerprint,
                }
                for (pid, a), v in zip(part, values)
            )
            progress.advance("score", len(part))
    timing = (run.read(run.own("timing.json"), {}) or {}).get("score", {})
    _update_timing(run, "score", wall_s=float(timing.get("wall_s", 0.0)) + time.perf_counter() - t0)
    return n_todo


@contextlib.contextmanager
def scoring_threads(device: str) -> Any:
    """Score on ONE intra-op thread on CPU: a CPU reduction's order follows the thread count,
    so even fp32 scores differ in the last bits between 1 and 2 threads (measured: 1e-7 on the
    unit preset; 0.05 in bf16). One thread everywhere makes a score the same in a single
    process, in every torchrun rank and on re-scoring; scorers cost little next to generation."""
    import torch

    if not device.startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def score_matrix(
    run: RunDirectory, prompt_ids: Sequence[str], spec: RunSpec
) -> tuple[np.ndarray, dict[str, str]]:
    """Scores as a (P, A, K) array in objective order, and each objective's scorer fingerprint.

    Raises:
        RunDirError: a score is missing, or one objective mixes scorers.
    """
    scores = run.scores()
    n_a, objectives = len(spec.alphas), spec.objectives
    out = np.full((len(prompt_ids), n_a, len(objectives)), np.nan)
    fingerprints: dict[str, set[str]] = {o: set() for o in objectives}
    for i, pid in enumerate(prompt_ids):
        for a in range(n_a):
            for k, obj in enumerate(objectives):
                rec = scores.get((pid, a, obj))
                if rec is None:
                    raise RunDirError(f"{run.path}: no {obj} score for prompt {pid}, alpha {a}")
                out[i, a, k] = rec["value"]
                fingerprints[obj].add(rec["scorer"])
    mixed = {o: f for o, f in fingerprints.items() if len(f) > 1}
    if mixed:
        raise RunDirError(f"{run.path}: scores from several scorers are mixed: {mixed}")
    return out, {o: next(iter(f)) for o, f in fingerprints.items() if f}


def _metrics(
    run: RunDirectory, task: Task, test: list[PreferencePair], spec: RunSpec
) -> dict[str, Any]:
    from mobench.metrics import summarize
    from mobench.steering import gain_over_base, steering_diagnostics

    prompt_ids = [p.id for p in test]
    scores, fingerprints = score_matrix(run, prompt_ids, spec)
    metrics = summarize(
        scores, spec.alpha_array, np.asarray(spec.hv_ref_point), spec.objectives, seed=0
    )
    gens = run.generations()
    texts = [[gens[(pid, a)]["text"] for a in range(len(spec.alphas))] for pid in prompt_ids]
    steering = steering_diagnostics(
        scores,
        spec.alpha_array,
        spec.objectives,
        texts,
        expected_to_steer=get_method(spec.method).steers,
        seed=0,
    )
    base = find_base_point(run, prompt_ids, fingerprints)
    if base is not None:
        base_dir, base_point = base
        steering["gain_over_base"] = {
            **gain_over_base(np.asarray(metrics["points"]), base_point),
            "base_run": str(base_dir),
        }
    metrics["steering"] = steering
    metrics.update(
        {
            "task": spec.task,
            "method": spec.method,
            "preset": spec.preset,
            "spec_hash": spec.hash8,
            "grid": spec.grid,
            "scorers": fingerprints,
        }
    )
    run.write("metrics.json", metrics)
    return metrics


def find_base_point(
    run: RunDirectory, prompt_ids: Sequence[str], fingerprints: dict[str, str]
) -> tuple[Path, np.ndarray] | None:
    """The unguided point of a finished ``base`` run beside ``run`` (same parent folder) of the
    same task, preset and objectives, scored by the same scorers on (at least) the same test
    prompts: its mean score vector over ``prompt_ids``. None when there is no such run."""
    from mobench.config import RunSpec

    spec = run.spec
    if spec.method == "base":
        return None
    for spec_file in sorted(run.path.parent.glob("*/spec.json")):
        other_dir = spec_file.parent
        if other_dir.resolve() == run.path.resolve():
            continue
        try:
            other = RunSpec.from_json(json.loads(spec_file.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not a run of this mobench version: not a candidate
        if (other.method, other.task, other.preset, other.objectives) != (
            "base",
            spec.task,
            spec.preset,
            spec.objectives,
        ):
            continue
        try:
            cube, theirs = score_matrix(RunDirectory(other_dir, other), prompt_ids, other)
        except RunDirError:
            continue  # unfinished, or it did not answer these prompts
        if theirs == fingerprints:
            # base answers do not depend on alpha: its point is the mean over prompts and alphas
            return other_dir, cube.mean(axis=(0, 1))
    return None


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
