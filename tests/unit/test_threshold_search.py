"""Unit tests for beem/calibration/threshold_search.py on hand-written exit caches (DESIGN 3.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from beem.calibration.threshold_search import (
    exit_layers_at,
    outcome_at,
    score_trajectories,
    search_threshold,
)
from beem.policies.exit_policies import (
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
    beem_c_weights,
    run_sample,
)
from tests.unit.exit_cache_builders import make_cache, random_cache

# --- exit_layers_at ---------------------------------------------------------------------------------------------------

SCORES = np.array(
    [
        [0.1, 0.5, 0.9],
        [0.6, 0.2, 0.3],
        [0.0, 0.0, 0.0],
        [0.3, 0.3, 1.0],
    ]
)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (-math.inf, [1, 1, 1, 1]),
        (0.0, [1, 1, 1, 1]),
        (0.1, [1, 1, 3, 1]),
        (0.4, [2, 1, 3, 3]),
        (0.3, [2, 1, 3, 1]),  # equality exits
        (0.5, [2, 1, 3, 3]),
        (0.6, [3, 1, 3, 3]),
        (0.95, [3, 3, 3, 3]),  # nobody reaches it: last layer
        (math.inf, [3, 3, 3, 3]),
    ],
)
def test_exit_layers_at(threshold: float, expected: list[int]) -> None:
    scores = SCORES.copy()
    layers = exit_layers_at(scores, threshold)
    assert layers.tolist() == expected
    assert np.array_equal(scores, SCORES)  # input untouched


def test_exit_layers_at_single_layer() -> None:
    assert exit_layers_at(np.array([[0.0], [5.0]]), 1.0).tolist() == [1, 1]


# --- calibration and serving share one implementation -------------------------------------------------------------

CONSISTENCY_POLICIES = [
    BeemPolicy("beem-c", beem_c_weights(5), 1.0),
    BeemPolicy("beem-a", (0.4, 0.5, 0.6, 0.7, 0.8), 1.0, count_first_exit=False, reset="zero"),
    BeemPolicy("beem-zero", (0.2, 0.4, 0.6, 0.8, 1.0), 1.0, reset="zero"),
    MaxProbPolicy(0.9),
    EntropyPolicy(0.3),
    PatiencePolicy(2),
    StaticPolicy(3),
    FullDepthPolicy(),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("policy", CONSISTENCY_POLICIES, ids=lambda p: p.name)
def test_outcome_matches_run_sample(policy: ExitPolicy, seed: int) -> None:
    cache = random_cache(seed)
    scores = score_trajectories(policy, cache)
    assert scores.shape == (cache.num_samples, cache.num_layers)
    distinct = np.unique(scores)
    # the cache's own score values (equality cases), points in between, and the extremes
    thresholds = sorted(
        {
            *distinct[:: max(1, len(distinct) // 12)].tolist(),
            float(distinct.mean()),
            -math.inf,
            math.inf,
            0.0,
            1.0,
            2.0,
            3.0,
        }
    )
    for threshold in thresholds:
        layers = outcome_at(cache, scores, threshold).exit_layers
        serving = policy.with_threshold(threshold)
        expected = [run_sample(serving, cache.observations(n)) for n in range(cache.num_samples)]
        assert layers.tolist() == expected, f"threshold {threshold}"


@pytest.mark.parametrize("policy", CONSISTENCY_POLICIES, ids=lambda p: p.name)
def test_search_chosen_threshold_reproduced_by_serving(policy: ExitPolicy) -> None:
    cache = random_cache(5, num_samples=60)
    result = search_threshold(policy, cache, rule="paired", min_count=2)
    serving = policy.with_threshold(result.chosen.threshold)
    expected = [run_sample(serving, cache.observations(n)) for n in range(cache.num_samples)]
    assert result.chosen.exit_layers.tolist() == expected


def test_score_trajectories_by_hand() -> None:
    cache = make_cache([[0, 0, 1], [2, 1, 1]], confidences=[[0.8, 0.4, 1.0], [1.0, 0.5, 0.5]])
    policy = BeemPolicy("beem", (0.5, 0.5, 1.0), 1.0)
    expected = [[0.4, 0.6, 1.0], [0.5, 0.25, 0.75]]
    assert score_trajectories(policy, cache) == pytest.approx(np.array(expected))


# --- outcome_at counts --------------------------------------------------------------------------------------------

# targets 0, 0, 1, 1
# n0: every exit right; n1: exit 1 wrong, then right; n2: exit 2 right only; n3: every exit wrong
COUNT_CACHE = make_cache([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], targets=[0, 0, 1, 1])
COUNT_SCORES = np.array(
    [
        [0.9, 0.9, 0.9],
        [0.6, 0.7, 0.8],
        [0.1, 0.6, 0.7],
        [0.1, 0.2, 0.3],
    ]
)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (
            0.5,
            {
                "layers": [1, 1, 2, 3],
                "stops": [2, 1, 1],
                "misses": [1, 0, 1],
                "final_misses": [0, 1, 1],
                "accuracy": 0.5,
                "mean_layer": 1.75,
            },
        ),
        (
            math.inf,
            {
                "layers": [3, 3, 3, 3],
                "stops": [0, 0, 4],
                "misses": [0, 0, 2],
                "final_misses": [0, 0, 2],
                "accuracy": 0.5,
                "mean_layer": 3.0,
            },
        ),
        (
            0.0,
            {
                "layers": [1, 1, 1, 1],
                "stops": [4, 0, 0],
                "misses": [3, 0, 0],
                "final_misses": [2, 0, 0],
                "accuracy": 0.25,
                "mean_layer": 1.0,
            },
        ),
        (
            0.65,
            {
                "layers": [1, 2, 3, 3],
                "stops": [1, 1, 2],
                "misses": [0, 0, 2],
                "final_misses": [0, 0, 2],
                "accuracy": 0.5,
                "mean_layer": 2.25,
            },
        ),
        (
            0.8,
            {
                "layers": [1, 3, 3, 3],
                "stops": [1, 0, 3],
                "misses": [0, 0, 2],
                "final_misses": [0, 0, 2],
                "accuracy": 0.5,
                "mean_layer": 2.5,
            },
        ),
    ],
)
def test_outcome_counts(threshold: float, expected: dict[str, list[int] | float]) -> None:
    outcome = outcome_at(COUNT_CACHE, COUNT_SCORES, threshold)
    assert outcome.threshold == threshold
    assert outcome.exit_layers.tolist() == expected["layers"]
    assert outcome.stops.tolist() == expected["stops"]
    assert outcome.misses.tolist() == expected["misses"]
    assert outcome.final_misses.tolist() == expected["final_misses"]
    assert outcome.accuracy == pytest.approx(expected["accuracy"])
    assert outcome.mean_exit_layer == pytest.approx(expected["mean_layer"])
    assert outcome.stops.sum() == COUNT_CACHE.num_samples


def test_per_exit_table() -> None:
    table = outcome_at(COUNT_CACHE, COUNT_SCORES, 0.5).per_exit_table()
    assert table == [
        {"layer": 1, "stops": 2, "misses": 1, "final_misses_same_samples": 0, "error_rate": 0.5},
        {"layer": 2, "stops": 1, "misses": 0, "final_misses_same_samples": 1, "error_rate": 0.0},
        {"layer": 3, "stops": 1, "misses": 1, "final_misses_same_samples": 1, "error_rate": 1.0},
    ]
    empty_exit = outcome_at(COUNT_CACHE, COUNT_SCORES, math.inf).per_exit_table()[0]
    assert empty_exit["error_rate"] == 0.0
    assert empty_exit["stops"] == 0
