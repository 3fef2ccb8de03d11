"""A sliding window of one policy's answered rows and shadow comparisons, and the agreement it implies.

A shadow comparison re-runs an early-exited row to the last layer and checks whether the two answers match. Only
early rows can disagree (a row that ran to the last layer *is* the full-depth answer), so the agreement over all
answered rows is

    agreement = 1 - early_fraction * (1 - exited_agreement)

with early_fraction counted over answered rows and exited_agreement over shadow comparisons. Both windows hold
rows of ONE policy at ONE threshold: a threshold change changes both quantities, so the owner calls `reset`.

The noise margin is z standard errors of `agreement`. Treating early_fraction as known (it is counted over far more
rows than there are comparisons), that is early_fraction * z * sqrt(p (1 - p) / n). p is clamped away from 0 and 1
by 1 / (n + 1) so a window where every comparison agreed still carries a margin that shrinks with n, instead of
claiming certainty from a handful of samples.

Not thread-safe: called from the event loop thread only, so the O(1) running sums need no lock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class AgreementEstimate:
    agreement: float  # over all answered rows: 1 - early_fraction * (1 - exited_agreement)
    exited_agreement: float  # among shadowed early-exited rows in the window
    early_fraction: float  # among answered rows in the window
    comparisons: int  # shadow comparisons in the window
    noise: float  # z * standard error of `agreement`; never 0
    rows: int = 0  # answered rows in the window

    @property
    def exact(self) -> bool:
        """No row of the window left early: every answer was full depth's, agreement is 1 without sampling."""
        return self.early_fraction == 0.0


def agreement_noise(early_fraction: float, exited_agreement: float, comparisons: int, z: float) -> float:
    """z standard errors of the overall agreement, with p clamped into [1/(n+1), 1 - 1/(n+1)]."""
    floor = 1.0 / (comparisons + 1)
    p = min(max(exited_agreement, floor), 1.0 - floor)
    return early_fraction * z * math.sqrt(p * (1.0 - p) / comparisons)


class AgreementWindow:
    """Recent answered rows and shadow comparisons of ONE policy at ONE threshold (reset when the threshold
    changes). Each window keeps its newest entries; running sums make every record O(1)."""

    def __init__(self, max_comparisons: int = 400, max_rows: int = 20000) -> None:
        if max_comparisons < 1 or max_rows < 1:
            raise ValueError(f"window sizes must be >= 1, got {max_comparisons=} {max_rows=}")
        self._rows: deque[bool] = deque(maxlen=max_rows)  # True: the row exited before the last layer
        self._comparisons: deque[bool] = deque(maxlen=max_comparisons)  # True: shadow answer matched
        self._early_rows = 0
        self._agreements = 0

    @property
    def rows(self) -> int:
        return len(self._rows)

    @property
    def comparisons(self) -> int:
        return len(self._comparisons)

    def record_row(self, exited_early: bool) -> None:
        """Every answered row of the policy, early or not."""
        # A full deque drops its oldest entry on append; take it out of the running sum first.
        if len(self._rows) == self._rows.maxlen:
            self._early_rows -= self._rows[0]
        self._rows.append(exited_early)
        self._early_rows += exited_early

    def record_comparison(self, agreed: bool) -> None:
        """Every finished shadow comparison of an early-exited row."""
        if len(self._comparisons) == self._comparisons.maxlen:
            self._agreements -= self._comparisons[0]
        self._comparisons.append(agreed)
        self._agreements += agreed

    def estimate(self, z: float = 2.0, min_comparisons: int = 1) -> AgreementEstimate | None:
        """None until the window holds `min_comparisons` comparisons (at least one) and at least one row; but a
        window whose rows all ran to the last layer needs no comparison: its agreement is exactly 1."""
        comparisons = len(self._comparisons)
        if self._rows and not self._early_rows:
            # None of n rows left early: the early share may still be up to z^2 / (n + z^2) (Wilson's bound with
            # no success seen), and any of those could disagree.
            rows = len(self._rows)
            exited = self._agreements / comparisons if comparisons else 1.0  # of rows evicted since, if any
            return AgreementEstimate(1.0, exited, 0.0, comparisons, z * z / (rows + z * z), rows=rows)
        if comparisons < max(min_comparisons, 1) or not self._rows:
            return None
        exited_agreement = self._agreements / comparisons
        early_fraction = self._early_rows / len(self._rows)
        return AgreementEstimate(
            agreement=1.0 - early_fraction * (1.0 - exited_agreement),
            exited_agreement=exited_agreement,
            early_fraction=early_fraction,
            comparisons=comparisons,
            noise=agreement_noise(early_fraction, exited_agreement, comparisons, z),
            rows=len(self._rows),
        )

    def reset(self) -> None:
        self._rows.clear()
        self._comparisons.clear()
        self._early_rows = 0
        self._agreements = 0
