"""The `paired-bound` selection rule: an accuracy budget against full depth with a one-sided confidence bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from beem.calibration.exit_cache import ExitCache
from beem.calibration.paired_comparison import compare_paired, mcnemar_exact_p
from beem.calibration.threshold_search import ExitOutcome, is_feasible, outcome_at, search_threshold
from beem.policies.exit_policies import MaxProbPolicy


def _outcome(only_final_right: int, only_policy_right: int, num_samples: int) -> ExitOutcome:
    layers = np.full(num_samples, 2)
    zeros = np.zeros(2, dtype=np.int64)
    return ExitOutcome(0.5, layers, 0.0, 2.0, zeros, zeros, zeros, only_final_right, only_policy_right)


@pytest.mark.parametrize(
    ("b", "c", "n", "budget", "z", "feasible"),
    [
        (0, 0, 1000, 0.0, 1.28, True),  # nothing changes: always feasible
        (5, 0, 1000, 0.005, 0.0, True),  # exactly the budget, no guard
        (6, 0, 1000, 0.005, 0.0, False),  # one over
        (4, 0, 1000, 0.005, 1.0, False),  # 4 + 1 * 2 = 6 > 5
        (4, 5, 1000, 0.005, 1.0, True),  # -1 + 3 = 2 <= 5
        (10, 10, 1000, 0.005, 1.28, False),  # break-even but noisy: 0 + 1.28 * 4.47 = 5.7 > 5
        (10, 10, 1000, 0.01, 1.28, True),
    ],
)
def test_loss_bound_against_the_budget(b: int, c: int, n: int, budget: float, z: float, feasible: bool) -> None:
    outcome = _outcome(b, c, n)
    assert is_feasible(outcome, 0.1, "paired-bound", 5, accuracy_budget=budget, confidence_z=z) is feasible


def test_outcome_counts_the_discordant_pairs() -> None:
    # 4 samples, 2 layers; the policy exits everyone at layer 1.
    cache = ExitCache(
        exit_labels=np.array([[0, 0], [1, 0], [1, 0], [1, 1]]),
        confidences=np.full((4, 2), 0.9),
        entropies=np.full((4, 2), 0.3),
        targets=np.array([0, 0, 1, 1]),
    )
    outcome = outcome_at(cache, np.ones((4, 2)), 0.5)
    assert (outcome.only_final_right, outcome.only_policy_right) == (1, 1)  # sample 1 and sample 2


def test_a_larger_budget_never_chooses_a_slower_threshold() -> None:
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, 400)
    right = rng.random((400, 4)) < np.array([0.7, 0.8, 0.85, 0.9])
    cache = ExitCache(
        exit_labels=np.where(right, targets[:, None], 1 - targets[:, None]),
        confidences=0.5 + 0.5 * rng.random((400, 4)),
        entropies=rng.random((400, 4)),
        targets=targets,
    )
    layers = [
        search_threshold(MaxProbPolicy(math.inf), cache, "paired-bound", accuracy_budget=budget).chosen.mean_exit_layer
        for budget in (0.0, 0.005, 0.02, 0.05)
    ]
    assert layers == sorted(layers, reverse=True)
    assert layers[-1] < layers[0]


@pytest.mark.parametrize(
    ("only_a", "only_b", "p_value"),
    [(0, 0, 1.0), (5, 5, 1.0), (0, 6, 0.03125), (1, 9, 0.021484375), (3, 4, 1.0)],
)
def test_mcnemar_exact(only_a: int, only_b: int, p_value: float) -> None:
    assert mcnemar_exact_p(only_a, only_b) == pytest.approx(p_value)


def test_paired_comparison_counts_and_interval() -> None:
    candidate = np.array([True] * 90 + [False] * 10)
    reference = np.array([True] * 85 + [False] * 5 + [True] * 5 + [False] * 5)
    paired = compare_paired(candidate, reference)
    assert paired.only_candidate_right == 5 and paired.only_reference_right == 5
    assert paired.accuracy_difference == 0.0
    assert paired.ci_low < 0.0 < paired.ci_high
