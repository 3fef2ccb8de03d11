"""The one check for rows nobody waits for any more: their deadline passed, or their client left (or a sibling row
failed their request). Every engine runs it between steps and the admission queue on what waits, so a row leaves
before anything more is spent on it, counted with the fate this says.

Looking at every row's `cancelled` flag is a Python loop over rows; the event loop bumps a cancellation count when a
client leaves (`StepEngine.notice_cancellation`), so a holder of rows looks only when that count moved since it
last did (`CancellationWatch`). Deadlines are a numpy comparison, always.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine.queued_row import QueuedRow
from service.engine.row_outcome import RowFate


def is_abandoned(row: QueuedRow, now: float) -> bool:
    return row.cancelled or row.deadline <= now


def abandoned_fate(row: QueuedRow) -> RowFate:
    """Why an abandoned row leaves: as its canceller said (client gone, or a sibling's error), else its timeout."""
    return row.cancelled_as if row.cancelled else RowFate.TIMEOUT


@dataclass
class CancellationWatch:
    """The engine's cancellation count when a set of rows was last searched for cancelled ones."""

    seen: int

    def abandoned(self, rows: np.ndarray, deadlines: np.ndarray, now: float, cancellations: int) -> np.ndarray:
        """(N,) bool: the rows (an object array; None for a slot whose row left) past their deadline (N,) or, when
        a client left since the last look, cancelled."""
        gone = deadlines <= now
        if cancellations != self.seen:
            self.seen = cancellations
            gone |= np.fromiter((row is not None and row.cancelled for row in rows), dtype=bool, count=len(rows))
        return gone

    def may_have_abandoned(self, earliest_deadline: float, now: float, cancellations: int) -> bool:
        """False in the usual case, cheaply: no deadline has passed and no client left since the last look."""
        return earliest_deadline <= now or cancellations != self.seen
