"""Paired comparison of two classifiers' accuracy on the same samples.

An unpaired 0.5-point gap is below the noise of a 1,600-sample split, but two policies answering the *same*
samples differ only where they disagree; McNemar's exact test and a paired bootstrap interval use exactly that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 4_000
BOOTSTRAP_SEED = 7


@dataclass(frozen=True)
class PairedComparison:
    accuracy_difference: float  # candidate minus reference, in accuracy units (0.01 = one point)
    ci_low: float  # 95% paired bootstrap interval of the difference
    ci_high: float
    only_candidate_right: int  # discordant pairs
    only_reference_right: int
    mcnemar_p_value: float  # exact two-sided

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar: binomial test of the discordant pairs against 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def compare_paired(candidate_correct: np.ndarray, reference_correct: np.ndarray) -> PairedComparison:
    """(N,) bool arrays of right answers on the same samples."""
    if candidate_correct.shape != reference_correct.shape:
        raise ValueError("paired comparison needs both classifiers' answers on the same samples")
    difference = candidate_correct.astype(np.float64) - reference_correct.astype(np.float64)  # (N,) in {-1, 0, 1}
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = rng.integers(0, len(difference), size=(BOOTSTRAP_RESAMPLES, len(difference)))
    means = difference[resampled].mean(axis=1)
    only_candidate = int(np.sum(candidate_correct & ~reference_correct))
    only_reference = int(np.sum(~candidate_correct & reference_correct))
    return PairedComparison(
        accuracy_difference=float(difference.mean()),
        ci_low=float(np.quantile(means, 0.025)),
        ci_high=float(np.quantile(means, 0.975)),
        only_candidate_right=only_candidate,
        only_reference_right=only_reference,
        mcnemar_p_value=mcnemar_exact_p(only_candidate, only_reference),
    )
