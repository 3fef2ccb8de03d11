"""How fast the engine works through its rows: rows that leave it per second of busy time, smoothed.

The admission queue divides the rows waiting by this rate to get a new request's expected wait (DESIGN 6: admission
bounds time, not only rows). Busy time of a full engine only (the engine records the steps it runs while rows wait
in the queue): an idle or lightly loaded engine says nothing about its capacity, and a new request only waits when
the engine is full. Measured over windows of at least `window_s` of busy time, each folded into an exponentially
weighted average, so the estimate follows a change of load or mix (longer texts, deeper exits) within a second or
two.
"""

from __future__ import annotations


class DrainRate:
    def __init__(self, window_s: float = 0.2, keep: float = 0.5) -> None:
        self.window_s = window_s
        self.keep = keep  # weight of the previous estimate when a window closes
        self._rows = 0
        self._busy_s = 0.0
        self._rate: float | None = None

    def record(self, rows_left: int, busy_s: float) -> None:
        """One engine step: the rows that left the engine during it and how long it took. Engine thread only."""
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
