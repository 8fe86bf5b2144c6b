"""The ``mobench`` command line (typer + rich).

Heavy libraries (torch, transformers) are imported inside commands, never at module level, so
``mobench --help`` and ``mobench ls`` answer at once. User mistakes (unknown names, bad alphas,
unusable files) print one line and exit with code 2.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mobench.config import ConfigError, parse_set_option
from mobench.data import DataError
from mobench.registry import TASKS, UnknownNameError, all_presets, get_method
from mobench.tasks.trained_scorer import ScorerRecipe

#: ``mobench train-scorer``'s defaults are the recipe's (one home for them)
_RECIPE = ScorerRecipe(objective="")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Multi-objective test-time alignment benchmark: train guides, decode over a preference "
    "grid, score, compute HV/MIP, report.",
)
console = Console()
err_console = Console(stderr=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from mobench.runs import RunDirError

    errors: list[type[BaseException]] = [ConfigError, UnknownNameError, DataError, RunDirError]
    if "mobench.models" in sys.modules:
        errors.append(sys.modules["mobench.models"].ModelError)
    return tuple(errors)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class RichProgress:
    """Progress bars for the pipeline's phases, drawn on stderr."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, phase: str, total: int) -> None:
        self._tasks[phase] = self._progress.add_task(phase, total=total)

    def advance(self, phase: str, n: int = 1) -> None:
        if phase in self._tasks:
            self._progress.advance(self._tasks[phase], n)

    def log(self, message: str) -> None:
        self._progress.console.log(message)


def _print_steering(steering: dict[str, Any] | None) -> None:
    """The steering diagnostics under the metrics, with a plain warning when the front does
    not move with alpha (a reference row such as ``base`` is expected not to)."""
    if not steering:
        return
    for name, e in steering["objectives"].items():
        rho = "n/a" if e["spearman"] is None else f"{e['spearman']:+.2f}"
        if e["spearman_ci"]:
            rho += f" (95% CI {e['spearman_ci'][0]:+.2f} .. {e['spearman_ci'][1]:+.2f})"
        noise = "" if e["noise"] is None else f", 95% interval width {e['noise']:.3g}"
        console.print(f"steering {name}: Spearman {rho}; span {e['span']:.3g}{noise}")
    changed = steering["answers_changed"]
    console.print(
        f"answers that change between the extreme alphas: {changed['prompts']} of {changed['of']}"
    )
    for pair, r in steering["score_correlation"].items():
        console.print(f"score correlation {pair}: {'n/a' if r is None else f'{r:.2f}'}")
    gain = steering.get("gain_over_base")
    if gain:
        console.print(
            f"distance from the base point: {min(gain['distance']):.3g} .. "
            f"{max(gain['distance']):.3g} ({gain['base_run']})"
        )
    if not steering["expected_to_steer"]:
        console.print("reference row: not expected to move with alpha")
    elif not steering["steers"]:
        console.print("[bold yellow]WARNING: this front does not steer:[/]")
        for warning in steering["warnings"]:
            console.print(f"  - {warning}", markup=False)
    elif steering["warnings"]:
        for warning in steering["warnings"]:
            console.print(f"note: {warning}", markup=False)


def _print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    objectives = metrics["objectives"]
    table = Table(title=f"{metrics['task']} / {metrics['method']} / {metrics['preset']}")
    table.add_column("alpha", justify="left")
    for obj in objectives:
        table.add_column(f"mean {obj}", justify="right")
    table.add_column("front", justify="center")
    pareto = set(metrics["pareto"])
    for i, (alpha, point) in enumerate(zip(metrics["alphas"], metrics["points"])):
        table.add_row(
            "(" + ", ".join(f"{a:.2f}" for a in alpha) + ")",
            *[f"{v:.4f}" for v in point],
            "*" if i in pareto else "",
        )
    console.print(table)
    ref = ", ".join(f"{v:g}" for v in metrics["hv_ref_point"])
    ci = metrics.get("ci") or {}

    def with_ci(name: str) -> str:
        value = f"{metrics[name]:.4f}"
        if name in ci:
            lo, hi = ci[name]
            value += f"  (95% CI {lo:.4f} .. {hi:.4f})"
        return value

    console.print(f"HV  = {with_ci('hv')}   reference point ({ref})")
    console.print(f"MIP = {with_ci('mip')}")
    _print_steering(metrics.get("steering"))
    scorers = ", ".join(f"{o}: {f}" for o, f in metrics.get("scorers", {}).items())
    console.print(f"scorers: {scorers}")
    console.print(f"run directory: {run_dir}")


@app.command()
def run(
    method: Annotated[str, typer.Option(help="method name (mobench ls methods)")],
    task: Annotated[str, typer.Option(help="task name (mobench ls tasks)")],
    preset: Annotated[str, typer.Option(help="preset name (mobench ls presets)")] = "tiny",
    out: Annotated[
        Path | None,
        typer.Option(help="run directory (default: runs/<task>__<method>__<preset>__<hash>)"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="number of test prompts to generate for")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="seed for the split, training and sampling")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="decoding rows per batch")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="new-token cap per response")] = None,
    alphas: Annotated[
        str | None, typer.Option(help="custom preference vectors, e.g. '0.7,0.3;0.3,0.7'")
    ] = None,
    grid: Annotated[
        str | None, typer.Option(help="alpha grid: simplex-0.1, mod13, corners")
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            help="override the base model (and the guide's backbone, unless --guide-model or "
            "the preset names one)"
        ),
    ] = None,
    guide_model: Annotated[
        str | None,
        typer.Option(help="backbone the guide is trained on (weak-to-strong: same tokenizer)"),
    ] = None,
    data: Annotated[str | None, typer.Option(help="data source: hub id or local file")] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="auto (bf16 on GPUs and bf16-capable CPUs), float32, bfloat16"),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="override any field: method.X=V, generation.X=V, preset.X=V, task.X=V"
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="local copy of the data sets (e.g. ../shared/data); the mini presets need it"
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="print the resolved spec, what it would load, and the work; load nothing",
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: generate and score only shard i of n (by prompt); under torchrun or "
            "accelerate launch the rank sets it"
        ),
    ] = None,
    device_map: Annotated[
        str | None,
        typer.Option(
            help="spread a base model too big for one GPU: auto, balanced, sequential, or a "
            'JSON module->device map, e.g. \'{"": "cuda:1"}\''
        ),
    ] = None,
    guide_device: Annotated[
        str | None, typer.Option(help="device for the guides (default: --device)")
    ] = None,
    trainer_config: Annotated[
        Path | None,
        typer.Option(
            help="JSON of extra transformers TrainingArguments for guide training, e.g. "
            '{"deepspeed": "ds.json"} or {"fsdp": "full_shard auto_wrap"}'
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="torch intra-op threads (default: torch's, every core); give 1 per job when "
            "running several jobs on one machine"
        ),
    ] = None,
) -> None:
    """Train a method's guide, generate over the alpha grid, score, and compute HV and MIP."""
    from mobench import pipeline
    from mobench.models import Placement, torch_threads
    from mobench.resolve import describe_run, resolve_spec
    from mobench.sharding import check_device_map, resolve_shard

    try:
        if batch_size is not None and batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ConfigError("--max-new-tokens must be at least 1")
        if threads is not None and threads < 1:
            raise ConfigError("--threads must be at least 1")
        this_shard = resolve_shard(shard)
        placement = Placement(device_map=_parse_device_map(device_map), guide_device=guide_device)
        check_device_map(placement.device_map, this_shard)
        extra_training = _read_trainer_config(trainer_config)
        spec = resolve_spec(
            task,
            method,
            preset,
            base_model=base_model,
            guide_model=guide_model,
            data=data,
            limit=limit,
            seed=seed,
            max_new_tokens=max_new_tokens,
            alphas=alphas,
            grid=grid,
            dtype=dtype,
            device=device,
            overrides=parse_set_option(set_ or []),
            data_dir=data_dir,
            identify=not dry_run,
        )
        if dry_run:
            _print_dry_run(describe_run(spec), out or pipeline.default_run_dir(spec))
            return
        run_dir = out or pipeline.default_run_dir(spec)
        where = f" (shard {this_shard})" if this_shard else ""
        err_console.print(f"run {spec.run_name} -> {run_dir}{where}", highlight=False)
        # one progress display per terminal: a launcher's other ranks stay quiet
        quiet = this_shard is not None and this_shard.launched and this_shard.index != 0
        display = contextlib.nullcontext(pipeline.NullProgress()) if quiet else RichProgress()
        with display as progress, torch_threads(threads):
            result = pipeline.execute_run(
                spec,
                run_dir,
                batch_size=batch_size,
                progress=progress,
                shard=this_shard,
                placement=placement,
                trainer_arguments=extra_training,
            )
    except _user_errors() as e:
        _fail(str(e))
        return
    if result.generated == 0 and result.scored == 0:
        err_console.print("nothing to do: every row was already generated and scored (resumed)")
    if result.metrics is None:
        assert this_shard is not None
        waiting = ", ".join(f"{i}/{this_shard.count}" for i in result.waiting_for)
        err_console.print(
            f"shard {this_shard} finished its rows; waiting for shard(s) {waiting}: the last shard "
            f"to finish writes the metrics (or run `mobench score {result.run_dir}` then)",
            highlight=False,
        )
        return
    _print_summary(result.metrics, result.run_dir)


def _print_dry_run(description: dict[str, Any], run_dir: Path) -> None:
    """The --dry-run report: one section per part, values as compact JSON."""
    import json

    console.print(f"[bold]dry run[/]: {description['run']} -> {run_dir} (nothing loaded)")
    for section in ("spec", "models", "data", "scorers", "work"):
        console.print(f"[bold]{section}[/]")
        for key, value in description[section].items():
            text = value if isinstance(value, str) else json.dumps(value)
            console.print(f"  {key}: {text}", highlight=False, soft_wrap=True)


@app.command("train-scorer")
def train_scorer(
    objective: Annotated[
        str, typer.Option(help="the objective whose label is read (helpful, harmless)")
    ],
    data: Annotated[
        list[str],
        typer.Option(help="HH-RLHF / PKU-SafeRLHF file in its upstream schema (repeatable)"),
    ],
    backbone: Annotated[str, typer.Option(help="causal LM under the reward head")] = (
        _RECIPE.backbone
    ),
    out: Annotated[
        Path | None, typer.Option(help="folder for the scorer (default: mobench's cache, by hash)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="folder that data-dir: references in --data point into")
    ] = None,
    part: Annotated[
        str, typer.Option(help="scorer | task | none: half of the first-user-turn partition")
    ] = str(_RECIPE.part),
    train_pairs: Annotated[int, typer.Option(help="training pairs (at most)")] = (
        _RECIPE.train_pairs
    ),
    heldout_pairs: Annotated[int, typer.Option(help="held-out pairs for the accuracy")] = (
        _RECIPE.heldout_pairs
    ),
    max_length: Annotated[int, typer.Option(help="tokens per conversation, cut from the left")] = (
        _RECIPE.max_length
    ),
    epochs: Annotated[float, typer.Option(help="passes over the training pairs")] = _RECIPE.epochs,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate")] = (
        _RECIPE.learning_rate
    ),
    batch_size: Annotated[int, typer.Option(help="pairs per step")] = _RECIPE.batch_size,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (lora_alpha = 2 r)")] = _RECIPE.lora_r,
    lora_layers: Annotated[int, typer.Option(help="LoRA on the last N layers")] = (
        _RECIPE.lora_layers
    ),
    seed: Annotated[int, typer.Option(help="held-out choice, order, head init")] = _RECIPE.seed,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N")] = "cpu",
) -> None:
    """Train a reward model for one objective on real preference pairs (trl RewardTrainer) and
    report its held-out pair accuracy. Use it in a preset as scorer ``trained:FOLDER``."""
    from mobench.data import resolve_data_dir_refs

    try:
        from mobench.tasks.trained_scorer import (
            ScorerRecipe,
            check_recipe,
            ensure_trained,
            train_reward_model,
        )

        recipe = ScorerRecipe(
            objective=objective,
            data=tuple(resolve_data_dir_refs(d, data_dir) for d in data),
            backbone=backbone,
            part=None if part in ("none", "null", "") else part,
            train_pairs=train_pairs,
            heldout_pairs=heldout_pairs,
            max_length=max_length,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            lora_r=lora_r,
            lora_layers=lora_layers,
            seed=seed,
        )
        check_recipe(recipe)
        folder = (
            train_reward_model(recipe, out, device=device)
            if out
            else ensure_trained(recipe, device=device)
        )
    except _user_errors() as e:
        _fail(str(e))
        return
    import json

    meta = json.loads((folder / "scorer.json").read_text())
    console.print(
        f"{objective}: held-out pair accuracy {meta['heldout_accuracy']:.3f} on "
        f"{meta['heldout_pairs']} pairs (trained on {meta['train_pairs']}, "
        f"{meta['train_s']:.0f} s)",
        highlight=False,
    )
    console.print(f"scorer spec: trained:{folder}", highlight=False, soft_wrap=True)


def _parse_device_map(text: str | None) -> str | dict[str, Any] | None:
    """``--device-map``: a placement strategy name or a JSON module -> device object."""
    import json

    if text is None:
        return None
    if text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(
            f"--device-map '{text}': use auto, balanced, balanced_low_0, sequential, or a JSON "
            'object such as \'{"": "cuda:0"}\''
        )
    return value


def _read_trainer_config(path: Path | None) -> dict[str, Any]:
    """``--trainer-config``: a JSON object of TrainingArguments fields (checked)."""
    import json

    from mobench.training import check_trainer_arguments

    if path is None:
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--trainer-config {path}: cannot read a JSON object ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--trainer-config {path}: expected a JSON object of TrainingArguments")
    check_trainer_arguments(value)
    return value


@app.command()
def score(
    run_dir: Annotated[Path, typer.Argument(help="a run directory made by `mobench run`")],
) -> None:
    """Score a run's generations that have no score yet, then recompute its metrics."""
    from mobench import pipeline
    from mobench.config import RunSpec
    from mobench.runs import RunDirectory, RunDirError, read_json

    try:
        if not (run_dir / "spec.json").exists():
            raise RunDirError(f"{run_dir} has no spec.json; pass a directory made by `mobench run`")
        spec = RunSpec.from_json(read_json(run_dir / "spec.json"))
        with RichProgress() as progress:
            metrics = pipeline.rescore(RunDirectory.open(run_dir, spec), progress=progress)
    except _user_errors() as e:
        _fail(str(e))
        return
    _print_summary(metrics, run_dir)


@app.command()
def report(
    run_dirs: Annotated[
        list[Path] | None, typer.Argument(help="run directories (default: every one under --runs)")
    ] = None,
    runs: Annotated[
        Path | None, typer.Option(help="folder searched for run directories (default: ./runs)")
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder for index.html and data.json")] = Path(
        "reports/latest"
    ),
    bench: Annotated[
        Path, typer.Option(help="folder of `mobench bench` results (*.json), if any")
    ] = Path("benchmarks/results"),
    sample_prompts: Annotated[
        int, typer.Option(help="test prompts per table in the samples section")
    ] = 25,
) -> None:
    """Build the HTML report (leaderboard, Pareto fronts, timing, samples) from run directories."""
    from mobench.report import build_report

    try:
        if run_dirs and runs is not None:
            raise ConfigError("give run directories or --runs DIR, not both")
        if sample_prompts < 1:
            raise ConfigError("--sample-prompts must be at least 1")
        result = build_report(
            run_dirs or [], out, runs_root=runs, bench_dir=bench, sample_prompts=sample_prompts
        )
    except _user_errors() as e:
        _fail(str(e))
        return
    tables = ", ".join(f"{t}/{p}" for t, p in result.tables) or "none"
    console.print(
        f"{result.n_ranked} of {result.n_runs} runs ranked; tables: {tables}", highlight=False
    )
    console.print(f"report: {result.index_html}  (numbers: {result.data_json})", highlight=False)


@app.command()
def bench(
    preset: Annotated[str, typer.Option(help="tiny (CPU, SmolLM2), gpu-7b (CUDA), smoke")] = "tiny",
    out: Annotated[Path, typer.Option(help="folder for the result JSON")] = Path(
        "benchmarks/results"
    ),
    dtypes: Annotated[
        str | None, typer.Option(help="comma-separated, e.g. float32,bfloat16 (preset's)")
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="same-backbone methods, comma-separated (preset's)")
    ] = None,
    w2s_methods: Annotated[
        str | None, typer.Option(help="weak-to-strong methods, comma-separated; '' for none")
    ] = None,
    repeats: Annotated[int | None, typer.Option(help="timed repeats (preset's)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="rows per batch (preset's)")] = None,
    reference_prompts: Annotated[
        int | None, typer.Option(help="prompts the reference loop decodes (preset's)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (preset's)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads")] = None,
) -> None:
    """Time mobench's guided decoding against plain decoding and the reference loop."""
    import dataclasses

    from mobench.bench import BENCH_PRESETS, run_bench
    from mobench.models import torch_threads

    def names(text: str) -> tuple[str, ...]:
        return tuple(n.strip() for n in text.split(",") if n.strip())

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model copy otherwise
    try:
        if threads is not None and threads < 1:
            raise ConfigError("--threads must be at least 1")
        if preset not in BENCH_PRESETS:
            raise ConfigError(
                f"unknown bench preset '{preset}'; known: {', '.join(sorted(BENCH_PRESETS))}"
            )
        overrides: dict[str, Any] = {
            "dtypes": names(dtypes) if dtypes is not None else None,
            "methods": names(methods) if methods is not None else None,
            "w2s_methods": names(w2s_methods) if w2s_methods is not None else None,
            "repeats": repeats,
            "batch_size": batch_size,
            "reference_prompts": reference_prompts,
            "device": device,
        }
        chosen = dataclasses.replace(
            BENCH_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}
        )
        with torch_threads(threads):
            result = run_bench(chosen, out, log=lambda m: err_console.print(m, highlight=False))
    except _user_errors() as e:
        _fail(str(e))
        return
    _print_bench(result)


def _print_bench(result: dict[str, Any]) -> None:
    table = Table(title=f"mobench bench {result['preset']} ({result['device']})")
    for column in (
        "config",
        "dtype",
        "median s [min-max]",
        "tok/s",
        "b/a [min-max]",
        "c/b",
        "d/b [min-max]",
        "agree c",
        "bf16~fp32",
        "weights MB",
        "decode MB",
        "mem/base",
    ):
        table.add_column(column, justify="left" if column in ("config", "dtype") else "right")

    def fmt(value: Any, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec)

    def spread(s: dict[str, float] | None) -> str:
        return "" if s is None else f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"

    def times(e: dict[str, Any]) -> str:
        return f"{e['median_s']:.2f} [{e['min_s']:.2f}-{e['max_s']:.2f}]"

    for dtype, base in result["base"].items():
        table.add_row(
            "base",
            dtype,
            times(base),
            fmt(base["tokens_per_s"], ".0f"),
            "1.00",
            "",
            "",
            "",
            fmt(base.get("bf16_vs_fp32", {}).get("token_agreement"), ".3f"),
            fmt(base["weights_mb"], ".0f"),
            fmt(base["decode_peak_mb"], ".0f"),
            "1.00",
        )
        if "x2_rows_over_base" in base:  # the fused floor: no memory or tokens/s of its own
            table.add_row(
                "base, 2x rows",
                dtype,
                fmt(base["x2_rows_median_s"]),
                "",
                spread(base.get("x2_rows_over_base_spread")),
                *[""] * 7,
            )
        for e in (r for r in result["results"] if r["dtype"] == dtype):
            ref, peer = e["reference"] or {}, e.get("batched_peer")
            table.add_row(
                e["config"],
                dtype,
                times(e),
                fmt(e["tokens_per_s"], ".0f"),
                spread(e["guided_unguided"]),
                fmt(ref.get("reference_over_mobench"), ".1f"),
                spread(peer["peer_over_mobench"] if peer else None),
                fmt(ref.get("token_agreement"), ".3f"),
                fmt(e.get("bf16_vs_fp32", {}).get("token_agreement"), ".3f"),
                fmt(e["weights_mb"], ".0f"),
                fmt(e["decode_peak_mb"], ".0f"),
                fmt(e["memory_over_base"]),
            )
    console.print(table)
    missed = [t for t in result["targets"] if t["met"] is False]
    for t in missed:
        console.print(
            f"target missed: {t['target']} = {t['value']} ({t['limit']}; {t['miss']})"
            + (f"; {t['floor']}" if "floor" in t else ""),
            highlight=False,
        )
    met = len(result["targets"]) - len(missed)
    console.print(
        f"{met} of {len(result['targets'])} targets met; results: {result.get('path')}",
        highlight=False,
    )


@app.command("ls")
def list_names(
    what: Annotated[str, typer.Argument(help="methods, tasks or presets")] = "methods",
) -> None:
    """List the registered methods, tasks or presets."""
    from mobench.registry import METHODS

    if what == "methods":
        for name in METHODS.names():
            doc = (get_method(name).__doc__ or "").strip().splitlines()
            console.print(f"{name:10s} {doc[0] if doc else ''}", highlight=False)
    elif what == "tasks":
        from mobench.registry import get_task

        for name in TASKS.names():
            cls = get_task(name)
            console.print(f"{name:10s} objectives: {', '.join(cls.objectives)}", highlight=False)
    elif what == "presets":
        for p in all_presets():
            console.print(f"{p.task}/{p.name:8s} {p.description}", highlight=False)
    else:
        _fail(f"cannot list '{what}'; use methods, tasks or presets")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_RichLogHandler()])
    for noisy in ("transformers", "accelerate", "peft", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # transformers 5 deprecates a method that peft calls on every model it wraps: not actionable
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    app()


class _RichLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("mobench"):
            err_console.print(f"[dim]{self.format(record)}[/]", highlight=False)


if __name__ == "__main__":
    main()
