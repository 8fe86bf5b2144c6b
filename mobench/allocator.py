"""glibc malloc settings for decoding on CPU: reuse freed memory instead of faulting it in again.

Every generated token allocates a few tensors of rows x vocabulary (logits, their fp32 copy,
log-probs: 4 MB each for 22 rows of SmolLM2's 49152 tokens). glibc serves such blocks with
their own mapping or gives freed heap back to the OS once more than a few MB are free at its top
(its adaptive thresholds), so the next token's tensors page-fault their memory in again:
measured here at 2-3 ms per 4 MB tensor, up to a fifth of a fused 22-row decoding step on
2 cores. :func:`reuse_freed_memory` fixes the thresholds so that blocks up to 32 MiB come from
the heap and freed memory stays mapped for reuse (up to 1 GiB at the heap's top).

Costs: the resident set does not shrink after a peak until :func:`trim` (``malloc_trim``) is
called. Applied by ``mobench run`` / :func:`mobench.pipeline.execute_run` and ``mobench bench``
on CPU; recorded in ``env.json`` (``malloc``). Does nothing off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's own adaptive maximum on 64-bit
TRIM_THRESHOLD = 2**30

_applied: dict[str, int] | None = None


@cache
def _libc() -> Any:
    """glibc, or None (another C library, or not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def reuse_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module docstring); True when applied."""
    global _applied
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if ok:
        _applied = {"mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    return ok


def trim() -> None:
    """Give free heap memory back to the OS now (``malloc_trim(0)``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def describe() -> dict[str, int] | str:
    """What this process uses, for env.json: the fixed thresholds, or the library defaults."""
    return dict(_applied) if _applied is not None else "default (adaptive glibc or non-glibc)"
