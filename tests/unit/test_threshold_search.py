"""Unit tests for beem/calibration/threshold_search.py on hand-written exit caches (DESIGN 3.3)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from beem.calibration.exit_cache import ExitCache
from beem.calibration.threshold_search import (
    ExitOutcome,
    candidate_thresholds,
    exit_layers_at,
    is_feasible,
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


def make_cache(
    labels: list[list[int]],
    confidences: list[list[float]] | None = None,
    entropies: list[list[float]] | None = None,
    targets: list[int] | None = None,
) -> ExitCache:
    label_array = np.asarray(labels, dtype=np.int64)
    shape = label_array.shape
    conf = np.full(shape, 0.5) if confidences is None else np.asarray(confidences, dtype=np.float64)
    ent = np.full(shape, 0.5) if entropies is None else np.asarray(entropies, dtype=np.float64)
    tgt = np.zeros(shape[0], dtype=np.int64) if targets is None else np.asarray(targets, dtype=np.int64)
    return ExitCache(label_array, conf, ent, tgt)


def random_cache(seed: int, num_samples: int = 40, num_layers: int = 5, num_classes: int = 3) -> ExitCache:
    """Labels that mostly repeat their predecessor (so agreement runs occur), coarse confidences (so ties occur)."""
    rng = np.random.default_rng(seed)
    labels = np.empty((num_samples, num_layers), dtype=np.int64)
    labels[:, 0] = rng.integers(0, num_classes, num_samples)
    for layer in range(1, num_layers):
        keep = rng.random(num_samples) < 0.7
        labels[:, layer] = np.where(keep, labels[:, layer - 1], rng.integers(0, num_classes, num_samples))
    confidences = np.round(rng.uniform(0.34, 1.0, (num_samples, num_layers)), 2)
    entropies = np.round(rng.uniform(0.0, 1.1, (num_samples, num_layers)), 2)
    targets = rng.integers(0, num_classes, num_samples).astype(np.int64)
    return ExitCache(labels, confidences, entropies, targets)


def dummy_outcome(stops: list[int], misses: list[int], final_misses: list[int]) -> ExitOutcome:
    stops_array = np.asarray(stops, dtype=np.int64)
    layers = np.repeat(np.arange(1, len(stops) + 1), stops_array)
    return ExitOutcome(
        0.5,
        layers,
        0.0,
        float(layers.mean()) if len(layers) else 0.0,
        stops_array,
        np.asarray(misses, dtype=np.int64),
        np.asarray(final_misses, dtype=np.int64),
    )


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


# --- is_feasible --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "final_error_rate", "min_count", "expected"),
    [
        # per-exit holds (2 <= 0.2 * 10) but the same samples did better at the final layer
        (([10, 0, 10], [2, 0, 3], [0, 0, 3]), 0.2, 1, (True, False)),
        # paired holds (5 <= 6 on the same samples) but 50% > the final layer's 20% overall
        (([10, 0, 10], [5, 0, 6], [6, 0, 6]), 0.2, 1, (False, True)),
        (([10, 5, 10], [1, 1, 2], [1, 2, 2]), 0.2, 1, (True, True)),
        (([10, 5, 10], [4, 0, 2], [1, 0, 2]), 0.2, 1, (False, False)),
        # paired: each exit holds, but the sum must hold too (it can only fail through an excluded exit)
        (([3, 10, 5], [3, 1, 1], [0, 2, 1]), 0.2, 5, (True, False)),
        # min_count excludes the small first exit from the per-exit constraints
        (([3, 10, 5], [1, 0, 1], [0, 2, 1]), 0.2, 5, (True, True)),
        (([3, 10, 5], [1, 0, 1], [0, 2, 1]), 0.2, 1, (False, False)),
        (([3, 10, 5], [1, 0, 1], [0, 2, 1]), 0.2, 3, (False, False)),  # min_count is inclusive
        (([3, 10, 5], [1, 0, 1], [0, 2, 1]), 0.2, 4, (True, True)),
        # the final layer itself is never constrained
        (([0, 0, 10], [0, 0, 10], [0, 0, 10]), 0.0, 1, (True, True)),
        # an exit with equal error counts is allowed (<=)
        (([10, 0, 10], [2, 0, 2], [2, 0, 2]), 0.25, 1, (True, True)),
        (([8, 0, 10], [2, 0, 2], [2, 0, 2]), 0.25, 1, (True, True)),
    ],
)
def test_is_feasible(
    counts: tuple[list[int], list[int], list[int]], final_error_rate: float, min_count: int, expected: tuple[bool, bool]
) -> None:
    """counts = (stops, misses, final_misses) per layer; expected = (per-exit verdict, paired verdict)."""
    per_exit, paired = expected
    outcome = dummy_outcome(*counts)
    assert is_feasible(outcome, final_error_rate, "per-exit", min_count) is per_exit
    assert is_feasible(outcome, final_error_rate, "paired", min_count) is paired


def test_is_feasible_unknown_rule() -> None:
    with pytest.raises(ValueError, match="bogus"):
        is_feasible(dummy_outcome([1, 1], [0, 0], [0, 0]), 0.1, "bogus", 1)


# Each exit's error rate p_t = c_miss / c_stop is compared with p_L (DESIGN 3.3 step 4: feasible when p_t <= p_L).
# Regression: p_L computed as 1 - accuracy in floating point is 0.09999999999999998 for 18/20, and an early exit
# whose error rate is exactly 0.1 (1 miss in 10) must still be accepted.


def equal_rate_cache() -> ExitCache:
    """20 samples, 2 layers. Final exit wrong on samples 18 and 19 (p_L = 0.1). Exit 1 is confident on samples
    0-9 and wrong on sample 0 only (p_1 = 0.1 when they leave); it is unconfident and wrong on samples 10-19."""
    targets = [0] * 20
    final = [0] * 18 + [1, 1]
    first = [1] + [0] * 9 + [1] * 10
    confidences = [[0.99, 0.5]] * 10 + [[0.1, 0.5]] * 10
    return make_cache([[a, b] for a, b in zip(first, final, strict=True)], confidences, targets=targets)


def test_is_feasible_accepts_error_rate_equal_to_final_via_search_rate() -> None:
    cache = equal_rate_cache()
    final_error_rate = float(1.0 - cache.correct()[:, -1].mean())  # as search_threshold computes it
    outcome = dummy_outcome([10, 10], [1, 1], [0, 2])
    assert is_feasible(outcome, final_error_rate, "per-exit", min_count=5)


def test_search_per_exit_accepts_exit_with_error_rate_equal_to_final() -> None:
    result = search_threshold(MaxProbPolicy(0.5), equal_rate_cache(), rule="per-exit", min_count=5)
    assert result.chosen.mean_exit_layer == pytest.approx(1.5)


def test_search_per_exit_accepts_exit_with_lower_error_rate() -> None:
    # control for the case above: with exit 1 right on sample 0 too, p_1 = 0 < p_L and the exit is taken
    cache = equal_rate_cache()
    labels = cache.exit_labels.copy()
    labels[0, 0] = 0
    fixed = ExitCache(labels, cache.confidences, cache.entropies, cache.targets)
    result = search_threshold(MaxProbPolicy(0.5), fixed, rule="per-exit", min_count=5)
    assert result.chosen.mean_exit_layer == pytest.approx(1.5)
    assert result.chosen.exit_layers.tolist() == [1] * 10 + [2] * 10


# --- search_threshold ---------------------------------------------------------------------------------------------

SEARCH_POLICIES = [
    BeemPolicy("beem-c", beem_c_weights(3), 1.0),
    BeemPolicy("beem-code", (0.0, 1.0, 2.0), 1.0, count_first_exit=False, reset="zero"),
    MaxProbPolicy(0.9),
    EntropyPolicy(0.3),
    PatiencePolicy(2),
    StaticPolicy(3),
]


def first_exit_right_cache() -> ExitCache:
    """12 samples, 3 layers, two classes: exit 1 is always right; the final exit is wrong on a quarter of them."""
    rng = np.random.default_rng(3)
    targets = np.tile([0, 1], 6)
    labels = np.stack([targets, rng.integers(0, 2, 12), targets], axis=1)
    labels[:3, 2] = 1 - targets[:3]
    return ExitCache(
        labels.astype(np.int64),
        np.round(rng.uniform(0.5, 1.0, (12, 3)), 2),
        np.round(rng.uniform(0.0, 0.7, (12, 3)), 2),
        targets.astype(np.int64),
    )


@pytest.mark.parametrize("rule", ["paired", "per-exit"])
@pytest.mark.parametrize("policy", SEARCH_POLICIES, ids=lambda p: p.name)
def test_search_exits_everyone_at_layer_one_when_first_exit_always_right(policy: ExitPolicy, rule: str) -> None:
    cache = first_exit_right_cache()
    result = search_threshold(policy, cache, rule=rule)
    assert result.chosen.exit_layers.tolist() == [1] * cache.num_samples
    assert result.chosen.mean_exit_layer == 1.0
    assert result.chosen.accuracy == 1.0
    assert math.isfinite(result.chosen.threshold)


def always_wrong_early_cache() -> ExitCache:
    """12 identical-looking samples: exits 1 and 2 agree on the wrong label with high confidence and low entropy;
    the final exit is right but less confident. Every finite candidate threshold sends someone out early."""
    labels = [[1, 1, 0]] * 12
    confidences = [[0.99, 0.99, 0.6]] * 12
    entropies = [[0.05, 0.05, 0.6]] * 12
    return make_cache(labels, confidences, entropies, targets=[0] * 12)


@pytest.mark.parametrize(("rule", "min_count"), [("paired", 5), ("paired", 1), ("per-exit", 5), ("per-exit", 1)])
@pytest.mark.parametrize("policy", SEARCH_POLICIES[:5], ids=lambda p: p.name)
def test_search_keeps_full_depth_when_early_exits_always_wrong(policy: ExitPolicy, rule: str, min_count: int) -> None:
    cache = always_wrong_early_cache()
    result = search_threshold(policy, cache, rule=rule, min_count=min_count)
    assert result.chosen.threshold == math.inf
    assert result.chosen.mean_exit_layer == cache.num_layers
    assert result.chosen.exit_layers.tolist() == [3] * 12
    assert result.chosen.accuracy == 1.0
    # every finite candidate was rejected
    assert not any(
        ok for outcome, ok in zip(result.curve, result.feasible, strict=True) if math.isfinite(outcome.threshold)
    )


def test_search_paired_sum_rejects_many_small_wrong_exits() -> None:
    # each early exit gets fewer than min_count samples, all wrong where the final layer is right: per-exit (which
    # skips small exits) takes the early exits, paired rejects them through the summed constraint
    labels = [[1, 0, 0]] * 3 + [[0, 0, 0]] * 9
    confidences = [[0.95, 0.5, 0.5]] * 3 + [[0.2, 0.5, 0.5]] * 9
    cache = make_cache(labels, confidences, targets=[0] * 12)
    per_exit = search_threshold(MaxProbPolicy(0.9), cache, rule="per-exit", min_count=5)
    paired = search_threshold(MaxProbPolicy(0.9), cache, rule="paired", min_count=5)
    assert per_exit.chosen.mean_exit_layer < 3.0
    assert paired.chosen.mean_exit_layer == 3.0
    assert paired.chosen.accuracy == 1.0


def test_search_curve_structure() -> None:
    cache = random_cache(9)
    policy = BeemPolicy("beem-c", beem_c_weights(5), 1.0)
    result = search_threshold(policy, cache)
    thresholds = [outcome.threshold for outcome in result.curve]
    assert len(result.curve) == len(result.feasible)
    assert thresholds == sorted(thresholds)
    assert thresholds[-1] == math.inf
    assert result.feasible[-1] is True
    assert thresholds == candidate_thresholds(score_trajectories(policy, cache)).tolist()
    # mean exit layer never decreases as the threshold rises
    means = [outcome.mean_exit_layer for outcome in result.curve]
    assert all(a <= b for a, b in itertools.pairwise(means))
    # the chosen outcome is the feasible one with the smallest mean exit layer
    best = min(o.mean_exit_layer for o, ok in zip(result.curve, result.feasible, strict=True) if ok)
    assert result.chosen.mean_exit_layer == best
    assert any(result.chosen is outcome for outcome in result.curve)


def test_candidate_thresholds() -> None:
    scores = np.array([[0.5, 0.2], [0.2, 1.0]])
    assert candidate_thresholds(scores).tolist() == [0.2, 0.5, 1.0, math.inf]


def test_search_unknown_rule_raises() -> None:
    with pytest.raises(ValueError, match="rule"):
        search_threshold(MaxProbPolicy(0.9), first_exit_right_cache(), rule="bogus")
