"""Peak memory of one phase, measured above a baseline taken when the phase starts.

A process's lifetime peak (``ru_maxrss``, or a peak taken across model loading) says nothing
about what decoding or training adds: it is set by whatever loaded first (a bf16 model converted
from fp32 weights peaks above the fp32 one) and never comes down. :class:`MemoryMeter` resets the
peak when a phase starts, so each phase and each configuration gets its own number:

* CUDA: ``torch.cuda.reset_peak_memory_stats`` at the start; the peak is
  ``max_memory_allocated`` minus the allocation at the start.
* CPU (Linux): writing 5 to ``/proc/self/clear_refs`` restarts the resident set's high-water
  mark (``VmHWM``) from the current resident set; the peak is VmHWM minus the resident set at
  the start. Free heap memory is first given back to the OS (:func:`mobench.allocator.trim`),
  so memory freed by an earlier phase cannot be reused unseen.
* Elsewhere (no procfs, or a kernel that refuses the reset): :attr:`MemoryMeter.available` is
  False, :meth:`MemoryMeter.peak_mb` returns None and :attr:`MemoryMeter.method` says why;
  never a number that would mean something else.

The high-water mark is per process: one meter at a time (a second ``start`` resets the first).
Loaded weights are counted apart, as bytes of parameters and buffers (:func:`weights_mb`).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mobench import allocator

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_mb(key: str) -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(f"{key} not in {_STATUS}")


def reset_rss_peak() -> str | None:
    """Restart VmHWM from the current resident set; None when done, else why not."""
    try:
        _CLEAR_REFS.write_text("5")
        after, rss = _status_mb("VmHWM"), _status_mb("VmRSS")
    except (OSError, KeyError) as e:
        return f"cannot reset the resident-set peak ({e})"
    # the reset sets VmHWM to the current RSS; a kernel that ignores the write leaves it above
    if after > rss + 1.0:
        return "writing 5 to /proc/self/clear_refs did not reset VmHWM on this kernel"
    return None


class MemoryMeter:
    """Peak memory of a phase above its start (see the module docstring).

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(self, device: str) -> None:
        self.device = str(device)
        self.start_mb = 0.0
        self.cuda = self.device.startswith("cuda")
        reason = None if self.cuda else reset_rss_peak()
        self.available = reason is None
        if self.cuda:
            self.method = "cuda max_memory_allocated above the allocation at the phase's start"
        elif reason is None:
            self.method = "resident-set high-water mark (Linux VmHWM, reset at the phase's start)"
        else:
            self.method = f"not measured: {reason}"

    def start(self) -> None:
        """Take the baseline and restart the peak."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.available:
            allocator.trim()
            reason = reset_rss_peak()
            if reason is not None:  # worked at construction: a failure now is not silent
                raise RuntimeError(reason)
            self.start_mb = _status_mb("VmRSS")

    def peak_mb(self) -> float | None:
        """Peak MB above the baseline since :meth:`start` (None when not measured)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start_mb
        if not self.available:
            return None
        return max(0.0, _status_mb("VmHWM") - self.start_mb)


def weights_mb(*roots: Any, depth: int = 5) -> float:
    """MB of the parameters and buffers of every ``nn.Module`` reachable from ``roots`` through
    attributes, lists, tuples and dicts (up to ``depth`` levels), each tensor storage once:
    the loaded weights of a configuration (base, guide copies, adapters), whatever its guide
    keeps them in."""
    modules: dict[int, torch.nn.Module] = {}
    seen: set[int] = set()

    def visit(obj: Any, level: int) -> None:
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            modules[id(obj)] = obj
            return  # its submodules come with it
        if isinstance(obj, dict):
            children: Iterable[Any] = obj.values()
        elif isinstance(obj, list | tuple | set):
            children = obj
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            children = vars(obj).values()
        else:
            return
        for child in children:
            visit(child, level + 1)

    for root in roots:
        visit(root, 0)
    storages: dict[tuple[str, int], int] = {}
    for module in modules.values():
        for t in (*module.parameters(), *module.buffers()):
            storage = t.untyped_storage()
            storages[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(storages.values()) / 2**20
