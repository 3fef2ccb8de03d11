"""Admission by expected wait (service/engine/admission_queue.py) with a fake clock, and the drain rate it divides
by (service/engine/drain_rate.py): table-driven, no engine."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from beem.policies.exit_policies import FullDepthPolicy
from service.engine.admission_queue import AdmissionLimits, AdmissionQueue, EngineClosedError, QueueFullError
from service.engine.drain_rate import DrainRate
from service.engine.queued_row import QueuedRow
from service.engine.row_ledger import RowLedger
from service.engine.row_outcome import Dropped, RowFate, RowOutcome
from service.metrics import ServiceMetrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Row(QueuedRow):
    def __init__(self, deadline: float = math.inf, tokens: int = 1) -> None:
        self.outcomes: list[RowOutcome] = []
        super().__init__(policy=FullDepthPolicy(), policy_name="full", deadline=deadline, on_done=self.outcomes.append)
        self.tokens = tokens

    @property
    def num_tokens(self) -> int:
        return self.tokens


def measured(rate: float | None) -> DrainRate:
    drain = DrainRate(window_s=1.0, keep=0.0)
    if rate is not None:
        drain.record(int(rate), 1.0)  # one full window: exactly `rate` rows per busy second
    return drain


def make_queue(
    rate: float | None, max_rows: int = 1000, max_wait_s: float = 0.25
) -> tuple[AdmissionQueue[Row], ServiceMetrics, FakeClock]:
    metrics, clock = ServiceMetrics(3), FakeClock()
    limits = AdmissionLimits(max_queue=max_rows, max_queue_wait_ms=max_wait_s * 1000)
    queue = AdmissionQueue[Row](limits, RowLedger(metrics, "classification", 3), measured(rate), metrics, clock)
    return queue, metrics, clock


def counted(metrics: ServiceMetrics, outcome: str) -> float:
    return metrics.rows.labels("classification", outcome)._value.get()


@pytest.mark.parametrize(
    ("rate", "waiting", "inflight", "new_rows", "admitted", "retry_after"),
    [
        (None, 50, 30, 1, True, None),  # no loaded-engine measurement yet: only the row bound applies
        (100, 20, 0, 1, True, None),  # 0.2 s <= 0.25 s
        (100, 26, 0, 1, False, 1),  # 0.26 s > 0.25 s; Retry-After at least 1 s
        (100, 0, 26, 1, False, 1),  # rows in flight are work ahead too
        (100, 10, 10, 1, True, None),  # (10 + 10) / 100 = 0.2 s
        (10, 45, 0, 1, False, 5),  # 4.5 s: Retry-After rounds the expected wait up
        (100, 0, 0, 64, True, None),  # its own rows do not count: an idle server takes a big request
        (100, 25, 0, 64, True, None),  # 0.25 s is not over the bound
    ],
)
def test_admission_by_expected_wait(
    rate: float | None, waiting: int, inflight: int, new_rows: int, admitted: bool, retry_after: int | None
) -> None:
    queue, metrics, _ = make_queue(rate)
    queue.submit([Row() for _ in range(waiting)])
    queue.report_load(inflight)
    request = [Row() for _ in range(new_rows)]
    if admitted:
        queue.submit(request)
        assert queue.depth == waiting + new_rows
        assert counted(metrics, "shed") == 0
    else:
        with pytest.raises(QueueFullError) as refused:
            queue.submit(request)
        assert refused.value.retry_after_s == retry_after
        assert "expected queue wait" in str(refused.value)
        assert queue.depth == waiting
        assert counted(metrics, "shed") == new_rows
        assert all(row.outcomes == [Dropped(RowFate.SHED)] for row in request)
    assert metrics.admitted_rows.labels("classification")._value.get() == waiting + (new_rows if admitted else 0)


def test_the_row_bound_stays() -> None:
    queue, metrics, _ = make_queue(rate=None, max_rows=10)
    queue.submit([Row() for _ in range(8)])
    with pytest.raises(QueueFullError, match="queue full"):
        queue.submit([Row() for _ in range(3)])
    queue.submit([Row() for _ in range(2)])
    assert queue.depth == 10 and counted(metrics, "shed") == 3


def test_a_closed_queue_refuses_and_counts_shutdown() -> None:
    queue, metrics, _ = make_queue(rate=None)
    queue.submit([Row()])
    queue.close()
    with pytest.raises(EngineClosedError):
        queue.submit([Row(), Row()])
    assert counted(metrics, "shutdown") == 2
    assert len(queue.take(10, 100, engine_empty=True)) == 1  # what was admitted still goes to the engine


def test_take_respects_the_engine_budgets_in_arrival_order() -> None:
    queue, _, _ = make_queue(rate=None)
    rows = [Row(tokens=t) for t in (10, 30, 10, 10)]
    queue.submit(rows)
    assert queue.take(room_rows=3, room_tokens=60, engine_empty=False) == rows[:2]  # a third would be 3 x 30
    assert queue.take(room_rows=1, room_tokens=1000, engine_empty=False) == rows[2:3]
    assert queue.take(room_rows=5, room_tokens=5, engine_empty=False) == []  # too wide for a busy engine
    assert queue.take(room_rows=5, room_tokens=5, engine_empty=True) == rows[3:]  # an empty engine takes it


def test_abandoned_rows_are_dropped_in_the_queue_before_any_compute() -> None:
    queue, metrics, clock = make_queue(rate=None)
    gone, late, kept = Row(), Row(deadline=clock.now + 1), Row(deadline=clock.now + 10)
    queue.submit([gone, late, kept])
    gone.cancel()
    clock.now += 2
    assert queue.take(10, 100, engine_empty=True) == [kept]
    assert gone.outcomes == [Dropped(RowFate.CLIENT_GONE)] and late.outcomes == [Dropped(RowFate.TIMEOUT)]
    assert counted(metrics, "client_gone") == 1 and counted(metrics, "timeout") == 1


def test_a_row_leaves_once() -> None:
    metrics = ServiceMetrics(3)
    ledger = RowLedger(metrics, "classification", 3)
    row = Row()
    ledger.drop([row], RowFate.TIMEOUT)
    ledger.drop([row], RowFate.ERROR)
    assert row.outcomes == [Dropped(RowFate.TIMEOUT)]
    assert counted(metrics, "timeout") == 1 and counted(metrics, "error") == 0


def _rates(steps: list[tuple[int, float]], window_s: float = 0.2, keep: float = 0.5) -> Iterator[float | None]:
    drain = DrainRate(window_s, keep)
    for rows, seconds in steps:
        drain.record(rows, seconds)
        yield drain.rows_per_s


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([(5, 0.1)], [None]),  # half a window: no estimate yet
        ([(5, 0.1), (5, 0.1)], [None, 50.0]),
        ([(10, 0.2), (30, 0.2)], [50.0, 100.0]),  # 150/s measured, averaged with the previous 50/s
        ([(10, 0.2), (0, 0.2)], [50.0, 25.0]),  # a window where nothing left halves the estimate
    ],
)
def test_drain_rate_windows(steps: list[tuple[int, float]], expected: list[float | None]) -> None:
    assert list(_rates(steps)) == pytest.approx(expected)


def test_the_early_check_refuses_what_submit_would_and_counts_it() -> None:
    queue, metrics, _ = make_queue(rate=100)
    queue.submit([Row() for _ in range(30)])
    with pytest.raises(QueueFullError):
        queue.check(2)
    assert counted(metrics, "shed") == 2 and queue.depth == 30
    queue.close()
    with pytest.raises(EngineClosedError):
        queue.check(1)
    assert counted(metrics, "shutdown") == 1
