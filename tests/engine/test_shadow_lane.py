"""The admission queue's shadow lane (service/engine/admission_queue.py): shadow rows join only when no request's
row waits, within their in-flight cap, and are the first thing shed; the ledger counts them apart. Fake clock, no
engine."""

from __future__ import annotations

import math

import pytest

from service.engine.admission_queue import AdmissionLimits, AdmissionQueue, QueueFullError
from service.engine.row_ledger import RowLedger
from service.engine.row_outcome import ClassAnswer, Dropped, RowFate
from service.metrics import ServiceMetrics
from tests.engine.test_admission import FakeClock, Row, counted, measured


def shadow_row(deadline: float = math.inf) -> Row:
    row = Row(deadline)
    row.shadow = True
    return row


def make_queue(
    max_rows: int = 1000, shadow_queue: int = 64, shadow_in_engine: int = 4, rate: float | None = None
) -> tuple[AdmissionQueue[Row], RowLedger, ServiceMetrics, FakeClock]:
    metrics, clock = ServiceMetrics(3), FakeClock()
    ledger = RowLedger(metrics, "classification", 3)
    limits = AdmissionLimits(max_queue=max_rows, max_queue_wait_ms=250, shadow_max_queue_rows=shadow_queue,
                             shadow_max_rows_in_engine=shadow_in_engine)  # fmt: skip
    return AdmissionQueue[Row](limits, ledger, measured(rate), metrics, clock), ledger, metrics, clock


def shadow_count(metrics: ServiceMetrics, outcome: str) -> float:
    return metrics.shadow_rows.labels(outcome)._value.get()


@pytest.mark.parametrize(
    ("requests", "shadows", "room_rows", "cap", "taken_requests", "taken_shadows", "shed"),
    [
        (0, 3, 10, 4, 0, 3, 0),  # an idle engine: shadow rows start
        (2, 3, 10, 4, 2, 3, 0),  # requests first, shadow rows in the room left
        (2, 3, 4, 4, 2, 2, 0),  # room for two more: one shadow row waits
        (0, 6, 10, 4, 0, 4, 0),  # the in-flight cap
        (5, 3, 4, 4, 4, 0, 3),  # a request's row waits for room: every queued shadow row is shed
    ],
)  # fmt: skip
def test_shadow_rows_take_only_what_requests_leave(
    requests: int, shadows: int, room_rows: int, cap: int, taken_requests: int, taken_shadows: int, shed: int
) -> None:
    queue, _, metrics, _ = make_queue(shadow_in_engine=cap)
    lane = [shadow_row() for _ in range(shadows)]
    for row in lane:  # queued while no request waits
        queue.submit_shadow(row)
    if requests:
        queue.submit([Row() for _ in range(requests)])
    taken = queue.take(room_rows, 10_000, engine_empty=True)
    assert sum(not row.shadow for row in taken) == taken_requests
    assert sum(row.shadow for row in taken) == taken_shadows
    assert [row.shadow for row in taken] == sorted(row.shadow for row in taken)  # requests' rows come first
    assert shadow_count(metrics, "shed") == shed and queue.shadow_rows_in_engine == taken_shadows
    assert counted(metrics, "shed") == 0 and metrics.admitted_rows.labels("classification")._value.get() == requests


def test_a_shadow_row_offered_while_requests_wait_is_shed_at_once() -> None:
    queue, _, metrics, _ = make_queue()
    queue.submit([Row()])
    row = shadow_row()
    queue.submit_shadow(row)
    assert row.outcomes == [Dropped(RowFate.SHED)] and queue.shadow_depth == 0 and shadow_count(metrics, "shed") == 1


def test_a_full_lane_pushes_out_its_oldest_row() -> None:
    queue, _, _, _ = make_queue(shadow_queue=2)
    rows = [shadow_row() for _ in range(3)]
    for row in rows:
        queue.submit_shadow(row)
    assert rows[0].outcomes == [Dropped(RowFate.SHED)] and queue.shadow_depth == 2


def test_a_refused_request_sheds_the_queued_shadow_rows() -> None:
    queue, _, metrics, _ = make_queue(max_rows=2)
    queue.submit_shadow(shadow_row())
    queue.submit([Row(), Row()])
    with pytest.raises(QueueFullError):
        queue.submit([Row()])
    assert queue.shadow_depth == 0 and shadow_count(metrics, "shed") == 1


def test_shadow_rows_leave_through_the_ledger_counted_apart() -> None:
    queue, ledger, metrics, clock = make_queue()
    answered, late = shadow_row(), shadow_row(deadline=clock.now + 1)
    queue.submit_shadow(answered)
    (taken,) = queue.take(1, 100, engine_empty=True)
    assert taken is answered and queue.shadow_rows_in_engine == 1
    ledger.answer(taken, ClassAnswer(label=1, score=0.9, exit_layer=3))
    assert queue.shadow_rows_in_engine == 0 and shadow_count(metrics, "compared") == 1
    assert answered.outcomes == [ClassAnswer(label=1, score=0.9, exit_layer=3)]
    # Shadow rows are not requests' rows: no answered row, exit layer or computed layer is counted for them.
    assert counted(metrics, "answered") == 0
    assert metrics.layers_computed.labels("classification")._value.get() == 0
    queue.submit_shadow(late)
    clock.now += 2
    assert queue.take(1, 100, engine_empty=True) == []
    assert late.outcomes == [Dropped(RowFate.TIMEOUT)] and shadow_count(metrics, "timeout") == 1


def test_closing_sheds_the_lane_and_an_idle_engine_wakes_for_shadow_rows() -> None:
    queue, _, metrics, _ = make_queue()
    queue.submit_shadow(shadow_row())
    assert queue.wait_for_work()  # nobody to wait with: it starts at once
    queue.close()
    assert queue.shadow_depth == 0 and shadow_count(metrics, "shed") == 1
    assert not queue.wait_for_work()
