"""Scaling a run out over several processes: which process does which rows, and how they meet.

A sharded run splits the test prompts among ``n`` processes. Shard ``i`` of ``n`` generates and
scores every alpha of the prompts at positions ``i, i + n, i + 2n, ...`` of the run's test list
(the ``test`` ids of ``split.json`` cut to the spec's ``test_limit``), and writes them to its
own files in the shared run directory (``generations.shard-i-of-n.jsonl``,
``scores.shard-i-of-n.jsonl``, ``status.shard-i-of-n.json``, ``timing.shard-i-of-n.json``).

Why by prompt, and why round-robin over the test list:

* a prompt's whole alpha front stays in one process, so it still decodes in one batch (the
  decoding loop's main saving) and a prompt is never half done in two places;
* the test list is fixed by the spec and checked on every resume (``split.json``), so a row
  always lands on the same shard for a given ``n``; round-robin keeps shards within one prompt
  of each other, where a hash of the prompt id could leave a shard empty on small runs.

The shard comes from ``--shard i/n`` (independent processes: separate jobs, machines, or
terminals) or from the launcher's environment (``torchrun`` / ``accelerate launch`` set
``RANK`` and ``WORLD_SIZE``). The guide is trained once: under a launcher all ranks train it
together (data parallel through ``transformers.Trainer``) and rank 0 publishes it; with
``--shard`` shard 0 trains alone. Either way the other processes wait for ``guide/DONE``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mobench.config import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's share of a sharded run.

    Attributes:
        index: which shard, ``0 <= index < count``.
        count: how many shards the run is split into.
        launched: True when started by ``torchrun`` / ``accelerate launch`` (all ranks train the
            guide together); False for ``--shard`` (shard 0 trains alone).
        local_index: the process's rank on its machine (picks its GPU under a launcher).
    """

    index: int
    count: int
    launched: bool = False
    local_index: int = 0

    @property
    def name(self) -> str:
        """The infix of this shard's file names: ``shard-<index>-of-<count>``."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, position: int) -> bool:
        """Whether the prompt at ``position`` of the run's test list belongs to this shard."""
        return position % self.count == self.index


def shard_of(position: int, count: int) -> int:
    """The shard (of ``count``) that owns the prompt at ``position`` of the test list."""
    return position % count


def shard_items(items: Sequence[T], shard: Shard | None) -> list[T]:
    """The items (test prompts, in test-list order) that ``shard`` owns; all of them if None."""
    if shard is None:
        return list(items)
    return [item for pos, item in enumerate(items) if shard.owns(pos)]


def parse_shard(text: str) -> Shard | None:
    """Parse ``--shard i/n``. ``0/1`` means unsharded (None).

    Raises:
        ConfigError: not of the form ``i/n`` with ``0 <= i < n``.
    """
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"cannot read --shard '{text}'; write i/n, e.g. --shard 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return None if count == 1 else Shard(index, count)


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a process started by ``torchrun`` or ``accelerate launch`` (RANK and
    WORLD_SIZE; LOCAL_RANK for the machine-local index), or None outside a launcher."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    if "RANK" not in env:
        raise ConfigError(
            f"WORLD_SIZE={world} is set but RANK is not; start mobench with torchrun or "
            "accelerate launch, or pass --shard i/n"
        )
    rank = int(env["RANK"])
    return Shard(rank, world, launched=True, local_index=int(env.get("LOCAL_RANK", rank) or 0))


def resolve_shard(option: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of this process: ``--shard`` if given, else the launcher's environment.

    Raises:
        ConfigError: both are given (they could disagree), or either is malformed.
    """
    launched = shard_from_env(environ)
    if option is not None:
        if launched is not None:
            raise ConfigError(
                f"--shard {option} given inside a launcher (WORLD_SIZE={launched.count}); the "
                "launcher already assigns shards: drop --shard"
            )
        return parse_shard(option)
    return launched


def process_device(device: str, shard: Shard | None) -> str:
    """The device this process computes on: under a launcher, a bare ``cuda`` means this
    rank's own GPU (``cuda:<LOCAL_RANK>``), as ``transformers.Trainer`` does for training."""
    if shard is not None and shard.launched and device == "cuda":
        return f"cuda:{shard.local_index}"
    return device


def wait_for_file(
    path: Path,
    *,
    failed: Callable[[], str | None] = lambda: None,
    poll_s: float = 1.0,
    on_wait: Callable[[], None] = lambda: None,
) -> None:
    """Block until ``path`` exists (a file barrier on a shared filesystem).

    Args:
        path: the file whose appearance ends the wait (e.g. ``guide/DONE``).
        failed: called every poll; a message means the producer failed: raise with it.
        poll_s: seconds between checks.
        on_wait: called once, when the file is not there at the first check.

    Raises:
        RuntimeError: ``failed`` reported a failure.
    """
    first = True
    while not path.exists():
        problem = failed()
        if problem is not None:
            raise RuntimeError(problem)
        if first:
            on_wait()
            first = False
        time.sleep(poll_s)


def merge_timings(timings: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One ``timing.json`` for a sharded run from each shard's timing (shard name -> timing).

    Work adds up over shards (wall seconds, rows, tokens, forward passes): the merged
    ``tokens_per_s`` and ``s_per_512_tokens`` are per process, comparable with a single-process
    run on the same hardware. Training is the training shard's (shard 0). Peak memory is the
    largest shard's. The per-shard timings are kept under ``shards``.
    """
    ordered = [timings[k] for k in sorted(timings, key=_shard_sort_key)]
    merged: dict[str, Any] = {}
    train = next((t["train"] for t in ordered if "train" in t), None)
    if train is not None:
        merged["train"] = dict(train)
    gens = [t["generate"] for t in ordered if "generate" in t]
    if gens:
        gen: dict[str, Any] = dict(gens[0])
        for key in ("wall_s", "prefill_s", "row_tokens", "steps", "rows"):
            gen[key] = sum(float(g.get(key, 0.0)) for g in gens)
        forwards: dict[str, float] = {}
        for g in gens:
            for name, n in g.get("forwards", {}).items():
                forwards[name] = forwards.get(name, 0) + n
        gen["forwards"] = forwards
        gen["tokens_per_s"] = gen["row_tokens"] / gen["wall_s"] if gen["wall_s"] else None
        gen["s_per_512_tokens"] = (
            512 * gen["wall_s"] / gen["row_tokens"] if gen["row_tokens"] else None
        )
        # each shard's own decoding peak; None when no shard could measure it
        peaks = [float(v) for g in gens if (v := g.get("peak_memory_mb")) is not None]
        gen["peak_memory_mb"] = max(peaks, default=None)
        gen["processes"] = len(gens)
        merged["generate"] = gen
    scores = [t["score"] for t in ordered if "score" in t]
    if scores:
        merged["score"] = {"wall_s": sum(float(s.get("wall_s", 0.0)) for s in scores)}
    merged["shards"] = {k: dict(timings[k]) for k in sorted(timings, key=_shard_sort_key)}
    return merged


def _shard_sort_key(name: str) -> tuple[int, str]:
    parts = name.split("-")  # shard-<i>-of-<n>
    return (int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else -1, name)


def agree_with_rank_0(value: T, *, cpu: bool) -> T:
    """Rank 0's ``value``, on every rank of a launched run.

    One broadcast over the launcher's process group, which accelerate sets up from RANK,
    WORLD_SIZE and MASTER_ADDR/PORT if nothing has yet (gloo on CPU, nccl on GPUs); the
    Trainer later reuses it. Decisions that every rank must take together (train the guide
    data parallel, or wait for it) go through here, never through separate file checks.
    """
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=cpu)
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_device_map(
    device_map: object, shard: Shard | None, environ: Mapping[str, str] | None = None
) -> None:
    """Refuse a device map under a launcher that runs several processes on one machine: each
    would spread its base model over every visible GPU, on top of the others.

    Raises:
        ConfigError: ``device_map`` is set and LOCAL_WORLD_SIZE > 1.
    """
    env = os.environ if environ is None else environ
    local_processes = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    if device_map is not None and shard is not None and shard.launched and local_processes > 1:
        raise ConfigError(
            f"--device-map spreads the base model over every visible GPU, but the launcher runs "
            f"{local_processes} processes on this machine; launch one process per machine, or "
            "start one `mobench run --shard i/n` per GPU group with its own CUDA_VISIBLE_DEVICES"
        )
