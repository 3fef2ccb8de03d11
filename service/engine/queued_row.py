"""What every row travelling through an engine carries for the admission queue and the ledger, whatever its task
(a tokenized text: `classify/tokenized_row.py`; an image: `caption/image_row.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from beem.policies.exit_policies import ExitPolicy
from service.engine.row_outcome import RowFate, RowOutcome


@dataclass(eq=False, kw_only=True)
class QueuedRow:
    """What every row has. The engine thread owns a row once submitted; the request side only flips `cancelled`
    (a plain bool, atomic under the GIL) when nobody waits for the row any more (`cancel`)."""

    policy: ExitPolicy
    policy_name: str
    deadline: float  # time.monotonic() after which the answer is useless
    on_done: Callable[[RowOutcome], None]  # thread-safe: hands the outcome to the request's event loop
    enqueued_at: float = 0.0  # time.monotonic() when admitted
    joined_at: float = 0.0  # when it left the queue for the engine (TEI's x-queue-time ends here)
    answered_at: float = 0.0  # when its answer was handed back (x-inference-time ends here)
    cancelled: bool = False
    cancelled_as: RowFate = RowFate.CLIENT_GONE  # why: the client left, or a sibling row failed the request
    settled: bool = False  # it has left and been counted (RowLedger): nothing may count or answer it again
    shadow: bool = False  # a shadow row: an answered row re-run at full depth for the agreement monitor, at low
    # priority (it joins only when no request's row waits, and is the first thing shed); no client waits for it

    @property
    def num_tokens(self) -> int:
        """Its size in the token budget."""
        return 1

    def cancel(self, fate: RowFate = RowFate.CLIENT_GONE) -> None:
        """Nobody waits for this row any more: the engine drops it at its next look, counted as `fate`."""
        self.cancelled_as, self.cancelled = fate, True


def object_array(rows: Sequence[QueuedRow]) -> np.ndarray:
    """(R,) object array of the rows (numpy selects rows of it with a mask in one call)."""
    array = np.empty(len(rows), dtype=object)
    array[:] = rows
    return array


def only_shadow_rows(rows: Iterable[QueuedRow | None]) -> bool:
    """Every row still there is a shadow row: its group steps only when no other group is waiting."""
    return all(row is None or row.shadow for row in rows)
