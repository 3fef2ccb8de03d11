"""The one owner of the queue (DESIGN 5.7): admits rows by a row bound and an expected-wait bound, hands them to
the engine between steps within its budgets, and drops queued rows nobody waits for. It keeps every count
admission reads: the rows waiting, the requests' rows in flight (from the load the engine reports after every step
that changed it, `report_load`) and the shadow rows in flight (those it handed out, less those the ledger saw
leave).

Thread-safe: the event loop calls `submit` (never blocks), the engine thread calls `take` between steps and
`wait_for_work` when it has nothing in flight.

Admission (DESIGN 6): a request is shed with 429 when the rows already waiting would pass `max_queue`, or when
the expected wait would pass `max_queue_wait_ms`: the work ahead of the request, the rows waiting plus the rows in
flight (a new row shares the engine with them: continuous batching has no "its turn"), divided by the engine's
measured drain rate (rows it finishes per busy second when it is loaded). Retry-After is that expected wait,
rounded up to whole seconds. Its own rows do not count: an idle server admits any request that passes the row
bound.

Shadow rows (the agreement monitor's full-depth re-runs of answered rows) wait in a lane of their own, outside
every bound above: they join the engine only when no request's row is waiting, at most `shadow_max_rows_in_engine`
at a time, and they are the first thing shed: when a request's rows must wait for room, when a request is refused,
when their lane is full (the oldest goes), and at shutdown.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.engine.abandoned_rows import abandoned_fate, is_abandoned
from service.engine.drain_rate import DrainRate
from service.engine.queued_row import QueuedRow
from service.engine.row_ledger import RowLedger
from service.engine.row_outcome import RowFate
from service.metrics import ServiceMetrics

ItemT = TypeVar("ItemT", bound=QueuedRow)
ABANDONED_SCAN_INTERVAL_S = 0.05  # how often the whole queue is searched for rows nobody waits for


class QueueFullError(RuntimeError):
    """Shed load (429): the queue is full, or its expected wait too long."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineClosedError(RuntimeError):
    """The engine is shutting down and admits nothing new (503)."""


@dataclass(frozen=True)
class AdmissionLimits:
    """The server settings of the same names (`service/settings.py` says what each means)."""

    max_queue: int  # rows waiting for the engine; beyond it 429
    max_queue_wait_ms: float  # expected wait of a new request; beyond it 429 (math.inf: no time bound)
    max_batch_wait_ms: float = 0.0  # an idle engine's first row waits this long for others to start with it
    shadow_max_queue_rows: int = 64  # shadow rows waiting; a new one pushes out the oldest
    shadow_max_rows_in_engine: int = 4  # shadow rows in flight at once


class AdmissionQueue(Generic[ItemT]):
    def __init__(
        self,
        limits: AdmissionLimits,
        ledger: RowLedger,
        drain: DrainRate,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.ledger = ledger
        self.drain = drain
        self.metrics = metrics
        self.clock = clock
        self._waiting: deque[ItemT] = deque()
        self._shadow_waiting: deque[ItemT] = deque()  # shadow rows, oldest first
        self._condition = threading.Condition()
        self._closed = False
        self._closed_because = "the server is shutting down"
        self._last_scan = 0.0
        self._engine_rows = 0  # requests' rows in flight in the engine, as of its last load report
        self._shadow_rows_handed_out = 0  # shadow rows `take` gave the engine, ever

    @property
    def depth(self) -> int:
        """Request rows waiting (shadow rows are not counted)."""
        return len(self._waiting)

    @property
    def shadow_depth(self) -> int:
        return len(self._shadow_waiting)

    def expected_wait_s(self, rows_waiting: int | None = None) -> float:
        """Seconds until the work ahead of a new request, `rows_waiting` (default: all queued rows) plus the rows
        in flight, has drained at the measured rate; 0 before the rate has been measured."""
        rows = (len(self._waiting) if rows_waiting is None else rows_waiting) + self.engine_rows
        rate = self.drain.rows_per_s
        return rows / rate if rows > 0 and rate else 0.0

    @property
    def engine_rows(self) -> int:
        """Requests' rows in flight in the engine, as of its last `report_load`."""
        return self._engine_rows

    @property
    def shadow_rows_in_engine(self) -> int:
        """Shadow rows handed to the engine that have not left it (the ledger counts those that left)."""
        return self._shadow_rows_handed_out - self.ledger.shadow_rows_left_engine

    def report_load(self, rows_in_flight: int) -> None:
        """The engine's rows in flight, reported whenever rows came or went (engine thread). Shadow rows are not work
        ahead of a request: its rows step first, and shadow rows are shed for it."""
        self._engine_rows = max(rows_in_flight - self.shadow_rows_in_engine, 0)

    def check(self, num_rows: int) -> None:
        """Refuse a request of `num_rows` rows now if `submit` would: the route calls this before tokenizing, so
        shed load costs the server as little as possible (a refused request is counted here, its rows never
        exist)."""
        with self._condition:
            refusal = self._refusal(num_rows)
        if refusal is not None:
            self.ledger.refused(num_rows, RowFate.SHUTDOWN if isinstance(refusal, EngineClosedError) else RowFate.SHED)
            raise refusal

    def _refusal(self, num_rows: int) -> QueueFullError | EngineClosedError | None:
        if self._closed:
            return EngineClosedError(self._closed_because)
        waiting = len(self._waiting)
        expected = self.expected_wait_s(waiting)
        retry_after = max(1.0, math.ceil(expected))
        if waiting + num_rows > self.limits.max_queue:
            self._shed_shadow_rows()
            return QueueFullError(f"queue full ({waiting} rows waiting, limit {self.limits.max_queue})", retry_after)
        limit_ms = self.limits.max_queue_wait_ms
        if expected > limit_ms / 1000:
            self._shed_shadow_rows()
            return QueueFullError(
                f"expected queue wait {expected * 1000:.0f} ms is over {limit_ms:.0f} ms", retry_after
            )
        return None

    def submit(self, items: list[ItemT]) -> None:
        """Admit all of a request's rows or none of them (the refused ones are counted as shed or shutdown)."""
        now = self.clock()
        with self._condition:
            refusal = self._refusal(len(items))
            if refusal is not None:
                self.ledger.drop(items, RowFate.SHUTDOWN if isinstance(refusal, EngineClosedError) else RowFate.SHED)
                raise refusal
            for item in items:
                item.enqueued_at = now
            self._waiting.extend(items)
            self.ledger.admitted(len(items))
            self._publish()
            self._condition.notify()

    def submit_shadow(self, item: ItemT) -> None:
        """Queue a shadow row (never refused: when it cannot wait, it or an older one is shed and counted)."""
        with self._condition:
            if self._closed or self._waiting:  # shutting down, or requests are waiting for room: shed at once
                self.ledger.drop([item], RowFate.SHED)
                return
            if len(self._shadow_waiting) >= self.limits.shadow_max_queue_rows:
                self.ledger.drop([self._shadow_waiting.popleft()], RowFate.SHED)
            item.enqueued_at = self.clock()
            self._shadow_waiting.append(item)
            self._condition.notify()

    def close(self, because: str = "the server is shutting down") -> None:
        """Admit nothing more (new requests get 503 saying `because`); `take` keeps handing out what was
        admitted (queued shadow rows are shed)."""
        with self._condition:
            if not self._closed:
                self._closed, self._closed_because = True, because
            self._shed_shadow_rows()
            self._condition.notify_all()

    def _shed_shadow_rows(self) -> None:
        """Drop every queued shadow row (lock held): requests need the room."""
        if self._shadow_waiting:
            self.ledger.drop(self._shadow_waiting, RowFate.SHED)
            self._shadow_waiting.clear()

    def wait_for_work(self) -> bool:
        """Block an idle engine until rows are queued (then up to `max_batch_wait_ms` for others to join the first)
        or the queue is closed and empty: False then, the engine may stop."""
        with self._condition:
            while not self._waiting:
                if self._shadow_waiting:
                    return True  # shadow rows start at once: there is nobody to wait with
                if self._closed:
                    return False
                self._condition.wait()
            start_by = self._waiting[0].enqueued_at + self.limits.max_batch_wait_ms / 1000
            while not self._closed and (remaining := start_by - self.clock()) > 0:
                self._condition.wait(remaining)
            return True

    def take(self, room_rows: int, room_tokens: int, engine_empty: bool) -> list[ItemT]:
        """Queued rows for the engine, oldest first, as many as fit: at most `room_rows`, and as one new group of
        (rows x longest row) padded tokens within `room_tokens`. An empty engine always gets at least one row.
        Rows whose client left or whose deadline passed are dropped on the way."""
        if not self._waiting and not self._shadow_waiting:
            return []
        now = self.clock()
        taken: list[ItemT] = []
        longest = 0
        with self._condition:
            if now - self._last_scan >= ABANDONED_SCAN_INTERVAL_S:
                self._drop_abandoned(now)
            while self._waiting and len(taken) < room_rows:
                candidate = self._waiting[0]
                if is_abandoned(candidate, now):
                    self._drop_abandoned(now)
                    continue
                wider = max(longest, candidate.num_tokens)
                if (len(taken) + 1) * wider > room_tokens and (taken or not engine_empty):
                    break
                taken.append(self._waiting.popleft())
                longest = wider
            if self._waiting:  # requests wait for room: shadow rows give way
                self._shed_shadow_rows()
            else:
                self._take_shadow_rows(taken, room_rows, room_tokens, longest, now, engine_empty)
            self._publish()
        for item in taken:
            if not item.shadow:
                item.joined_at = now
                self.metrics.queue_wait.observe(now - item.enqueued_at)
        return taken

    def _take_shadow_rows(
        self, taken: list[ItemT], room_rows: int, room_tokens: int, longest: int, now: float, engine_empty: bool
    ) -> None:
        """Shadow rows into the room the requests' rows left, within the shadow cap (lock held); an empty engine
        takes at least one, as for requests' rows."""
        room_shadow = self.limits.shadow_max_rows_in_engine - self.shadow_rows_in_engine
        while self._shadow_waiting and room_shadow > 0 and len(taken) < room_rows:
            candidate = self._shadow_waiting[0]
            if candidate.deadline <= now:
                self.ledger.drop([self._shadow_waiting.popleft()], RowFate.TIMEOUT)
                continue
            wider = max(longest, candidate.num_tokens)
            if (len(taken) + 1) * wider > room_tokens and (taken or not engine_empty):
                break
            taken.append(self._shadow_waiting.popleft())
            candidate.joined_at = now
            self._shadow_rows_handed_out += 1
            room_shadow -= 1
            longest = wider

    def _drop_abandoned(self, now: float) -> None:
        """Drop queued rows whose client left or whose deadline passed, before any compute is spent on them."""
        self._last_scan = now
        kept: deque[ItemT] = deque()
        for item in self._waiting:
            if is_abandoned(item, now):
                self.ledger.drop([item], abandoned_fate(item))
            else:
                kept.append(item)
        self._waiting = kept

    def _publish(self) -> None:
        self.metrics.queue_depth.set(len(self._waiting))
        self.metrics.expected_queue_wait.set(self.expected_wait_s())
