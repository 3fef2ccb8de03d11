"""Evaluate calibrated policies on a cached split: the numbers `beem evaluate` prints and the report shows.

Every policy runs through its own `update`/threshold code (threshold_search), so these are the exits the server
makes, not a re-implementation. Each policy is also compared with full depth on the same samples (paired).
"""

from __future__ import annotations

from typing import Any

from beem.calibration.exit_cache import ExitCache
from beem.calibration.paired_comparison import compare_paired
from beem.calibration.policy_calibration import evaluate_policy
from beem.policies.exit_policies import ExitPolicy
from beem.policies.oracle import oracle_exit_layers
from beem.policies.policy_table import policy_params_json


def evaluate_policies(cache: ExitCache, policies: dict[str, ExitPolicy]) -> dict[str, Any]:
    num_layers = cache.num_layers
    correct = cache.correct()  # (N, L)
    final_correct = correct[:, -1]
    oracle_layers = oracle_exit_layers(cache.exit_labels)
    results: dict[str, Any] = {}
    for name, policy in policies.items():
        outcome = evaluate_policy(policy, cache)
        answered_right = correct[range(cache.num_samples), outcome.exit_layers - 1]
        results[name] = {
            "accuracy": outcome.accuracy,
            "mean_exit_layer": outcome.mean_exit_layer,
            "layer_speedup": num_layers / outcome.mean_exit_layer,
            "params": policy_params_json(policy),
            "paired_vs_full": compare_paired(answered_right, final_correct).to_json(),
            "exit_layer_counts": outcome.stops.tolist(),
        }
    return {
        "num_layers": num_layers,
        "num_samples": cache.num_samples,
        "final_layer_accuracy": float(final_correct.mean()),
        "exit_accuracies": cache.exit_accuracies().tolist(),
        "oracle_layer_speedup": float(num_layers / oracle_layers.mean()),
        "oracle": {
            "mean_exit_layer": float(oracle_layers.mean()),
            "layer_speedup": float(num_layers / oracle_layers.mean()),
        },
        "policies": results,
    }
