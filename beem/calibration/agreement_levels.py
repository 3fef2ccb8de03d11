"""How often a policy's early answer equals the full-depth answer, measured on a cached split.

Online, a shadow sample of early-exited rows is re-run to the last layer and the two answers are compared; this
module gives the same numbers offline, so the serving side has a calibrated starting point (and the exchange rate
from disagreement to accuracy) before any shadow comparison has finished:

- agreement = 1 - early_fraction * (1 - exited_agreement): rows that run to the last layer agree trivially, so only
  early rows can disagree;
- loss_per_disagreement turns an online disagreement rate into an accuracy estimate. A disagreement costs a point
  when full depth was right, wins one back when the early exit was right, and is neutral when both are wrong
  (possible with more than two classes), so the net loss is (b - c) / disagreements with b, c the discordant pairs
  of `threshold_search.paired-bound`.
The policy is simulated by `score_trajectories` / `exit_layers_at`, exactly as the engine decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beem.calibration.exit_cache import ExitCache
from beem.calibration.threshold_search import exit_layers_at, score_trajectories
from beem.policies.exit_policies import ExitPolicy


@dataclass(frozen=True)
class AgreementLevels:
    agreement: float  # share of samples whose answer under the policy equals the final exit's label
    exited_agreement: float  # the same, among samples that exit before the last layer (1.0 when none do)
    early_fraction: float  # share of samples that exit before the last layer
    loss_per_disagreement: float  # net accuracy lost per disagreeing sample (b - c) / disagreements; 0.0 if none
    num_samples: int


def agreement_levels(cache: ExitCache, policy: ExitPolicy) -> AgreementLevels:
    """Agreement of `policy` (at its own threshold) with the last exit over every sample of `cache`."""
    layers = exit_layers_at(score_trajectories(policy, cache), policy.threshold)  # (N,) 1-based
    rows = np.arange(cache.num_samples)
    answers = cache.exit_labels[rows, layers - 1]  # (N,)
    final_answers = cache.exit_labels[:, -1]  # (N,)
    agrees = answers == final_answers
    early = layers < cache.num_layers
    num_early = int(early.sum())
    disagreements = int((~agrees).sum())
    policy_right = answers == cache.targets
    final_right = final_answers == cache.targets
    only_final_right = int(np.sum(final_right & ~policy_right))
    only_policy_right = int(np.sum(policy_right & ~final_right))
    return AgreementLevels(
        agreement=float(agrees.mean()) if cache.num_samples else 1.0,
        exited_agreement=float(agrees[early].mean()) if num_early else 1.0,
        early_fraction=num_early / cache.num_samples if cache.num_samples else 0.0,
        loss_per_disagreement=(only_final_right - only_policy_right) / disagreements if disagreements else 0.0,
        num_samples=cache.num_samples,
    )
