"""Give the memory an unloaded version freed back to the system.

A version's weights and activations are freed by reference counting when it is unloaded (`ServedVersion.unload`),
but glibc's allocator keeps freed pages in its arenas for reuse, and the next version's tensors seldom fit those
holes exactly. Measured on this project's 2-core CPU, nine hot swaps in turn of the three committed models with no
load: 765 -> 880 MiB resident without a trim, 765 -> 718 MiB with `malloc_trim(0)` after each unload, which returns
the arenas' free pages to the system (ctypes releases the GIL for the call, and it runs in a worker thread, so
serving goes on meanwhile). A `gc.collect()` first made no difference and holds the GIL for ~240 ms with two models
loaded, so there is none. Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
    return trim


def release_freed_memory() -> bool:
    """Return the allocator's free pages to the system; False where the allocator has no trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
