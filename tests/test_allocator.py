"""mobench.allocator: after reuse_freed_memory(), the per-token tensors of a decoding loop reuse
freed memory instead of page-faulting fresh memory in at every token."""

from __future__ import annotations

import resource

import pytest
import torch

from mobench import allocator


def _page_faults_of_a_decoding_like_loop() -> int:
    """Minor page faults of 20 'tokens', each allocating and freeing logits-sized tensors (a
    22 x 49152 bf16 block, its fp32 copy and log-softmax: 2, 4 and 4 MB), as the loop does."""
    logits = torch.randn(22, 49152).bfloat16()
    torch.log_softmax(logits.float(), dim=-1)  # warm-up: the first allocation always faults
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        fresh = logits + 0
        torch.log_softmax(fresh.float(), dim=-1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_logits_memory_is_reused_without_page_faults() -> None:
    libc = allocator._libc()
    if libc is None:
        pytest.skip("not glibc: reuse_freed_memory() does nothing here")
    # glibc told to map every block over 64 KiB on its own: each token faults ~2500 pages in
    libc.mallopt(allocator._M_MMAP_THRESHOLD, 64 * 1024)
    faulting = _page_faults_of_a_decoding_like_loop()
    assert faulting > 20 * 1000
    assert allocator.reuse_freed_memory()
    reusing = _page_faults_of_a_decoding_like_loop()
    assert reusing < faulting / 10
    assert allocator.describe() == {
        "mmap_threshold": allocator.MMAP_THRESHOLD,
        "trim_threshold": allocator.TRIM_THRESHOLD,
    }
    allocator.trim()
