"""After an unload, the allocator's free pages go back to the system (`release_freed_memory`): without the trim,
glibc keeps freed small blocks in its arenas, and the server's resident memory grew with every hot swap."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest
import torch

from service.model_versions.memory_release import release_freed_memory

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_BYTES / 2**20


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's trim")
def test_freed_small_blocks_are_returned_to_the_system() -> None:
    # 3000 blocks of 64 KiB (under glibc's mmap threshold: they come from the heap, as a bundle's many small tensors
    # do), freed but for the last one, which pins the heap's top so free() alone cannot shrink it.
    blocks = [torch.ones(16 * 1024) for _ in range(3000)]
    keep = blocks[-1]
    del blocks
    before = resident_mib()
    assert release_freed_memory() is True
    after = resident_mib()
    assert before - after > 100, (before, after)  # most of the ~190 MiB freed went back
    assert keep.sum().item() == 16 * 1024
