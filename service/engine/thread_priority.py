"""Background CPU priority for one thread: a new model version loads at nice 19 beside the version serving, so on a
busy machine the load takes what the serving threads leave instead of half the cores.

Linux gives each thread its own nice value (`setpriority(PRIO_PROCESS, thread id)`), so only the loading thread is
lowered, and only for the block. Raising it back needs privilege (root, CAP_SYS_NICE or RLIMIT_NICE): where that
is missing the block runs at normal priority rather than leave a serving thread at nice 19 for good.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
BACKGROUND_NICE = 19


@contextmanager
def background_priority() -> Iterator[None]:
    """The block at nice 19 in this thread, then back to its own priority."""
    thread = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, thread)
    except (AttributeError, OSError):  # not Linux
        yield
        return
    if not _may_raise_back_to(before):
        log.debug("loading at normal priority: this process may not raise a thread's priority back")
        yield
        return
    os.setpriority(os.PRIO_PROCESS, thread, BACKGROUND_NICE)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, thread, before)


def _may_raise_back_to(nice: int) -> bool:
    if os.geteuid() == 0:
        return True
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NICE)  # allows nice down to 20 - limit
    return soft_limit == resource.RLIM_INFINITY or 20 - soft_limit <= nice
