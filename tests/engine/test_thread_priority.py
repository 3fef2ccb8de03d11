"""A loading thread's background priority: lowered for the block in that thread only, then restored."""

from __future__ import annotations

import os
import threading

import pytest

from service.engine.thread_priority import BACKGROUND_NICE, background_priority

pytestmark = pytest.mark.skipif(not hasattr(os, "getpriority"), reason="per-thread nice values are Linux's")


def test_only_the_block_in_this_thread_runs_at_background_priority() -> None:
    seen: dict[str, int] = {}

    def loader() -> None:
        thread = threading.get_native_id()
        seen["before"] = os.getpriority(os.PRIO_PROCESS, thread)
        with background_priority():
            seen["inside"] = os.getpriority(os.PRIO_PROCESS, thread)
            seen["other thread"] = os.getpriority(os.PRIO_PROCESS, main)
        seen["after"] = os.getpriority(os.PRIO_PROCESS, thread)

    main = threading.get_native_id()
    worker = threading.Thread(target=loader)
    worker.start()
    worker.join()
    may_restore = os.geteuid() == 0  # CI and this machine run as root; elsewhere the block keeps its priority
    assert seen["inside"] == (BACKGROUND_NICE if may_restore else seen["before"])
    assert seen["after"] == seen["before"] and seen["other thread"] == os.getpriority(os.PRIO_PROCESS, main)
