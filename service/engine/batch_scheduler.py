"""The one owner of the queue (DESIGN 5.7): admits rows, forms micro-batches, drops rows nobody waits for.

Thread-safe: the event loop calls `submit` (never blocks), the engine thread calls `next_batch` (blocks until there
is work). A batch starts with the oldest row and takes more, in arrival order, until it has `max_batch_size` rows,
its padded size (rows x longest row) would pass `max_batch_tokens`, or `max_batch_wait_s` has passed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

from service.engine.work_item import QueuedItem
from service.metrics import ServiceMetrics

ItemT = TypeVar("ItemT", bound=QueuedItem)


class QueueFullError(RuntimeError):
    """The queue holds `max_queue` rows already: shed load (429)."""


class EngineClosedError(RuntimeError):
    """The engine is shutting down and admits nothing new (503)."""


class BatchScheduler(Generic[ItemT]):
    def __init__(
        self,
        max_batch_size: int,
        max_batch_wait_s: float,
        max_batch_tokens: int,
        max_queue: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: deque[ItemT] = deque()
        self._condition = threading.Condition()
        self._closed = False

    def submit(self, items: list[ItemT]) -> None:
        """Admit all of a request's rows or none of them."""
        now = time.monotonic()
        with self._condition:
            if self._closed:
                raise EngineClosedError("the server is shutting down")
            if len(self._pending) + len(items) > self.max_queue:
                raise QueueFullError(f"queue full ({len(self._pending)} rows waiting, limit {self.max_queue})")
            for item in items:
                item.enqueued_at = now
            self._pending.extend(items)
            self.metrics.queue_depth.set(len(self._pending))
            self._condition.notify()

    def close(self) -> None:
        """Admit nothing more; `next_batch` keeps returning what was admitted, then None."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def depth(self) -> int:
        return len(self._pending)

    def next_batch(self) -> list[ItemT] | None:
        """Block until a batch is ready; None once closed and drained."""
        with self._condition:
            while True:
                self._discard_abandoned()
                if self._pending:
                    break
                if self._closed:
                    return None
                self._condition.wait()
            batch = [self._pending.popleft()]
            longest = batch[0].num_tokens
            fill_until = time.monotonic() + self.max_batch_wait_s
            while len(batch) < self.max_batch_size:
                if not self._pending:
                    remaining = fill_until - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._condition.wait(remaining)
                    continue
                candidate = self._pending[0]
                if _abandoned(candidate, time.monotonic()):
                    self._drop(self._pending.popleft())
                    continue
                if (len(batch) + 1) * max(longest, candidate.num_tokens) > self.max_batch_tokens:
                    break
                batch.append(self._pending.popleft())
                longest = max(longest, candidate.num_tokens)
            self.metrics.queue_depth.set(len(self._pending))
        started = time.monotonic()
        for item in batch:
            self.metrics.queue_wait.observe(started - item.enqueued_at)
        return batch

    def _drop(self, item: ItemT) -> None:
        reason = "client_gone" if item.cancelled else "timeout"
        self.metrics.dropped_rows.labels(reason).inc()
        item.drop(reason)

    def _discard_abandoned(self) -> None:
        """Drop queued rows whose client left or whose deadline passed, before any compute is spent on them."""
        now = time.monotonic()
        if any(_abandoned(item, now) for item in self._pending):
            kept: deque[ItemT] = deque()
            for item in self._pending:
                if _abandoned(item, now):
                    self._drop(item)
                else:
                    kept.append(item)
            self._pending = kept


def _abandoned(item: QueuedItem, now: float) -> bool:
    return item.cancelled or item.deadline <= now
