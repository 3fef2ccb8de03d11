"""Estimates of the terms of the paper's Theorem 3.1 for a calibrated BEEM policy.

BEEM's error is below the final layer's error p if, for every early exit i,
    q_i < a_i / (a_i + (1/p - 1) * b_i^(i-1)),
with q_i the error of exit i, a_i the chance that agreeing experts carry a correct exit i over alpha, and b_i the
chance that an earlier expert repeats exit i's wrong label. Estimated on the calibration cache as:
    q_i = share of samples exit i gets wrong;
    a_i = share of the samples exit i gets right whose BEEM score S_i reaches alpha;
    b_i = share of the samples exit i gets wrong on which exit i-1 predicts the same (wrong) label.
These are the report's diagnostics; the threshold itself is chosen by the operational rule in threshold_search.
"""

from __future__ import annotations

import numpy as np

from beem.calibration.exit_cache import ExitCache
from beem.calibration.threshold_search import score_trajectories
from beem.policies.exit_policies import BeemPolicy


def _share(mask: np.ndarray, within: np.ndarray) -> float:
    return float(mask[within].mean()) if within.any() else 0.0


def theorem_terms(policy: BeemPolicy, cache: ExitCache) -> list[dict[str, object]]:
    correct = cache.correct()  # (N, L)
    final_error = float(1.0 - correct[:, -1].mean())
    scores = score_trajectories(policy, cache)  # (N, L)
    rows: list[dict[str, object]] = []
    for i in range(cache.num_layers - 1):
        q = float(1.0 - correct[:, i].mean())
        a = _share(scores[:, i] >= policy.alpha, correct[:, i])
        wrong = ~correct[:, i]
        b = _share(cache.exit_labels[:, i - 1] == cache.exit_labels[:, i], wrong) if i > 0 else 0.0
        if final_error <= 0.0:
            bound = 0.0  # a perfect final layer cannot be beaten
        else:
            denominator = a + (1.0 / final_error - 1.0) * b**i
            bound = a / denominator if denominator > 0 else 1.0
        rows.append({"layer": i + 1, "q": q, "a": a, "b": b, "bound": bound, "holds": q < bound})
    return rows
