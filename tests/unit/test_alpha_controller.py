"""Unit tests for service/monitoring/alpha_controller.py: every rule of the controller, clamping, validation.

Numbers are dyadic (0.25, 0.75, ...) so sums like target + headroom are exact and the boundaries really are hit.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from service.monitoring.agreement_window import AgreementEstimate
from service.monitoring.alpha_controller import (
    ControlSettings,
    ThresholdChange,
    ThresholdController,
    estimated_accuracy_loss,
)

BASE = ControlSettings(target_agreement=0.75, lowest=0.0, highest=1.0, step=0.25, headroom=0.125, min_comparisons=50)
SLO = replace(BASE, latency_slo_s=0.1, accuracy_budget=0.0625)


def estimate_of(agreement: float, comparisons: int = 100, noise: float = 0.0) -> AgreementEstimate:
    return AgreementEstimate(agreement, agreement, 1.0, comparisons, noise, rows=10 * comparisons)


def exact_window(rows: int) -> AgreementEstimate:
    """No row left early: agreement 1 with no comparison, the noise of so few rows."""
    return AgreementEstimate(1.0, 1.0, 0.0, 0, 0.0625, rows=rows)


@pytest.mark.parametrize(
    ("settings", "start", "estimate", "loss", "p95", "expected"),
    [
        # --- the min_comparisons gate ---
        (BASE, 0.5, None, 0.0, None, None),
        (BASE, 0.5, estimate_of(0.5, comparisons=49), 0.0, None, None),
        (BASE, 0.5, estimate_of(0.5, comparisons=50), 0.0, None, ThresholdChange(0.5, 0.75, "up", "agreement")),
        (SLO, 0.5, estimate_of(0.5, comparisons=49), 0.0, 1.0, None),
        # --- accuracy mode ---
        (BASE, 0.5, estimate_of(0.5), 0.0, None, ThresholdChange(0.5, 0.75, "up", "agreement")),
        (BASE, 0.5, estimate_of(0.75), 0.0, None, None),  # at the target: not below it
        (BASE, 0.5, estimate_of(0.8125), 0.0, None, None),  # inside the headroom band
        (BASE, 0.5, estimate_of(0.875), 0.0, None, ThresholdChange(0.5, 0.25, "down", "agreement")),  # at the band top
        (BASE, 0.5, estimate_of(1.0), 0.0, None, ThresholdChange(0.5, 0.25, "down", "agreement")),
        (BASE, 0.5, estimate_of(0.9375, noise=0.125), 0.0, None, None),  # the slack is within the noise: hold
        (BASE, 0.5, exact_window(49), 0.0, None, None),  # nothing left early: rows, not comparisons, are the gate
        (BASE, 0.5, exact_window(50), 0.0, None, ThresholdChange(0.5, 0.25, "down", "agreement")),
        # --- clamping at both bounds ---
        (BASE, 0.875, estimate_of(0.5), 0.0, None, ThresholdChange(0.875, 1.0, "up", "agreement")),
        (BASE, 1.0, estimate_of(0.5), 0.0, None, None),
        (BASE, 0.125, estimate_of(1.0), 0.0, None, ThresholdChange(0.125, 0.0, "down", "agreement")),
        (BASE, 0.0, estimate_of(1.0), 0.0, None, None),
        # --- latency-SLO mode, over the SLO ---
        (SLO, 0.5, estimate_of(0.5), 0.03125, 0.2, ThresholdChange(0.5, 0.25, "down", "latency")),  # under budget
        (SLO, 0.5, estimate_of(1.0), 0.125, 0.2, ThresholdChange(0.5, 0.75, "up", "agreement")),  # over budget
        (SLO, 0.5, estimate_of(0.5), 0.0625, 0.2, None),  # exactly at the budget
        (SLO, 0.0, estimate_of(0.5), 0.0, 0.2, None),  # would loosen, already at the lowest
        (SLO, 1.0, estimate_of(1.0), 0.125, 0.2, None),  # would tighten, already at the highest
        # --- SLO set but not over it: accuracy mode ---
        (SLO, 0.5, estimate_of(0.5), 0.0, None, ThresholdChange(0.5, 0.75, "up", "agreement")),  # no p95 yet
        (SLO, 0.5, estimate_of(0.5), 0.0, 0.05, ThresholdChange(0.5, 0.75, "up", "agreement")),  # under the SLO
        (SLO, 0.5, estimate_of(0.5), 0.0, 0.1, ThresholdChange(0.5, 0.75, "up", "agreement")),  # at the SLO
        (SLO, 0.5, estimate_of(0.8125), 0.0, 0.05, None),
        # --- no SLO configured: latency is ignored ---
        (BASE, 0.5, estimate_of(0.5), 0.0, 10.0, ThresholdChange(0.5, 0.75, "up", "agreement")),
    ],
    ids=[
        "no-estimate",
        "below-min-comparisons",
        "at-min-comparisons",
        "slo-below-min-comparisons",
        "below-target-up",
        "at-target-hold",
        "in-headroom-hold",
        "at-headroom-top-down",
        "perfect-down",
        "slack-within-noise-holds",
        "no-early-exit-below-min-rows",
        "no-early-exit-down",
        "up-clamped-to-highest",
        "up-at-highest-none",
        "down-clamped-to-lowest",
        "down-at-lowest-none",
        "slo-under-budget-down",
        "slo-over-budget-up",
        "slo-at-budget-hold",
        "slo-down-at-lowest-none",
        "slo-up-at-highest-none",
        "slo-no-latency-yet",
        "slo-under-slo",
        "slo-at-slo",
        "slo-under-slo-hold",
        "no-slo-ignores-latency",
    ],
)
def test_decide(
    settings: ControlSettings,
    start: float,
    estimate: AgreementEstimate | None,
    loss: float,
    p95: float | None,
    expected: ThresholdChange | None,
) -> None:
    controller = ThresholdController(start, settings)
    change = controller.decide(estimate, loss, p95)
    assert change == expected
    assert controller.threshold == (expected.new if expected else start)


def test_consecutive_decisions_walk_to_the_bound_and_stop() -> None:
    controller = ThresholdController(0.25, BASE)
    moves = [controller.decide(estimate_of(0.5), 0.0, None) for _ in range(4)]
    assert [m.new if m else None for m in moves] == [0.5, 0.75, 1.0, None]
    assert controller.threshold == 1.0


@pytest.mark.parametrize(
    ("calibrated", "expected"),
    [(0.5, 0.5), (-3.0, 0.0), (7.0, 1.0), (math.inf, 1.0), (-math.inf, 0.0)],
    ids=["inside", "below-lowest", "above-highest", "inf-is-highest", "minus-inf-is-lowest"],
)
def test_starts_at_calibrated_clamped_into_bounds(calibrated: float, expected: float) -> None:
    assert ThresholdController(calibrated, BASE).threshold == expected


def test_nan_calibrated_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        ThresholdController(math.nan, BASE)


@pytest.mark.parametrize(
    "overrides",
    [
        {"lowest": 2.0, "highest": 1.0},
        {"lowest": -math.inf},
        {"highest": math.inf},
        {"step": 0.0},
        {"step": -0.1},
        {"step": math.inf},
        {"target_agreement": 0.0},
        {"target_agreement": 1.5},
        {"headroom": -0.01},
        {"min_comparisons": 0},
        {"latency_slo_s": 0.0},
        {"accuracy_budget": -0.001},
    ],
    ids=[
        "lowest-above-highest",
        "infinite-lowest",
        "infinite-highest",
        "zero-step",
        "negative-step",
        "infinite-step",
        "zero-target",
        "target-above-one",
        "negative-headroom",
        "zero-min-comparisons",
        "zero-slo",
        "negative-budget",
    ],
)
def test_settings_validation(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(BASE, **overrides)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"lowest": 0.5, "highest": 0.5}, {"target_agreement": 1.0}, {"latency_slo_s": 0.05, "headroom": 0.0}],
    ids=["base", "single-point-range", "target-one", "slo-no-headroom"],
)
def test_valid_settings_are_accepted(overrides: dict[str, Any]) -> None:
    replace(BASE, **overrides)


@pytest.mark.parametrize(
    ("agreement", "loss_per_disagreement", "expected"),
    [(0.75, 0.5, 0.125), (1.0, 0.5, 0.0), (0.75, -0.5, 0.0), (0.5, 0.0, 0.0), (0.0, 1.0, 1.0)],
    ids=["typical", "full-agreement", "policy-beats-full-depth", "neutral-disagreements", "all-disagree"],
)
def test_estimated_accuracy_loss(agreement: float, loss_per_disagreement: float, expected: float) -> None:
    assert estimated_accuracy_loss(estimate_of(agreement), loss_per_disagreement) == expected


def test_a_loosening_taken_back_makes_the_next_one_clear_twice_the_noise() -> None:
    down, up = ThresholdChange(0.5, 0.25, "down", "agreement"), ThresholdChange(0.25, 0.5, "up", "agreement")
    controller = ThresholdController(0.5, BASE)
    assert controller.decide(estimate_of(1.0, noise=0.09375), 0.0, None) == down  # 0.90625 clears 0.875
    assert controller.decide(estimate_of(0.5), 0.0, None) == up
    assert controller.loosening_patience == 2
    assert controller.decide(estimate_of(1.0, noise=0.09375), 0.0, None) is None  # 1 - 2 x 0.09375 = 0.8125
    assert controller.decide(estimate_of(1.0, noise=0.0625), 0.0, None) == down  # 1 - 2 x 0.0625 = 0.875
    # Tightening never waits longer: agreement under the target is acted on at once.
    assert controller.decide(estimate_of(0.5), 0.0, None) == up
    assert controller.loosening_patience == 4
