"""bench.thread_priorities reads each thread's own nice: a thread lowered to nice 19 shows as such, its
neighbours do not, and a thread born since the last record is marked new."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from bench.thread_priorities import snapshot, thread_records

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_a_lowered_thread_shows_its_own_nice_and_is_new_since_the_last_record() -> None:
    pid, me = os.getpid(), threading.get_native_id()
    before = thread_records(pid)
    assert before[me]["nice"] == os.getpriority(os.PRIO_PROCESS, me)
    lowered, release = threading.Event(), threading.Event()
    ids: list[int] = []

    def background() -> None:
        ids.append(threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, ids[0], 19)  # lowering needs no privilege
        lowered.set()
        release.wait(10)

    thread = threading.Thread(target=background)
    thread.start()
    try:
        assert lowered.wait(10)
        threads = {t["tid"]: t for t in snapshot("now", pid, before)["threads"]}
        assert threads[ids[0]]["nice"] == 19 and threads[ids[0]]["new"]
        assert threads[me]["nice"] == before[me]["nice"] and not threads[me]["new"]
    finally:
        release.set()
        thread.join()
