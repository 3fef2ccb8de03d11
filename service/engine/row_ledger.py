"""The one place a row leaves the service (DESIGN 6): it is counted once, with its typed fate and the layers it
ran, and its outcome is handed back to the request.

Every way out goes through `answer` or `drop`: answered by the engine, shed or refused at admission, abandoned in
the queue or between steps (client gone, deadline passed), failed with its step, or cut off by shutdown. A row
that has left (`settled`) is never counted or answered again.

Shadow rows (the agreement monitor's full-depth re-runs) leave through here too, but are counted apart
(`beem_shadow_rows_total`): no request asked for them, so they stay out of the request and exit-depth metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from service.engine.queued_row import QueuedRow
from service.engine.row_outcome import Dropped, RowAnswer, RowFate
from service.metrics import ServiceMetrics

# beem_shadow_rows_total's outcome for each fate: a shadow row is answered to be compared; one dropped for a request
# or for shutdown was shed.
SHADOW_OUTCOME = {RowFate.ANSWERED: "compared", RowFate.SHUTDOWN: "shed", RowFate.CLIENT_GONE: "shed"}


class RowLedger:
    def __init__(self, metrics: ServiceMetrics, task: str, num_layers: int) -> None:
        self.metrics = metrics
        self.task = task
        self.num_layers = num_layers
        self._admitted = metrics.admitted_rows.labels(task)
        self._left = {fate: metrics.rows.labels(task, fate.value) for fate in RowFate}
        self._computed = metrics.layers_computed.labels(task)
        self._possible = metrics.layers_possible.labels(task)
        self._shadow_left = {fate: metrics.shadow_rows.labels(SHADOW_OUTCOME.get(fate, fate.value)) for fate in RowFate}
        self.shadow_rows_left_engine = 0  # shadow rows that joined the engine and have left it since (the queue
        # counts those it handed out: the difference is what its cap counts)

    def totals(self) -> dict[str, object]:
        """Rows admitted and rows left by fate, as counted so far: what an unloaded version leaves behind
        (`/v1/models`), since its metrics leave /metrics with it. Admitted rows all leave by a fate other than
        `shed` (rows refused at admission are never admitted), so a settled engine has admitted == sum of the rest."""
        registry = self.metrics.registry
        admitted = registry.get_sample_value("beem_admitted_rows_total", {"task": self.task}) or 0.0
        left = {fate.value: registry.get_sample_value("beem_rows_total", {"task": self.task, "outcome": fate.value})
                for fate in RowFate}  # fmt: skip
        return {"admitted": int(admitted), "left": {fate: int(count or 0) for fate, count in left.items()}}

    def admitted(self, count: int) -> None:
        self._admitted.inc(count)

    def refused(self, count: int, fate: RowFate) -> None:
        """Rows refused before they were made (the admission check ahead of tokenization)."""
        self._left[fate].inc(count)

    def answer(self, item: QueuedRow, answer: RowAnswer) -> bool:
        """An answered row, counted with the layer of every exit it answered with (one per caption token). False
        when the row had already left (it is not counted again)."""
        if item.settled:
            return False
        item.settled, item.answered_at = True, time.monotonic()
        if item.shadow:
            self._shadow_settled(item, RowFate.ANSWERED)
            item.on_done(answer)
            return True
        exit_layers = answer.exit_layers
        histogram = self.metrics.exit_layer.labels(item.policy_name, self.task)
        for layer in exit_layers:
            histogram.observe(layer)
        self._computed.inc(sum(exit_layers))
        self._possible.inc(self.num_layers * len(exit_layers))
        self._left[RowFate.ANSWERED].inc()
        item.on_done(answer)
        return True

    def drop(self, items: Iterable[QueuedRow], fate: RowFate, layers_run: int = 0, detail: str = "") -> int:
        """Rows that leave unanswered, each having run `layers_run` layers (counted as computed, not possible).
        Returns how many left now (rows that had already left are not counted again)."""
        left = 0
        for item in items:
            if item.settled:
                continue
            item.settled = True
            left += 1
            if item.shadow:
                self._shadow_settled(item, fate)
                item.on_done(Dropped(fate, detail))
                continue
            self._computed.inc(layers_run)
            self._left[fate].inc()
            item.on_done(Dropped(fate, detail))
        return left

    def _shadow_settled(self, item: QueuedRow, fate: RowFate) -> None:
        self._shadow_left[fate].inc()
        if item.joined_at:
            self.shadow_rows_left_engine += 1
