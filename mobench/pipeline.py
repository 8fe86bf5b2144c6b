"""One run, start to finish: data, train, generate, score, metrics.

Each step reads only what the step before it wrote into the run directory, so a run can stop
anywhere (an exception, Ctrl-C, a killed job) and a re-run of the same spec does only what is
missing. What a step needs from elsewhere lives there: the spec's resolution and the dry run in
:mod:`mobench.resolve`, environment capture in :mod:`mobench.environment`, model loading in
:mod:`mobench.models`, the run directory's files (and the score matrix) in :mod:`mobench.runs`,
and the guides' decoding in :mod:`mobench.engine`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mobench import allocator
from mobench.config import ConfigError, RunSpec
from mobench.data import PreferencePair
from mobench.environment import environment
from mobench.interfaces import Method, Task
from mobench.registry import get_method, get_preset, get_task
from mobench.resolve import identify_models, method_from_spec
from mobench.runs import IncompleteShardsError, RunDirectory, RunDirError, score_matrix
from mobench.sharding import (
    Shard,
    agree_with_rank_0,
    merge_timings,
    process_device,
    shard_items,
    wait_for_file,
)

if TYPE_CHECKING:
    from mobench.models import Placement

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
            (DeepSpeed / FSDP configs, ...; given to the method as
            :class:`mobench.training.TrainerSettings`).
    """
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
            from mobench.models import load_tokenizers

            load_tokenizers(spec)  # weak-to-strong: refuse tokenizers that differ before training
        mine = shard_items(test, shard)
        _train(run, task, method, splits, work, progress, trainer_arguments or {})
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


def _phase_meter(device: str) -> Any:
    """A started :class:`mobench.memory.MemoryMeter`: the phase's own peak above its start
    (not the process's lifetime peak, which the first model load sets)."""
    from mobench.memory import MemoryMeter

    meter = MemoryMeter(device)
    meter.start()
    return meter


# ----------------------------------------------------------------------------- 1. train


def _train(
    run: RunDirectory,
    task: Task,
    method: Method,
    splits: Any,
    spec: RunSpec,
    progress: Progress,
    trainer_arguments: dict[str, Any],
) -> None:
    from mobench.models import guide_cache_dir
    from mobench.training import TrainerSettings

    if not method.trains:
        return
    guide = run.guide_dir
    shard = run.shard
    key = guide_cache_key(run.spec, splits)  # the spec's device, not this rank's own GPU
    cached = guide_cache_dir() / f"{guide_family(spec.method)}-{key}"
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

    method.train(task, splits, spec, tmp, TrainerSettings(trainer_arguments, on_update))
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
        "trainer_arguments": dict(trainer_arguments),
    }
    (tmp / "train_timing.json").write_text(json.dumps(train_timing, indent=2))
    (tmp / "DONE").write_text("ok\n")
    _store_in_cache(tmp, cached)
    tmp.rename(guide)
    _update_timing(run, "train", **train_timing)


def guide_family(method: str) -> str:
    """The name under which ``method``'s trained guides are cached: its guide family when it
    shares its trained guide with other methods (MOD, Rewarded Soups and MOD-w2s train the same
    DPO policies), else its own name."""
    return get_method(method).guide_family or method


def guide_cache_key(spec: RunSpec, splits: Any) -> str:
    """Hash of everything a trained guide depends on, its training pairs' labels and response
    order included (not the alphas, the token budget, the scorers as such or the number of test
    prompts, nor which method of a guide family decodes with it), so runs that differ only in
    those reuse it."""
    from mobench.models import model_identity

    payload = {
        "task": spec.task,
        "objectives": list(spec.objectives),
        "method": guide_family(spec.method),
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


# -------------------------------------------------------------------------- 2. generate


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

    from mobench.decoding import forwards_per_token, guided_generate
    from mobench.models import eos_ids, load_models, model_record
    from mobench.training import encode_prompt

    done = run.generations(allow_partial=True)
    rows = [(p, a) for p in test for a in range(len(spec.alphas)) if (p.id, a) not in done]
    if not rows:
        return 0
    run.set_status("generating", done=len(done), todo=len(rows))
    progress.log("loading models for generation")
    models = load_models(spec, placement)
    guide = method.guide(run.guide_dir, task, models)
    run.write("models.json", model_record(spec, models))
    base_template = spec.templates.get(spec.base_model)
    guide_template = spec.templates.get(spec.guide_model)
    prompts = {p.id: p for p, _ in rows}
    # per row: the base model's prompt for that row's alpha (the test prompt itself, except for
    # a method that states the preference in the prompt)
    base_ids = {
        (p.id, a): encode_prompt(
            models.base_tokenizer,
            task.render(
                method.conversation(task, p.prompt, spec.alphas[a]),
                models.base_tokenizer,
                base_template,
            ),
        )
        for p, a in rows
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
    lengths: dict[str, int] = {}
    for (pid, _), ids in base_ids.items():
        lengths[pid] = max(lengths.get(pid, 0), len(ids))
    for batch in plan_batches(rows, lengths, batch_size):
        out = guided_generate(
            models.base,
            guide,
            [base_ids[p.id, a] for p, a in batch],
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
            forwards_per_token=forwards_per_token(guide),
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


def row_seed(seed: int, prompt_id: str, alpha_index: int) -> int:
    """A per-row sampling seed that depends only on the row, never on batch composition."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{alpha_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


# ----------------------------------------------------------------------------- 3. score


def _score(
    run: RunDirectory, task: Task, test: list[PreferencePair], spec: RunSpec, progress: Progress
) -> int:
    from mobench.models import scoring_threads

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


# --------------------------------------------------------------------------- 4. metrics


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
