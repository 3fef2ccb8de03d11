"""The bundle's default policy (beem/builder.py `default_policy_name`): a name, or "best" on the calibration split."""

from __future__ import annotations

import pytest

from beem.builder import default_policy_name
from beem.calibration.policy_calibration import CalibrationOptions

CALIBRATION = {
    "policies": {
        "beem-a": {"accuracy": 0.838, "mean_exit_layer": 3.7},
        "beem-c": {"accuracy": 0.838, "mean_exit_layer": 4.1},
        "max-prob": {"accuracy": 0.836, "mean_exit_layer": 2.9},
        "entropy": {"accuracy": 0.836, "mean_exit_layer": 2.9},  # a tie with max-prob: the earlier one wins
        "static": {"accuracy": 0.820, "mean_exit_layer": 2.0},  # fastest, but beyond the budget
        "full": {"accuracy": 0.839, "mean_exit_layer": 6.0},
    }
}


@pytest.mark.parametrize(
    ("wanted", "budget", "chosen"),
    [
        ("beem-a", 0.005, "beem-a"),
        ("patience", 0.005, None),  # not calibrated in this bundle
        ("best", 0.005, "max-prob"),
        ("best", 0.002, "beem-a"),  # max-prob's 0.3 points are beyond a 0.2-point budget
        ("best", 0.0, "full"),
        ("best", 0.05, "static"),
    ],
)
def test_default_policy(wanted: str, budget: float, chosen: str | None) -> None:
    options = CalibrationOptions(accuracy_budget=budget)
    if chosen is None:
        with pytest.raises(ValueError, match="not among the calibrated"):
            default_policy_name(wanted, CALIBRATION, options)
    else:
        assert default_policy_name(wanted, CALIBRATION, options) == chosen
