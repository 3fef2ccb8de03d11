"""Exit policies' parameters: thresholds, user-facing params, BEEM weights, construction, dependencies."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from beem.policies.exit_policies import (
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
    beem_a_weights,
    beem_c_weights,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
FIG1_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 13))  # 0.1, 0.2, ..., 1.2 (paper Fig. 1, L = 12)
W4 = (0.25, 0.5, 0.75, 1.0)


# --- with_threshold and params --------------------------------------------------------------------------------------

ALL_POLICIES = [
    BeemPolicy("beem-c", W4, 0.7),
    BeemPolicy("beem-a", (0.6, 0.7, 0.8, 0.9), 1.5, count_first_exit=False, reset="zero"),
    MaxProbPolicy(0.9),
    EntropyPolicy(0.25),
    PatiencePolicy(3),
    StaticPolicy(2),
    FullDepthPolicy(),
]


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.name)
def test_with_threshold_round_trips(policy: ExitPolicy) -> None:
    assert policy.with_threshold(policy.threshold) == policy
    moved = policy.with_threshold(2.0)
    assert type(moved) is type(policy)
    assert moved.threshold == 2.0
    assert moved.name == policy.name
    assert moved.with_threshold(policy.threshold) == policy


def test_with_threshold_keeps_beem_options() -> None:
    policy = BeemPolicy("beem-a", (0.6, 0.7, 0.8), 1.5, count_first_exit=False, reset="zero")
    moved = policy.with_threshold(0.4)
    assert moved.params() == {
        "alpha": 0.4,
        "weights": [0.6, 0.7, 0.8],
        "count_first_exit": False,
        "reset": "zero",
        "vote_above_chance": False,
    }


@pytest.mark.parametrize(
    ("policy", "expected_params", "expected_threshold"),
    [
        (
            BeemPolicy("beem-c", W4, 0.7),
            {
                "alpha": 0.7,
                "weights": list(W4),
                "count_first_exit": True,
                "reset": "restart",
                "vote_above_chance": False,
            },
            0.7,
        ),
        (MaxProbPolicy(0.9), {"threshold": 0.9}, 0.9),
        (EntropyPolicy(0.25), {"threshold": 0.25}, -0.25),
        (EntropyPolicy(0.25).with_threshold(-0.4), {"threshold": 0.4}, -0.4),
        (PatiencePolicy(3), {"patience": 3}, 3),
        (PatiencePolicy(1).with_threshold(4.0), {"patience": 4}, 4),
        (PatiencePolicy(1).with_threshold(math.inf), {"patience": math.inf}, math.inf),
        (StaticPolicy(2), {"layer": 2}, 2),
        (StaticPolicy(2).with_threshold(6.0), {"layer": 6}, 6),
        (StaticPolicy(2).with_threshold(math.inf), {"layer": math.inf}, math.inf),
        (FullDepthPolicy(), {}, math.inf),
    ],
)
def test_params_in_user_units(
    policy: ExitPolicy, expected_params: dict[str, object], expected_threshold: float
) -> None:
    params = policy.params()
    assert params == expected_params
    assert policy.threshold == expected_threshold
    for key in ("patience", "layer"):
        if key in params and not math.isinf(params[key]):  # type: ignore[arg-type]
            assert type(params[key]) is int


# --- weights ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_layers", "expected"),
    [(1, (1.0,)), (2, (0.5, 1.0)), (4, (0.25, 0.5, 0.75, 1.0)), (5, (0.2, 0.4, 0.6, 0.8, 1.0))],
)
def test_beem_c_weights(num_layers: int, expected: tuple[float, ...]) -> None:
    weights = beem_c_weights(num_layers)
    assert isinstance(weights, tuple)
    assert weights == pytest.approx(expected)


def test_beem_c_weights_exact_for_four() -> None:
    assert beem_c_weights(4) == (0.25, 0.5, 0.75, 1.0)


def test_beem_c_weights_twelve_proportional_to_figure1() -> None:
    weights = beem_c_weights(12)
    assert len(weights) == 12
    assert [w * 1.2 for w in weights] == pytest.approx(FIG1_WEIGHTS)


@pytest.mark.parametrize(
    ("accuracies", "expected"),
    [([0.5, 0.75, 0.9], (0.5, 0.75, 0.9)), ((1, 0), (1.0, 0.0)), ([0.8], (0.8,))],
)
def test_beem_a_weights(accuracies: list[float], expected: tuple[float, ...]) -> None:
    weights = beem_a_weights(accuracies)
    assert weights == expected
    assert isinstance(weights, tuple)
    assert all(type(w) is float for w in weights)


def test_beem_a_weights_accept_numpy_like_floats() -> None:
    class FloatLike:
        def __float__(self) -> float:
            return 0.625

    assert beem_a_weights([FloatLike()]) == (0.625,)  # type: ignore[list-item]


# --- invalid construction -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": W4, "reset": "bogus"},
        {"weights": W4, "reset": "Restart"},
        {"weights": (0.1, -0.2, 0.3)},
        {"weights": ()},
    ],
    ids=["reset-bogus", "reset-case", "negative-weight", "no-weights"],
)
def test_beem_invalid_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"reset|weights"):
        BeemPolicy("beem", alpha=0.5, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("reset", ["restart", "zero"])
def test_beem_valid_resets_construct(reset: str) -> None:
    assert BeemPolicy("beem", (0.0, 1.0), 0.5, reset=reset).reset == reset


# --- dependency hygiene ---------------------------------------------------------------------------------------------


def test_policies_module_imports_no_heavy_dependencies() -> None:
    code = (
        "import beem.policies.exit_policies, sys; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi', 'numpy')]; "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
