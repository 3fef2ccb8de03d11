"""How fast the engine works through its rows: rows that leave it per second of busy time, smoothed.

The admission queue divides the work ahead of a new request by this rate to get its expected wait (DESIGN 6:
admission bounds time, not only rows). Busy time only: an idle engine says nothing. A lightly loaded engine batches
less and drains slower than a loaded one, so the estimate errs on the cautious side when little is in flight,
where the work ahead is small anyway; measured under load it is the engine's capacity. It is measured on every
step, so an estimate taken in a bad moment never sticks. Windows of at least `window_s` of busy time are each
folded into an exponentially weighted average, so the estimate follows a change of load or mix (longer texts,
deeper exits) within a few seconds. A window is a second of busy time: long enough to hold a few waves of
full-depth rows, which leave only at the last layer.
"""

from __future__ import annotations


class DrainRate:
    def __init__(self, window_s: float = 1.0, keep: float = 0.5) -> None:
        self.window_s = window_s
        self.keep = keep  # weight of the previous estimate when a window closes
        self._rows = 0
        self._busy_s = 0.0
        self._rate: float | None = None

    def record(self, rows_left: int, busy_s: float) -> None:
        """One engine step: the rows that left the engine during it and how long it took (the step loop calls it)."""
        self._rows += rows_left
        self._busy_s += busy_s
        if self._busy_s >= self.window_s:
            measured = self._rows / self._busy_s
            self._rate = measured if self._rate is None else self.keep * self._rate + (1 - self.keep) * measured
            self._rows, self._busy_s = 0, 0.0

    @property
    def rows_per_s(self) -> float | None:
        """None until one window has been measured. Read from any thread (a float read is atomic)."""
        return self._rate
