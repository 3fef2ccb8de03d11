"""Selection rules (is_feasible) and the threshold search they drive (DESIGN 3.3, steps 4-5)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from beem.calibration.exit_cache import ExitCache
from beem.calibration.threshold_search import (
    candidate_thresholds,
    is_feasible,
    score_trajectories,
    search_threshold,
)
from beem.policies.exit_policies import (
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
    beem_c_weights,
)
from tests.unit.exit_cache_builders import dummy_outcome, make_cache, random_cache

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
