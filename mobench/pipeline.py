"""One run, start to finish: resolve the spec, load data, train, generate, score, metrics.

Each step reads only what the step before it wrote into the run directory, so a run can stop
anywhere (an exception, Ctrl-C, a killed job) and a re-run of the same spec does only what is
missing.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
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

from mobench import __version__
from mobench.config import (
    ConfigError,
    RunSpec,
    alpha_grid,
    apply_overrides,
    parse_alphas,
)
from mobench.data import DATA_DIR_PREFIX, PreferencePair, resolve_data_dir_refs
from mobench.interfaces import Method, Task
from mobench.registry import get_method, get_preset, get_task
from mobench.runs import RunDirectory, RunDirError

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
) -> RunSpec:
    """Combine a task, a method and a preset with command-line overrides into a RunSpec.

    ``data_dir`` is a local copy of the data sets (``--data-dir``): ``data-dir:`` references in
    the data and scorer strings point into it, and a hub data source is replaced by the task's
    local copy there (:meth:`Task.local_data`).
    """
    from mobench.models import resolve_device, resolve_dtype

    overrides = overrides or {}
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
    method_config = apply_overrides(method_cls.config_cls(), dict(p.training))
    if seed is not None:
        method_config = apply_overrides(method_config, {"seed": seed})
    if overrides.get("method"):
        method_config = apply_overrides(method_config, overrides["method"])
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
    dev = resolve_device(device)
    base = base_model or p.base_model
    data_source = data or p.data
    if data_dir is not None and not data and DATA_DIR_PREFIX not in data_source:
        data_source = task_cls.local_data(Path(data_dir), data_source)
    data_source = resolve_data_dir_refs(data_source, data_dir)
    scorers = {o: resolve_data_dir_refs(s, data_dir) for o, s in p.scorers.items()}
    task_options = _task_options(task_cls, p.task_options, overrides.get("task", {}))
    return RunSpec(
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
    )


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
    import importlib.metadata as md

    import torch

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    git_sha = None
    try:
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
    except (OSError, subprocess.SubprocessError):
        pass
    device_name = platform.processor() or platform.machine()
    if spec.device.startswith("cuda"):
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
        "device": spec.device,
        "device_name": device_name,
        "cpu_count": torch.get_num_threads(),
        "dtype": spec.dtype,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    generated: int  # rows generated by THIS call (0 on a full resume)
    scored: int


def default_run_dir(spec: RunSpec, root: Path = DEFAULT_RUNS_ROOT) -> Path:
    return Path(root) / spec.run_name


def execute_run(
    spec: RunSpec,
    out_dir: Path | None = None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run (or resume) ``spec`` in ``out_dir`` (default ``runs/<name>``)."""
    progress = progress or NullProgress()
    run = RunDirectory.open(out_dir or default_run_dir(spec), spec)
    if batch_size is None:
        batch_size = get_preset(spec.task, spec.preset).batch_size
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    task = get_task(spec.task)()
    method = method_from_spec(spec)
    try:
        if run.read("env.json") is None:
            run.write("env.json", environment(spec))
        splits, test = _load_splits(run, task, spec)
        _train(run, task, method, splits, spec, progress)
        generated = _generate(run, task, method, test, spec, batch_size, progress)
        scored = _score(run, task, test, spec, progress)
        metrics = _metrics(run, task, test, spec)
        run.set_status("complete", rows=len(test) * len(spec.alphas))
        return RunResult(run.path, metrics, generated, scored)
    except BaseException as e:
        run.set_status("failed", error=f"{type(e).__name__}: {e}")
        raise


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
    task = get_task(run.spec.task)()
    _, test = _load_splits(run, task, run.spec)
    _score(run, task, test, run.spec, progress)
    metrics = _metrics(run, task, test, run.spec)
    run.set_status("complete" if (run.path / "generations.jsonl").exists() else "scoring")
    return metrics


def _update_timing(run: RunDirectory, phase: str, **values: Any) -> None:
    timing = run.read("timing.json", {}) or {}
    timing.setdefault(phase, {}).update(values)
    run.write("timing.json", timing)


def _train(
    run: RunDirectory,
    task: Task,
    method: Method,
    splits: Any,
    spec: RunSpec,
    progress: Progress,
) -> None:
    guide = run.guide_dir
    if (guide / "DONE").exists():
        return
    run.set_status("training")
    progress.log(f"training {spec.method} on {len(splits.train)} pairs")
    tmp = run.path / ".guide-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    method.train(task, splits, spec, tmp)
    shutil.rmtree(tmp / ".trainer", ignore_errors=True)
    (tmp / "DONE").write_text("ok\n")
    tmp.rename(guide)
    _update_timing(
        run,
        "train",
        wall_s=time.perf_counter() - t0,
        train_pairs=len(splits.train),
        trainable_parameters=method.trainable_parameters(guide),
        peak_memory_mb=peak_memory_mb(spec.device),
    )


def _load_models(spec: RunSpec, task: Task) -> Any:
    from mobench.models import ModelContext, load_causal_lm, load_tokenizer, shared_vocab_size

    base, base_resolved = load_causal_lm(spec.base_model, dtype=spec.dtype, device=spec.device)
    base_tok = load_tokenizer(spec.base_model)
    guide_tok = (
        base_tok if spec.guide_model == spec.base_model else load_tokenizer(spec.guide_model)
    )
    vocab = shared_vocab_size(base_tok, guide_tok, (spec.base_model, spec.guide_model))
    vocab = min(vocab, base.get_output_embeddings().weight.shape[0])
    return ModelContext(
        base=base,
        base_tokenizer=base_tok,
        base_source=spec.base_model,
        guide_tokenizer=guide_tok,
        guide_source=spec.guide_model,
        vocab_size=vocab,
        dtype=spec.dtype,
        device=spec.device,
        resolved={"base": base_resolved},
    )


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    if not ids:
        raise ValueError("the base tokenizer has no EOS token; set one in its tokenizer config")
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
) -> int:
    import torch

    from mobench.decoding import guided_generate
    from mobench.training import encode_prompt

    done = run.generations()
    rows = [(p, a) for p in test for a in range(len(spec.alphas)) if (p.id, a) not in done]
    if not rows:
        return 0
    run.set_status("generating", done=len(done), todo=len(rows))
    progress.log("loading models for generation")
    models = _load_models(spec, task)
    guide = method.guide(run.guide_dir, task, models)
    base_template = spec.templates.get(spec.base_model)
    guide_template = spec.templates.get(spec.guide_model)
    prompts = {p.id: p for p, _ in rows}
    base_ids = {
        pid: encode_prompt(models.base_tokenizer, task.render(p.prompt, models.base_tokenizer, base_template))
        for pid, p in prompts.items()
    }
    guide_ids = {
        pid: encode_prompt(
            models.guide_tokenizer, task.render(p.prompt, models.guide_tokenizer, guide_template)
        )
        for pid, p in prompts.items()
    }
    eos = eos_ids(models.base_tokenizer, models.base)
    alphas = np.asarray(spec.alphas, dtype=np.float32)
    progress.start("generate", len(rows))
    totals = dict(run.read("timing.json", {}).get("generate", {}))
    acc = {k: float(totals.get(k, 0.0)) for k in ("wall_s", "prefill_s", "row_tokens", "steps", "rows")}
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
            forwards_per_token={"base": 1, **guide.forwards_per_token},
            tokens_per_s=acc["row_tokens"] / acc["wall_s"] if acc["wall_s"] else None,
            # amortised over the batch: the time one row's 512 tokens cost in this setup
            s_per_512_tokens=512 * acc["wall_s"] / acc["row_tokens"] if acc["row_tokens"] else None,
            batch_size=batch_size,
            dtype=spec.dtype,
            device=spec.device,
            peak_memory_mb=peak_memory_mb(spec.device),
            model_origins={k: dataclasses.asdict(v) for k, v in models.resolved.items()},
        )
        progress.advance("generate", len(batch))
    return len(rows)


def row_seed(seed: int, prompt_id: str, alpha_index: int) -> int:
    """A per-row sampling seed that depends only on the row, never on batch composition."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{prompt_id}:{alpha_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _score(
    run: RunDirectory, task: Task, test: list[PreferencePair], spec: RunSpec, progress: Progress
) -> int:
    gens = run.generations()
    prompts = {p.id: p for p in test}
    done = run.scores()
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
    chunk = 64
    for obj, keys in todo.items():
        scorer = scorers[obj]
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
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
    timing = run.read("timing.json", {}).get("score", {})
    _update_timing(run, "score", wall_s=float(timing.get("wall_s", 0.0)) + time.perf_counter() - t0)
    return n_todo


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


def _metrics(run: RunDirectory, task: Task, test: list[PreferencePair], spec: RunSpec) -> dict[str, Any]:
    from mobench.metrics import summarize

    scores, fingerprints = score_matrix(run, [p.id for p in test], spec)
    metrics = summarize(
        scores, spec.alpha_array, np.asarray(spec.hv_ref_point), spec.objectives, seed=0
    )
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
    n_train, n_val, n_test = spec.split_sizes
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
        generation["forwards_per_token"] = per_token
        generation["model_token_forwards_at_most"] = {m: n * tokens for m, n in per_token.items()}
    else:
        generation["forwards_per_token"] = "not known before the guide is built"
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
