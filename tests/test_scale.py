"""Scaling out: sharded runs, data-parallel training, device maps (issue 8).

The invariants: a run split over processes gives exactly the single-process run's generations,
scores and metrics (greedy, fp32); a shard killed mid-run and re-run completes the run without
touching another shard's files; data-parallel training gives the single-process losses and
weights up to floating-point noise, for the same global batch.

GenARM's LoRA dropout is set to 0 in these runs: dropout masks are drawn per process, so with
dropout the guides of a 1-process and a 2-process run agree only in distribution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from mobench.config import ConfigError
from mobench.models import Placement
from mobench.pipeline import execute_run
from mobench.resolve import resolve_spec
from mobench.runs import IncompleteShardsError, RunDirectory, RunDirError, read_json
from mobench.sharding import (
    Shard,
    check_device_map,
    merge_timings,
    parse_shard,
    resolve_shard,
    shard_items,
)
from mobench.training import (
    ARMTrainingConfig,
    check_trainer_arguments,
    data_parallel_batches,
    single_process_micro_batch,
)
from tests.conftest import make_unit_preset

REPO = Path(__file__).resolve().parents[1]
NO_DROPOUT = {"method": {"lora_dropout": 0.0}}


@pytest.fixture(scope="module")
def reference(unit_preset: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One single-process GenARM run of the unit preset (its guide lands in the test cache).

    Every process of this module computes on one thread, as torchrun's workers do by default:
    the same kernels everywhere, and no thread oversubscription on a shared machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = resolve_spec("safety", "genarm", "unit", device="cpu", overrides=NO_DROPOUT)
    out = tmp_path_factory.mktemp("scale") / "single"
    result = execute_run(spec, out)
    assert result.metrics is not None
    yield spec, RunDirectory(out, spec)
    torch.set_num_threads(threads)


def _adapters(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(run_dir.glob("guide/*/adapter_model.safetensors")):
        out.update({f"{f.parent.name}/{k}": v for k, v in load_file(f).items()})
    return out


def _losses(guide_dir: Path) -> dict[str, list[float]]:
    training = read_json(guide_dir / "guide_config.json")["training"]
    return {objective: report["losses"] for objective, report in training.items()}


def _assert_same_results(run: RunDirectory, ref: RunDirectory) -> None:
    """Bitwise the same generations, scores and metrics.

    Scores can be bitwise equal because the pipeline scores one prompt's rows per scorer call,
    whichever process holds them; fp32 results may depend on the batch a row is in.
    """
    assert run.generations() == ref.generations()  # texts, token counts, finish reasons
    assert run.scores() == ref.scores()  # values and scorer fingerprints
    assert read_json(run.path / "metrics.json") == read_json(ref.path / "metrics.json")


# ----------------------------------------------------------------- two launched processes


@pytest.mark.slow
def test_torchrun_two_processes_match_the_single_process_run(
    reference: Any, tiny_model_dir: str, tmp_path: Path
) -> None:
    spec, ref = reference
    out = tmp_path / "launched"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "tests.launch_unit_run", tiny_model_dir,
        "--method", "genarm", "--device", "cpu", "--set", "method.lora_dropout=0.0",
        "--out", str(out),
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # as the reference run
        "MOBENCH_GUIDE_CACHE": str(tmp_path / "empty-cache"),  # train, do not reuse its guide
    }
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run = RunDirectory(out, spec)
    assert read_json(out / "spec.json") == spec.to_json()  # same spec, same run
    _assert_same_results(run, ref)

    # each process wrote exactly the prompts it owns, every alpha of them
    test_ids = run.test_prompt_ids()
    for index in range(2):
        rows = [json.loads(line) for line in (out / f"generations.shard-{index}-of-2.jsonl").open()]
        owned = set(shard_items(test_ids, Shard(index, 2)))
        assert {r["prompt_id"] for r in rows} == owned
        assert len(rows) == len(owned) * len(spec.alphas)

    # training ran data parallel on both ranks with the single-process global batch
    timing = read_json(out / "timing.json")
    assert timing["train"]["processes"] == 2
    assert timing["generate"]["rows"] == len(test_ids) * len(spec.alphas)
    assert set(timing["shards"]) == {"shard-0-of-2", "shard-1-of-2"}
    losses, ref_losses = _losses(out / "guide"), _losses(ref.path / "guide")
    assert losses.keys() == ref_losses.keys()
    for objective, values in losses.items():
        assert values == pytest.approx(ref_losses[objective], rel=1e-5, abs=1e-6)
    weights, ref_weights = _adapters(out), _adapters(ref.path)
    assert weights.keys() == ref_weights.keys() and weights
    for name, w in weights.items():
        torch.testing.assert_close(w, ref_weights[name], rtol=0, atol=1e-6)
    assert not list(out.glob(".guide-tmp*")), "rank 1's training copy was left behind"


# ------------------------------------------------------------------- --shard i/n processes


class KilledShard(Exception):
    """Stands in for a process killed mid-run."""


def test_killed_shard_reruns_without_touching_the_other_shard(
    reference: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import mobench.decoding as decoding
    from mobench.cli import app

    spec, ref = reference
    out = tmp_path / "sharded"

    # shard 0 takes the guide (here from the guide cache: the reference run put it there)
    first = execute_run(spec, out, shard=Shard(0, 2))
    assert first.metrics is None and first.waiting_for == (1,)
    assert not (out / "metrics.json").exists()
    with pytest.raises(IncompleteShardsError, match=r"shard 1/2 has not finished") as err:
        RunDirectory(out, spec).generations()
    assert err.value.shards == [1]
    scored = CliRunner().invoke(app, ["score", str(out)])
    assert scored.exit_code == 2 and "1/2" in scored.output, scored.output

    real_generate = decoding.guided_generate
    batches = []

    def killed_after_one_batch(*args: Any, **kwargs: Any) -> Any:
        if batches:
            raise KilledShard("shard 1 killed mid-run")
        batches.append(1)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(decoding, "guided_generate", killed_after_one_batch)
    with pytest.raises(KilledShard):
        execute_run(spec, out, shard=Shard(1, 2))
    monkeypatch.setattr(decoding, "guided_generate", real_generate)
    assert read_json(out / "status.shard-1-of-2.json")["state"] == "failed"
    shard1 = out / "generations.shard-1-of-2.jsonl"
    batch_size = make_unit_preset("unused").batch_size
    assert len(shard1.read_text().splitlines()) == batch_size
    with shard1.open("a") as f:  # a kill -9 in the middle of a write leaves a torn line
        f.write('{"prompt_id": "torn')

    other = {p.name: p.read_bytes() for p in out.glob("*.shard-0-of-2.json*")}
    rerun = execute_run(
        spec,
        out,
        shard=Shard(1, 2),
        # the big-model placement path, on CPU: results must not change
        placement=Placement(device_map={"": "cpu"}, guide_device="cpu"),
    )
    assert rerun.metrics is not None
    prompts_of_shard_1 = len(shard_items(RunDirectory(out, spec).test_prompt_ids(), Shard(1, 2)))
    assert rerun.generated == prompts_of_shard_1 * len(spec.alphas) - batch_size
    assert {p.name: p.read_bytes() for p in out.glob("*.shard-0-of-2.json*")} == other
    _assert_same_results(RunDirectory(out, spec), ref)
    assert read_json(out / "status.json") == {
        "state": "complete",
        "rows": len(ref.generations()),
        "shards": 2,
    }

    with pytest.raises(RunDirError, match="split into 2 shards"):
        RunDirectory.open(out, spec, shard=Shard(0, 3))


def test_waiting_shard_stops_when_shard_0_fails_to_train(reference: Any, tmp_path: Path) -> None:
    spec, _ = reference
    out = tmp_path / "waiting"

    def shard_0_fails() -> None:
        RunDirectory(out, spec, Shard(0, 2)).set_status("failed", error="OSError: disk full")

    timer = threading.Timer(0.5, shard_0_fails)
    timer.start()
    try:
        with pytest.raises(RunDirError, match=r"shard 0/2 failed while training.*disk full"):
            execute_run(spec, out, shard=Shard(1, 2))
    finally:
        timer.cancel()


# ----------------------------------------------------------------------- small invariants


def test_shard_assignment_is_round_robin_over_the_test_list() -> None:
    prompts = [f"p{i}" for i in range(10)]
    for n in (1, 2, 3, 4, 10, 11):
        parts = [shard_items(prompts, Shard(i, n)) for i in range(n)]
        assert sorted(p for part in parts for p in part) == sorted(prompts)  # each exactly once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
        assert parts == [shard_items(prompts, Shard(i, n)) for i in range(n)]  # deterministic
    assert shard_items(prompts, None) == prompts


def test_shard_comes_from_the_option_or_the_launcher() -> None:
    assert parse_shard("1/4") == Shard(1, 4)
    assert parse_shard("0/1") is None
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    launched = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert resolve_shard(None, launched) == Shard(3, 4, launched=True, local_index=1)
    assert resolve_shard(None, {"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert resolve_shard("0/2", {}) == Shard(0, 2)
    with pytest.raises(ConfigError, match="drop --shard"):
        resolve_shard("0/2", launched)
    with pytest.raises(ConfigError, match="RANK"):
        resolve_shard(None, {"WORLD_SIZE": "2"})


def test_device_map_needs_one_process_per_machine() -> None:
    launched = Shard(0, 8, launched=True)
    check_device_map("auto", launched, {"LOCAL_WORLD_SIZE": "1"})  # one process per node
    check_device_map("auto", Shard(0, 2), {"LOCAL_WORLD_SIZE": "8"})  # --shard: own GPUs
    check_device_map(None, launched, {"LOCAL_WORLD_SIZE": "8"})
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        check_device_map("auto", launched, {"LOCAL_WORLD_SIZE": "8"})


def test_global_batch_is_kept_across_processes() -> None:
    cfg = ARMTrainingConfig(per_device_batch_size=4, gradient_accumulation_steps=8)
    for processes in (1, 2, 4, 8, 16, 32):
        per_device, accum = data_parallel_batches(cfg, processes)
        assert per_device * accum * processes == 32
        assert per_device <= 4  # never more memory per device than asked for
    assert data_parallel_batches(cfg, 2) == (4, 4)  # accumulation divided first
    assert data_parallel_batches(cfg, 16) == (2, 1)
    odd = ARMTrainingConfig(per_device_batch_size=3, gradient_accumulation_steps=4)
    # 12 pairs, 4 per process, in micro-batches that never straddle two of the 3-pair ones
    assert data_parallel_batches(odd, 3) == (1, 4)
    for processes in (2, 4, 8, 16, 32):
        per_device, _ = data_parallel_batches(cfg, processes)
        assert cfg.per_device_batch_size % per_device == 0
    for processes in (5, 64):
        with pytest.raises(ConfigError, match=f"multiple of {processes}"):
            data_parallel_batches(cfg, processes)


def test_micro_batch_index_is_the_single_process_one() -> None:
    """Per-micro-batch randomness (PARM's alpha) sees the same index for the same pairs on any
    number of processes: simulate the shared data order and check every process's batch."""
    for per_device, accum in ((4, 8), (4, 1), (3, 4), (2, 6)):
        cfg = ARMTrainingConfig(per_device_batch_size=per_device, gradient_accumulation_steps=accum)
        total = per_device * accum
        for processes in (1, 2, 3, 4, 8):
            if total % processes:
                continue
            size, steps = data_parallel_batches(cfg, processes)
            parts = per_device // size
            for step in range(3 * steps):  # three updates
                for rank in range(processes):
                    first = (step * processes + rank) * size  # its first pair in the data order
                    index = single_process_micro_batch(step, rank, processes, parts)
                    assert index == first // per_device == (first + size - 1) // per_device


def test_trainer_config_takes_infrastructure_not_results() -> None:
    check_trainer_arguments({"gradient_checkpointing": True, "ddp_backend": "gloo"})
    with pytest.raises(ConfigError, match=r"learning_rate.*--set method"):
        check_trainer_arguments({"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="unknown TrainingArguments field"):
        check_trainer_arguments({"deep_speed": "ds.json"})


def test_trainer_config_reaches_the_trainer(
    reference: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--trainer-config fields reach TrainingArguments: gradient checkpointing is switched on in
    the trained LM, and it does not change the losses."""
    from mobench.registry import get_task
    from mobench.resolve import method_from_spec
    from mobench.training import SequenceLogProbs, TrainerSettings

    enabled = []
    real_enable = SequenceLogProbs.gradient_checkpointing_enable

    def spy(self: SequenceLogProbs, **kwargs: Any) -> None:
        real_enable(self, **kwargs)
        enabled.append(self.lm.is_activation_checkpointing)

    monkeypatch.setattr(SequenceLogProbs, "gradient_checkpointing_enable", spy)
    spec, _ = reference
    task = get_task("safety")()
    splits = task.load(spec)
    losses = []
    for extra in ({}, {"gradient_checkpointing": True}):
        out = tmp_path / f"guide-{len(losses)}"
        out.mkdir()
        method_from_spec(spec).train(task, splits, spec, out, TrainerSettings(extra))
        losses.append(_losses(out))
    assert enabled == [True] * len(spec.objectives)  # once per ARM, only when asked
    assert losses[1].keys() == losses[0].keys()
    for objective, values in losses[1].items():
        assert values == pytest.approx(losses[0][objective], rel=1e-6)


def test_cli_rejects_bad_scale_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mobench.cli import app

    bad_config = tmp_path / "trainer.json"
    bad_config.write_text(json.dumps({"learning_rate": 0.1}))
    base = ["run", "--method", "genarm", "--task", "safety"]
    for options, message in (
        (["--shard", "2/2"], "0 <= i < n"),
        (["--device-map", "everywhere"], "--device-map"),
        (["--trainer-config", str(bad_config)], "learning_rate"),
        (["--trainer-config", str(tmp_path / "missing.json")], "cannot read"),
    ):
        result = CliRunner().invoke(app, base + options)
        assert result.exit_code == 2 and message in result.output, (options, result.output)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(app, [*base, "--shard", "0/2"])
    assert result.exit_code == 2 and "drop --shard" in result.output


def test_model_spread_by_device_map_decodes_the_same(tiny_model_dir: str) -> None:
    """The big-model path, on CPU (no GPU here): a base loaded through ``device_map`` and run
    under accelerate's placement hooks, with the KV cache rows selected by CPU indices (what a
    model spread over several GPUs needs), decodes exactly as a plainly loaded model."""
    from accelerate import dispatch_model

    from mobench.decoding import CausalLMStepper
    from mobench.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    plain, _ = load_causal_lm(tiny_model_dir, device="cpu")
    mapped, _ = load_causal_lm(tiny_model_dir, device_map={"": "cpu"})
    per_module = {"model": "cpu", "lm_head": "cpu"}
    dispatch_model(mapped, device_map=per_module, main_device="cpu", force_hooks=True)
    assert mapped.hf_device_map == per_module
    prompts = [tok("How do I bake bread?")["input_ids"], tok("Yes")["input_ids"]]
    steppers = [CausalLMStepper(m, len(tok), tok.pad_token_id) for m in (plain, mapped)]
    steppers[1].spans_devices = True  # as with layers on several GPUs
    with torch.inference_mode():
        out = [s.prefill(prompts) for s in steppers]
        torch.testing.assert_close(out[1], out[0], rtol=0, atol=0)
        token = out[0].argmax(-1)
        out = [s.step(token) for s in steppers]
        keep = torch.tensor([1])
        for s in steppers:
            s.drop(keep)
        out = [s.step(token[keep]) for s in steppers]
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=0)


def test_merged_timing_adds_work_and_keeps_training() -> None:
    gen = {"wall_s": 2.0, "prefill_s": 0.5, "row_tokens": 100, "steps": 10, "rows": 4}
    timings = {
        "shard-1-of-2": {"generate": {**gen, "forwards": {"base": 10}, "peak_memory_mb": 7.0}},
        "shard-0-of-2": {
            "train": {"wall_s": 9.0},
            "generate": {**gen, "forwards": {"base": 10}, "peak_memory_mb": 5.0},
            "score": {"wall_s": 1.0},
        },
    }
    merged = merge_timings(timings)
    assert merged["train"] == {"wall_s": 9.0}
    assert merged["generate"]["rows"] == 8 and merged["generate"]["forwards"] == {"base": 20}
    assert merged["generate"]["tokens_per_s"] == pytest.approx(200 / 4.0)
    assert merged["generate"]["peak_memory_mb"] == 7.0
    assert merged["score"] == {"wall_s": 1.0}
    assert list(merged["shards"]) == ["shard-0-of-2", "shard-1-of-2"]


@pytest.mark.slow
def test_torchrun_at_the_default_dtype_scores_like_one_process(
    unit_preset: Any, tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 item 7: at the default dtype (bf16 where `--dtype auto` picks it), a run split
    over 2 one-thread processes writes the scores and metrics of one process on the default
    thread count: scorers run in fp32 whatever the run's dtype."""
    monkeypatch.setenv("MOBENCH_GUIDE_CACHE", str(tmp_path / "guides"))
    spec = resolve_spec(
        "safety", "genarm", "unit", device="cpu", dtype="auto", overrides=NO_DROPOUT
    )
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # not the launched processes' single thread
    try:
        execute_run(spec, single)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "launched"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "tests.launch_unit_run", tiny_model_dir,
        "--method", "genarm", "--device", "cpu", "--dtype", "auto",
        "--set", "method.lora_dropout=0.0", "--out", str(out),
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MOBENCH_GUIDE_CACHE": str(tmp_path / "guides"),  # the same guide: scoring is the point
    }
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert read_json(out / "spec.json") == spec.to_json()
    assert "float32" in json.dumps(read_json(out / "scorers.json"))
    _assert_same_results(RunDirectory(out, spec), RunDirectory(single, spec))
