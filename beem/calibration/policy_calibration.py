"""Calibrate every serving policy on one exit cache and describe the result as JSON (`calibration.json`).

BEEM-A's weights are the exits' calibration accuracies and BEEM-C's are i / L; each policy's threshold then comes
from `search_threshold` with the bundle's selection rule. The whole trade-off curve, the per-exit error rates and
the Theorem 3.1 terms are kept so the report can show why a threshold was chosen; under the "ltt" rule each
searched policy also carries its `guarantee` (`learn_then_test.Certification.to_json`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beem.calibration.exit_cache import ExitCache
from beem.calibration.exit_gate_calibration import calibrate_exit_gate
from beem.calibration.learn_then_test import (
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    DEFAULT_RISK,
    check_certification_options,
)
from beem.calibration.theorem_terms import theorem_terms
from beem.calibration.threshold_search import (
    DEFAULT_ACCURACY_BUDGET,
    DEFAULT_CONFIDENCE_Z,
    SELECTION_RULES,
    ExitOutcome,
    ThresholdSearch,
    outcome_at,
    score_trajectories,
    search_threshold,
)
from beem.policies.exit_policies import BeemPolicy, ExitPolicy
from beem.policies.oracle import oracle_exit_layers
from beem.policies.policy_parameters import json_number
from beem.policies.policy_table import POLICY_TABLE, CalibrationStart, policy_params_json

CURVE_POINTS_KEPT = 200


@dataclass(frozen=True)
class CalibrationOptions:
    selection_rule: str = "paired-bound"
    min_count: int = 5
    accuracy_budget: float = DEFAULT_ACCURACY_BUDGET  # paired-bound only: tolerated loss vs full depth (fraction)
    confidence_z: float = DEFAULT_CONFIDENCE_Z  # paired-bound only: one-sided normal quantile of the bound
    count_first_exit: bool = True
    reset: str = "restart"
    vote_above_chance: bool = False  # BEEM's exits vote their confidence above chance (DESIGN 3.1)
    # ltt only (beem/calibration/learn_then_test.py): risk at most epsilon with probability 1 - delta. 1% at 95% is
    # certifiable from a few hundred samples; "disagreement" needs no labels, so unlabeled traffic can recalibrate by
    # the same rule and online control can hold its agreement target at 1 - epsilon.
    epsilon: float = DEFAULT_EPSILON
    delta: float = DEFAULT_DELTA
    risk: str = DEFAULT_RISK

    def __post_init__(self) -> None:
        if self.selection_rule not in SELECTION_RULES:
            raise ValueError(f"unknown selection rule {self.selection_rule!r}; expected one of {SELECTION_RULES}")
        check_certification_options(self.risk, self.epsilon, self.delta)


@dataclass(frozen=True)
class CalibratedPolicy:
    policy: ExitPolicy  # with the chosen threshold
    search: ThresholdSearch | None  # None for full depth, which has nothing to choose


def calibrate_policies(
    cache: ExitCache, options: CalibrationOptions, num_labels: int = 0
) -> dict[str, CalibratedPolicy]:
    """Every policy of the table, from its starting point (weights, placeholder threshold) to its chosen
    threshold; `num_labels` is the model's (BEEM's vote above chance needs it; 0: not known, as for captions)."""
    start = CalibrationStart(
        cache.num_layers, tuple(cache.exit_accuracies().tolist()), options.count_first_exit, options.reset,
        options.vote_above_chance, num_labels,
    )  # fmt: skip
    calibrated: dict[str, CalibratedPolicy] = {}
    for definition in POLICY_TABLE.values():
        if definition.trained:  # the exit gate: fitted on half the split, certified by Learn then Test on the other
            fitted = calibrate_exit_gate(cache, options.epsilon, options.delta, options.risk, options.min_count)
            if fitted is not None:
                calibrated[definition.name] = CalibratedPolicy(*fitted)
            continue
        policy = definition.starting_point(start)
        if not definition.searched:
            calibrated[policy.name] = CalibratedPolicy(policy, None)
            continue
        search = search_threshold(
            policy, cache, options.selection_rule, options.min_count, options.accuracy_budget, options.confidence_z,
            options.epsilon, options.delta, options.risk,
        )  # fmt: skip
        calibrated[policy.name] = CalibratedPolicy(policy.with_threshold(search.chosen.threshold), search)
    return calibrated


def evaluate_policy(policy: ExitPolicy, cache: ExitCache) -> ExitOutcome:
    """What a calibrated policy does on a (different) cached split, through the same policy code."""
    return outcome_at(cache, score_trajectories(policy, cache), policy.threshold)


def _outcome_json(outcome: ExitOutcome, num_layers: int) -> dict[str, object]:
    return {
        "threshold": json_number(outcome.threshold),
        "accuracy": outcome.accuracy,
        "mean_exit_layer": outcome.mean_exit_layer,
        "layer_speedup": num_layers / outcome.mean_exit_layer,
    }


def calibration_json(
    cache: ExitCache, options: CalibrationOptions, calibrated: dict[str, CalibratedPolicy]
) -> dict[str, object]:
    num_layers = cache.num_layers
    oracle_layers = oracle_exit_layers(cache.exit_labels)
    policies: dict[str, object] = {}
    guaranteed: list[str] = []
    for name, entry in calibrated.items():
        outcome = evaluate_policy(entry.policy, cache)
        described: dict[str, object] = {
            "params": policy_params_json(entry.policy),
            **_outcome_json(outcome, num_layers),
            "per_exit": outcome.per_exit_table(),
        }
        if entry.search is not None:
            keep = np.unique(np.linspace(0, len(entry.search.curve) - 1, CURVE_POINTS_KEPT).round().astype(int))
            described["curve"] = [
                {**_outcome_json(entry.search.curve[i], num_layers), "feasible": entry.search.feasible[i]} for i in keep
            ]
            if entry.search.certification is not None:
                described["guarantee"] = entry.search.certification.to_json()
                guaranteed.append(name)
        if isinstance(entry.policy, BeemPolicy):
            described["theorem_3_1"] = theorem_terms(entry.policy, cache)
        policies[name] = described
    # What the guarantees were certified at: under the "ltt" rule, or wherever a policy was certified whatever the rule.
    certified = options.selection_rule == "ltt" or bool(guaranteed)
    certifying = {"epsilon": options.epsilon, "delta": options.delta, "risk": options.risk} if certified else {}
    return {
        "num_samples": cache.num_samples,
        "num_layers": num_layers,
        "selection_rule": options.selection_rule,
        "min_count": options.min_count,
        "accuracy_budget": options.accuracy_budget,
        "confidence_z": options.confidence_z,
        **certifying,
        "exit_accuracies": cache.exit_accuracies().tolist(),
        "final_error_rate": float(1.0 - cache.correct()[:, -1].mean()),
        "oracle": {
            "mean_exit_layer": float(oracle_layers.mean()),
            "layer_speedup": float(num_layers / oracle_layers.mean()),
        },
        "policies": policies,
    }
