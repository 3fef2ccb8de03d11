"""The shadow monitor's bookkeeping without a server (service/monitoring/shadow_monitor.py): sampling exactly its
fraction of early exits, which rows count, the exported estimate, and online control in both modes acting on the
live policy that new requests get."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from beem.calibration.agreement_levels import AgreementLevels
from beem.policies.exit_policies import BeemPolicy, ExitPolicy, FullDepthPolicy
from service.metrics import ServiceMetrics
from service.monitoring.alpha_controller import ControlSettings
from service.monitoring.live_policies import LivePolicies
from service.monitoring.shadow_monitor import ControlledPolicy, ShadowMonitor

WEIGHTS = (0.5, 0.75, 1.0)
LEVELS = AgreementLevels(agreement=0.98, exited_agreement=0.975, early_fraction=0.8, loss_per_disagreement=0.5,
                         num_samples=1000)  # fmt: skip


def monitor(
    fraction: float = 1.0, control: ControlSettings | None = None
) -> tuple[ShadowMonitor, ServiceMetrics, Mapping[str, ExitPolicy]]:
    """The monitor, its metrics, and the read-only view of the live policies it writes."""
    metrics = ServiceMetrics(3)
    live = LivePolicies({"beem-a": BeemPolicy("beem-a", WEIGHTS, alpha=1.0), "full": FullDepthPolicy()})
    controlled = None if control is None else ControlledPolicy("beem-a", control)
    shadow = ShadowMonitor(
        metrics,
        {"beem-a": LEVELS},
        0.005,
        live,
        fraction,
        window=100,
        control=controlled,
        model="m",
    )  # type: ignore[arg-type]
    return shadow, metrics, live.view


def gauge(metrics: ServiceMetrics, name: str) -> float:
    return float(getattr(metrics, name).labels("beem-a")._value.get())


@pytest.mark.parametrize(
    ("fraction", "early_rows", "sampled"), [(0.02, 200, 4), (0.25, 8, 2), (1.0, 3, 3), (0.0, 9, 0)]
)
def test_exactly_the_fraction_of_early_exits_is_sampled(fraction: float, early_rows: int, sampled: int) -> None:
    shadow, _, _ = monitor(fraction)
    picked = [row for _ in range(early_rows) for row in shadow.observe_rows("beem-a", [True, False], 0.01)]
    assert len(picked) == sampled and set(picked) <= {0}  # only the early row of each request is ever picked


def test_only_requests_served_with_the_live_policy_are_monitored() -> None:
    shadow, _, live = monitor()
    assert shadow.monitors("beem-a", live["beem-a"])
    assert not shadow.monitors("beem-a", BeemPolicy("beem-a", WEIGHTS, alpha=1.5))  # a request's own override
    assert not shadow.monitors("full", live["full"])  # full depth never leaves early


def test_the_estimate_is_exported_with_its_calibrated_level_and_the_loss_against_the_budget() -> None:
    shadow, metrics, live = monitor()
    shadow.observe_rows("beem-a", [True] * 8 + [False] * 2, 0.01)
    for agreed in [True] * 7 + [False]:
        shadow.record_comparison("beem-a", live["beem-a"], agreed)
    assert gauge(metrics, "shadow_agreement") == pytest.approx(1 - 0.8 * (1 / 8))
    assert gauge(metrics, "shadow_agreement_calibrated") == 0.98
    assert gauge(metrics, "shadow_accuracy_loss") == pytest.approx(0.1 * 0.5)
    assert metrics.accuracy_budget._value.get() == 0.005
    assert metrics.shadow_samples.labels("beem-a", "disagree")._value.get() == 1


@pytest.mark.parametrize(
    ("agreed", "latency_s", "direction", "reason"),
    [
        (False, 0.01, "up", "agreement"),  # disagreement under the target: more conservative
        (True, 0.5, "down", "latency"),  # over the SLO with no estimated loss: looser, for latency
    ],
)
def test_control_moves_the_live_threshold_logs_and_exports_it(
    agreed: bool, latency_s: float, direction: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ControlSettings(target_agreement=0.98, lowest=0.5, highest=2.25, step=0.25, min_comparisons=4,
                               latency_slo_s=0.1)  # fmt: skip
    shadow, metrics, live = monitor(control=settings)
    served = live["beem-a"]
    with caplog.at_level("INFO"):
        for _ in range(20):
            shadow.observe_rows("beem-a", [True], latency_s)
        for _ in range(4):
            shadow.record_comparison("beem-a", served, agreed)
    moved = 1.25 if direction == "up" else 0.75
    assert live["beem-a"].threshold == moved and live["beem-a"] is not served  # new requests get the new policy
    assert gauge(metrics, "policy_threshold") == moved
    assert metrics.policy_threshold_changes.labels("beem-a", direction, reason)._value.get() == 1
    assert any(f"threshold 1.0000 -> {moved:.4f} ({direction}, {reason})" in r.getMessage() for r in caplog.records)
    shadow.record_comparison("beem-a", served, agreed)  # a row served at the old threshold: not in the new window
    assert shadow.windows["beem-a"].comparisons == 0
