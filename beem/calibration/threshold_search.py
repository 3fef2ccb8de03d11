"""Choose a policy's threshold from an exit cache (DESIGN 3.3, steps 2-5).

The serving code's array-form `fold` runs over the cached exits of every sample to get its score trajectory (N, L);
a threshold t then sends sample n out at the first layer where the serving code's `reaches_exit` holds, exactly as
the engine decides online. Each distinct score value is a distinct candidate, so the scan is exact, not a grid.

Selection rules:
- "per-exit" (the paper): for every early exit t with at least `min_count` samples, the error rate of the samples
  leaving at t <= the final layer's error rate overall;
- "paired": for every such exit, its errors on the samples leaving at t <= the final layer's errors on those *same*
  samples, and the same summed over all early exits, which guarantees early-exit accuracy >= full depth on the
  calibration split;
- "paired-bound": an accuracy contract with a guard against calibration noise. With b = samples only full depth
  gets right and c = samples only the policy gets right (the discordant pairs), the one-sided upper confidence
  bound of the accuracy loss, (b - c + z * sqrt(b + c)) / N, must stay within `accuracy_budget` (a fraction:
  0.005 = half a point). b - c has variance b + c under "no difference", so z = 1.2816 is a 90% bound.
The feasible threshold with the smallest mean exit layer wins (ties: higher accuracy); none feasible -> +inf.
The fourth rule certifies a risk instead of testing each threshold on its own:
- "ltt" (Learn then Test, `learn_then_test.py`): walking every distinct score from the highest down, a threshold
  is certified while its binomial p-value for "risk > epsilon" stays <= delta; the lowest certified one wins, none
  certified -> +inf. Its curve's `feasible` marks the certified thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from beem.calibration.exit_cache import ExitCache
from beem.calibration.learn_then_test import (
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    DEFAULT_RISK,
    Certification,
    certify,
    sample_losses,
)
from beem.policies.array_policies import RowPolicies, RowStates, fold, reaches_exit
from beem.policies.exit_policies import ExitPolicy
from beem.policies.policy_table import RULE_OF_CLASS

SELECTION_RULES = ("per-exit", "paired", "paired-bound", "ltt")
DEFAULT_ACCURACY_BUDGET = 0.005
DEFAULT_CONFIDENCE_Z = 1.2816
MAX_CANDIDATES = 2000


@dataclass(frozen=True)
class ExitOutcome:
    """What a policy at one threshold did on a cached split."""

    threshold: float
    exit_layers: np.ndarray  # (N,) 1-based
    accuracy: float
    mean_exit_layer: float
    stops: np.ndarray  # (L,) samples leaving at each layer
    misses: np.ndarray  # (L,) of those, how many the leaving exit got wrong
    final_misses: np.ndarray  # (L,) of those, how many the final exit gets wrong
    only_final_right: int = 0  # discordant pairs with full depth: b
    only_policy_right: int = 0  # c

    def per_exit_table(self) -> list[dict[str, float | int]]:
        return [
            {
                "layer": i + 1,
                "stops": int(s),
                "misses": int(m),
                "final_misses_same_samples": int(f),
                "error_rate": float(m / s) if s else 0.0,
            }
            for i, (s, m, f) in enumerate(zip(self.stops, self.misses, self.final_misses, strict=True))
        ]


def score_trajectories(policy: ExitPolicy, cache: ExitCache) -> np.ndarray:
    """(N, L) score of every sample after every exit, folded by the array form the engine decides with."""
    policies = RowPolicies.repeated(policy, cache.num_samples, cache.num_layers)
    rules = frozenset({RULE_OF_CLASS[type(policy)]})  # only its rule: an old cache has no margins for the gate's
    states = RowStates.fresh(cache.num_samples)
    scores = torch.empty((cache.num_samples, cache.num_layers), dtype=torch.float64)
    for layer in range(cache.num_layers):
        states = fold(states, cache.exit_observations(layer), policies, rules)
        scores[:, layer] = states.score
    return scores.numpy()


def exit_layers_at(scores: np.ndarray, threshold: float) -> np.ndarray:
    """(N, L) scores -> (N,) 1-based exit layers: the first layer where the engine's exit test holds for this
    threshold (the last layer always does)."""
    num_layers = scores.shape[1]
    layers_seen = torch.arange(1, num_layers + 1)  # (L,): after exit i, i exits have been seen
    reached = reaches_exit(torch.from_numpy(scores), layers_seen, threshold, num_layers)  # (N, L)
    return reached.to(torch.uint8).argmax(dim=1).numpy() + 1


def outcome_at(cache: ExitCache, scores: np.ndarray, threshold: float) -> ExitOutcome:
    layers = exit_layers_at(scores, threshold)
    rows = np.arange(cache.num_samples)
    correct = cache.correct()  # (N, L)
    answered_right = correct[rows, layers - 1]
    final_wrong = ~correct[:, -1]
    num_layers = cache.num_layers
    stops = np.bincount(layers - 1, minlength=num_layers)
    misses = np.bincount(layers - 1, weights=~answered_right, minlength=num_layers).astype(np.int64)
    final_misses = np.bincount(layers - 1, weights=final_wrong, minlength=num_layers).astype(np.int64)
    return ExitOutcome(
        threshold,
        layers,
        float(answered_right.mean()),
        float(layers.mean()),
        stops,
        misses,
        final_misses,
        only_final_right=int(np.sum(~answered_right & ~final_wrong)),
        only_policy_right=int(np.sum(answered_right & final_wrong)),
    )


def is_feasible(
    outcome: ExitOutcome,
    final_error_rate: float,
    rule: str,
    min_count: int,
    accuracy_budget: float = DEFAULT_ACCURACY_BUDGET,
    confidence_z: float = DEFAULT_CONFIDENCE_Z,
) -> bool:
    early = slice(0, len(outcome.stops) - 1)
    stops, misses, final_misses = outcome.stops[early], outcome.misses[early], outcome.final_misses[early]
    counted = stops >= min_count
    if rule == "per-exit":
        # The tolerance absorbs float rounding of the rate (18/20 right gives 0.0999...98, not 0.1).
        return bool(np.all(misses[counted] <= final_error_rate * stops[counted] + 1e-9))
    if rule == "paired":
        return bool(np.all(misses[counted] <= final_misses[counted]) and misses.sum() <= final_misses.sum())
    if rule == "paired-bound":
        b, c = outcome.only_final_right, outcome.only_policy_right
        loss_bound = b - c + confidence_z * math.sqrt(b + c)
        return loss_bound <= accuracy_budget * len(outcome.exit_layers) + 1e-9
    if rule == "ltt":
        raise ValueError("the 'ltt' rule certifies a sequence of thresholds, not one outcome: use search_threshold")
    raise ValueError(f"unknown selection rule {rule!r}; expected one of {SELECTION_RULES}")


def candidate_thresholds(scores: np.ndarray, limit: int | None = MAX_CANDIDATES) -> np.ndarray:
    """Every distinct score (thinned evenly by rank to `limit`; None: never thinned) plus +inf, ascending."""
    distinct = np.unique(scores[np.isfinite(scores)])
    if limit is not None and len(distinct) > limit:
        distinct = distinct[np.linspace(0, len(distinct) - 1, limit).round().astype(int)]
    return np.append(distinct, math.inf)


def certify_on_cache(
    cache: ExitCache,
    scores: np.ndarray,
    risk: str = DEFAULT_RISK,
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
) -> Certification:
    """Learn then Test over every distinct score of (N, L) `scores` (unthinned: thinning by rank would make the
    sequence depend on the data), each candidate sending samples out as the engine would."""

    def count_losses(threshold: float) -> int:
        return int(sample_losses(cache, exit_layers_at(scores, threshold), risk).sum())

    return certify(candidate_thresholds(scores, limit=None), count_losses, cache.num_samples, risk, epsilon, delta)


@dataclass(frozen=True)
class ThresholdSearch:
    chosen: ExitOutcome
    curve: list[ExitOutcome]  # one per candidate, ascending threshold
    feasible: list[bool]
    certification: Certification | None = None  # the "ltt" rule's guarantee


def search_threshold(
    policy: ExitPolicy,
    cache: ExitCache,
    rule: str = "paired",
    min_count: int = 5,
    accuracy_budget: float = DEFAULT_ACCURACY_BUDGET,
    confidence_z: float = DEFAULT_CONFIDENCE_Z,
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
    risk: str = DEFAULT_RISK,
) -> ThresholdSearch:
    """`epsilon`, `delta` and `risk` are the "ltt" rule's; the other rules ignore them (and it theirs)."""
    scores = score_trajectories(policy, cache)
    final_error_rate = float(1.0 - cache.correct()[:, -1].mean())
    curve = [outcome_at(cache, scores, float(t)) for t in candidate_thresholds(scores)]
    if rule == "ltt":
        certification = certify_on_cache(cache, scores, risk, epsilon, delta)
        # Every candidate at or above the certified threshold was certified on the way down.
        certified = [o.threshold >= certification.threshold for o in curve]
        return ThresholdSearch(outcome_at(cache, scores, certification.threshold), curve, certified, certification)
    feasible = [is_feasible(o, final_error_rate, rule, min_count, accuracy_budget, confidence_z) for o in curve]
    # +inf is always feasible (nothing leaves early), so the choice is never empty.
    chosen = min(
        (o for o, ok in zip(curve, feasible, strict=True) if ok),
        key=lambda o: (o.mean_exit_layer, -o.accuracy),
    )
    return ThresholdSearch(chosen, curve, feasible)
