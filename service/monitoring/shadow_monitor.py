"""The shadow agreement monitor: do early-exited answers still agree with full depth on today's traffic?

One per served bundle version. Every answered row of a monitored policy (a request that used the served
parameters: no overrides, no depth cap) is counted, early or not; a `fraction` of the rows that left early is
re-run at full depth as a shadow row (the admission queue's low-priority lane: it joins only when no request waits
and is the first thing shed), and its answer is compared with the one the client got. From a recent window per
policy (`AgreementWindow`) it exports:

- `beem_shadow_agreement`: the estimated share of answered rows whose answer equals full depth's,
  1 - early share x (1 - agreement of the shadowed early exits); rows that ran to the end agree by construction;
- `beem_shadow_agreement_calibrated`: the same on the calibration split (`beem/calibration/agreement_levels.py`),
  and `beem_shadow_agreement_noise`, the window's z x standard error, the margin an alert allows for chance;
- `beem_shadow_estimated_accuracy_loss`: (1 - agreement) x the calibration split's net accuracy lost per
  disagreement (a disagreement where the early exit was right costs nothing), against `beem_accuracy_budget`.

When the model's online control is on, each comparison at the served threshold feeds its `ThresholdController`,
and a change of threshold replaces the live policy (new requests use it), restarts that policy's window, and is
logged and exported (`beem_policy_threshold`, `beem_policy_threshold_changes_total`).

Threads: `observe_rows` and the comparisons run on the event loop; a shadow row's outcome arrives on the engine
thread and is handed to the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from beem.calibration.agreement_levels import AgreementLevels
from beem.policies.exit_policies import ExitPolicy
from service.engine.row_outcome import Dropped, RowAnswer, RowOutcome
from service.metrics import ServiceMetrics
from service.monitoring.agreement_window import AgreementEstimate, AgreementWindow
from service.monitoring.alpha_controller import (
    ControlSettings,
    ThresholdChange,
    ThresholdController,
    estimated_accuracy_loss,
)
from service.monitoring.live_policies import LivePolicies

log = logging.getLogger(__name__)
NOISE_Z = 2.0  # the alert margin: agreement this many standard errors under the calibrated level is not chance
LATENCY_WINDOW = 200  # recent request latencies the latency-SLO mode takes its p95 from


@dataclass(frozen=True)
class ControlledPolicy:
    """The policy whose threshold online control moves, and how."""

    name: str
    settings: ControlSettings


class ShadowMonitor:
    def __init__(
        self,
        metrics: ServiceMetrics,
        levels: Mapping[str, AgreementLevels],
        accuracy_budget: float,
        live_policies: LivePolicies,
        fraction: float,
        window: int,
        control: ControlledPolicy | None = None,
        model: str = "",
    ) -> None:
        self.metrics = metrics
        self.levels = dict(levels)  # by policy name: what the calibration split says
        self.live_policies = live_policies  # its writer: online control moves a threshold through it
        self.fraction = fraction
        self.model = model
        self.windows = {name: AgreementWindow(max_comparisons=window) for name in self.levels}
        self._credit = 0.0  # sampling by accumulated fraction: exactly `fraction` of early exits, evenly spread
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.controller: ThresholdController | None = None
        self.controlled: str | None = None
        metrics.accuracy_budget.set(accuracy_budget)
        for name, level in self.levels.items():
            metrics.shadow_agreement_calibrated.labels(name).set(level.agreement)
            metrics.shadow_agreement.labels(name).set(level.agreement)  # until traffic says otherwise
            metrics.policy_threshold.labels(name).set(live_policies.view[name].threshold)
        if control is not None and control.name in self.levels:
            self.controlled = control.name
            self.controller = ThresholdController(live_policies.view[control.name].threshold, control.settings)
            self._serve_threshold(control.name, self.controller.threshold)

    def monitors(self, policy_name: str, policy: ExitPolicy) -> bool:
        """Rows of this policy are counted: it is a monitored name served with its live parameters."""
        return policy_name in self.windows and self.live_policies.view.get(policy_name) is policy

    def observe_rows(self, policy_name: str, early: Sequence[bool], latency_s: float) -> list[int]:
        """Count a request's answered rows (`early[i]`: row i left before the last layer); returns the rows to
        shadow."""
        window = self.windows[policy_name]
        self._latencies.append(latency_s)
        sampled: list[int] = []
        for row, left_early in enumerate(early):
            window.record_row(left_early)
            if left_early and self.fraction > 0:
                self._credit += self.fraction
                if self._credit >= 1.0:
                    self._credit -= 1.0
                    sampled.append(row)
        if not any(early):  # no comparison will follow: a window of full-depth answers is judged on its rows
            self._update(policy_name)
        return sampled

    def comparison(self, policy_name: str, policy: ExitPolicy, answered: RowAnswer) -> Callable[[RowOutcome], None]:
        """The `on_done` of a shadow row re-running `answered` at full depth (called on the engine thread)."""
        loop = asyncio.get_running_loop()
        expected = answered.agreement_key()

        def shadow_left(outcome: RowOutcome) -> None:
            if not isinstance(outcome, Dropped):  # a dropped shadow row is counted by the ledger
                agreed = outcome.agreement_key() == expected
                loop.call_soon_threadsafe(self.record_comparison, policy_name, policy, agreed)

        return shadow_left

    def record_comparison(self, policy_name: str, policy: ExitPolicy, agreed: bool) -> None:
        """One shadow comparison (event loop). Comparisons made at a threshold no longer served count in the
        totals but not in the window, which holds the served threshold's only."""
        self.metrics.shadow_samples.labels(policy_name, "agree" if agreed else "disagree").inc()
        if self.live_policies.view.get(policy_name) is not policy:
            return
        self.windows[policy_name].record_comparison(agreed)
        self._update(policy_name)

    def _update(self, policy_name: str) -> None:
        """Export the window's estimate and let the controller decide on it."""
        estimate = self.windows[policy_name].estimate(NOISE_Z)
        if estimate is None:
            return
        loss = estimated_accuracy_loss(estimate, self.levels[policy_name].loss_per_disagreement)
        self._export(policy_name, estimate, loss)
        if self.controller is not None and policy_name == self.controlled:
            change = self.controller.decide(estimate, loss, self.latency_p95_s())
            if change is not None:
                self._apply(policy_name, change, estimate)

    def latency_p95_s(self) -> float | None:
        if len(self._latencies) < 20:
            return None
        ordered = sorted(self._latencies)
        return ordered[int(0.95 * (len(ordered) - 1))]

    def estimate(self, policy_name: str) -> AgreementEstimate | None:
        return self.windows[policy_name].estimate(NOISE_Z)

    def summary(self) -> dict[str, object]:
        """What /v1/models shows: per policy, the calibrated level and the recent window's estimate."""
        policies: dict[str, object] = {}
        for name, level in self.levels.items():
            estimate = self.estimate(name)
            policies[name] = {
                "calibrated_agreement": level.agreement,
                "agreement": None if estimate is None else estimate.agreement,
                "exited_agreement": None if estimate is None else estimate.exited_agreement,
                "early_fraction": None if estimate is None else estimate.early_fraction,
                "comparisons": 0 if estimate is None else estimate.comparisons,
                "rows": self.windows[name].rows,
                "noise": None if estimate is None else estimate.noise,
            }
        return {"fraction": self.fraction, "controlled_policy": self.controlled, "policies": policies}

    def _export(self, policy_name: str, estimate: AgreementEstimate, loss: float) -> None:
        metrics = self.metrics
        metrics.shadow_agreement.labels(policy_name).set(estimate.agreement)
        metrics.shadow_exited_agreement.labels(policy_name).set(estimate.exited_agreement)
        metrics.shadow_agreement_noise.labels(policy_name).set(estimate.noise)
        metrics.shadow_accuracy_loss.labels(policy_name).set(loss)

    def _apply(self, policy_name: str, change: ThresholdChange, estimate: AgreementEstimate) -> None:
        log.info(
            "model %s policy %s: threshold %.4f -> %.4f (%s, %s): agreement %.4f over %d comparisons, early share "
            "%.3f", self.model, policy_name, change.old, change.new, change.direction, change.reason,
            estimate.agreement, estimate.comparisons, estimate.early_fraction,
        )  # fmt: skip
        self.metrics.policy_threshold_changes.labels(policy_name, change.direction, change.reason).inc()
        self._serve_threshold(policy_name, change.new)
        self.windows[policy_name].reset()

    def _serve_threshold(self, policy_name: str, threshold: float) -> None:
        self.live_policies.serve_threshold(policy_name, threshold)
        self.metrics.policy_threshold.labels(policy_name).set(threshold)
