"""Online threshold (alpha) control from shadow agreement, in the manner of Apparate (Dai et al., 2024).

A row exits once its score reaches the threshold, so a HIGHER threshold is always more conservative (rows run
deeper, agreement with full depth rises, latency rises). The controller moves the threshold one `step` at a time,
inside [lowest, highest], and only on evidence gathered at the current threshold:

1. No decision while there is no estimate or it holds fewer than `min_comparisons` shadow comparisons (the owner
   resets the window on every change, so each decision is judged on rows served at the threshold it judges); a
   window in which no row left early needs `min_comparisons` rows instead (there is nothing to compare).
2. Accuracy mode (the default, and whenever latency is within the SLO):
   - agreement < target                 -> up   ("agreement");
   - agreement - noise >= target + headroom -> down ("agreement");
   - otherwise hold. Loosening needs the slack to be there beyond the window's noise, and the headroom band is
     hysteresis: without them a threshold sitting on the target would flip up and down on every window (a
     window where nothing left early says "agreement 1" after a few rows; its noise says how little that is).
     A loosening that had to be taken back doubles the noise margin the next one must clear (up to 16x: 4x the
     comparisons, 2x the rows of a window where nothing left early), so a target between two steps, one too loose
     and one with slack, settles on the safe one instead of cycling between them.
3. Latency-SLO mode (`latency_slo_s` set and the measured p95 above it): trade accuracy for latency only within
   the budget. Estimated accuracy loss < `accuracy_budget` -> down ("latency"); loss > budget -> up
   ("agreement"); exactly at the budget -> hold.
A move that the bounds would clamp to no move at all returns None, so every returned change is a real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.monitoring.agreement_window import AgreementEstimate

UP = "up"  # more conservative: rows run deeper
DOWN = "down"
REASON_AGREEMENT = "agreement"
REASON_LATENCY = "latency"

MAX_LOOSENING_PATIENCE = 16


@dataclass(frozen=True)
class ControlSettings:
    target_agreement: float  # keep estimated agreement at or above this
    lowest: float  # threshold bounds, in the policy's score units
    highest: float
    step: float  # how far one change moves the threshold (absolute, > 0)
    headroom: float = 0.01  # agreement above target + headroom may loosen the threshold (hysteresis)
    min_comparisons: int = 50  # comparisons at the current threshold before any decision
    latency_slo_s: float | None = None  # latency-SLO mode: loosen under load
    accuracy_budget: float = 0.005  # in SLO mode, loosen only while estimated accuracy loss stays under this

    def __post_init__(self) -> None:
        if not 0.0 < self.target_agreement <= 1.0:
            raise ValueError(f"target_agreement must be in (0, 1], got {self.target_agreement}")
        if not (math.isfinite(self.lowest) and math.isfinite(self.highest)) or self.lowest > self.highest:
            raise ValueError(f"need finite lowest <= highest, got {self.lowest} and {self.highest}")
        if not (math.isfinite(self.step) and self.step > 0.0):
            raise ValueError(f"step must be a finite number > 0, got {self.step}")
        if self.headroom < 0.0:
            raise ValueError(f"headroom must be >= 0, got {self.headroom}")
        if self.min_comparisons < 1:
            raise ValueError(f"min_comparisons must be >= 1, got {self.min_comparisons}")
        if self.latency_slo_s is not None and self.latency_slo_s <= 0.0:
            raise ValueError(f"latency_slo_s must be > 0, got {self.latency_slo_s}")
        if self.accuracy_budget < 0.0:
            raise ValueError(f"accuracy_budget must be >= 0, got {self.accuracy_budget}")


@dataclass(frozen=True)
class ThresholdChange:
    old: float
    new: float
    direction: str  # "up" (more conservative) or "down"
    reason: str  # "agreement" or "latency"


def estimated_accuracy_loss(estimate: AgreementEstimate, loss_per_disagreement: float) -> float:
    """(1 - agreement) * loss_per_disagreement, never below 0: a policy that happens to beat full depth is
    reported as losing nothing rather than as banking credit to spend."""
    return max(0.0, (1.0 - estimate.agreement) * loss_per_disagreement)


class ThresholdController:
    """Holds one policy's live threshold and moves it by the rules in the module docstring."""

    def __init__(self, calibrated: float, settings: ControlSettings) -> None:
        if math.isnan(calibrated):
            raise ValueError("the calibrated threshold is NaN")
        self.settings = settings
        self.threshold = self._clamp(calibrated)  # +inf (nothing exits early) becomes `highest`
        self.loosening_patience = 1  # x the noise a loosening's slack must clear (doubles after one was taken back)
        self._last_direction: str | None = None

    def decide(
        self, estimate: AgreementEstimate | None, estimated_accuracy_loss: float, latency_p95_s: float | None
    ) -> ThresholdChange | None:
        """The change to apply now (already applied to `self.threshold`), or None to hold."""
        settings = self.settings
        if estimate is None:
            return None
        evidence = estimate.rows if estimate.exact else estimate.comparisons
        if evidence < settings.min_comparisons:
            return None
        over_slo = (
            settings.latency_slo_s is not None and latency_p95_s is not None and latency_p95_s > settings.latency_slo_s
        )
        if over_slo:
            if estimated_accuracy_loss < settings.accuracy_budget:
                return self._move(DOWN, REASON_LATENCY)
            if estimated_accuracy_loss > settings.accuracy_budget:
                return self._move(UP, REASON_AGREEMENT)
            return None
        if estimate.agreement < settings.target_agreement:
            return self._move(UP, REASON_AGREEMENT)
        if (
            estimate.agreement - estimate.noise * self.loosening_patience
            >= settings.target_agreement + settings.headroom
        ):
            return self._move(DOWN, REASON_AGREEMENT)
        return None

    def _move(self, direction: str, reason: str) -> ThresholdChange | None:
        signed_step = self.settings.step if direction == UP else -self.settings.step
        old = self.threshold
        new = self._clamp(old + signed_step)
        if new == old:
            return None
        self.threshold = new
        if direction == UP and self._last_direction == DOWN:  # the last loosening went too far: be slower next time
            self.loosening_patience = min(self.loosening_patience * 2, MAX_LOOSENING_PATIENCE)
        self._last_direction = direction
        return ThresholdChange(old, new, direction, reason)

    def _clamp(self, threshold: float) -> float:
        return min(max(threshold, self.settings.lowest), self.settings.highest)
