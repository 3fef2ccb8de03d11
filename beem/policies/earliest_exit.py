"""The first layer at which a policy could possibly let a row leave, whatever its exits say: each policy's bound,
named by its entry in the policy table (`policy_table.py`, `earliest_exit_layer`).

Serving on a GPU reads decisions back to the host only where some row of a group could leave (the device path,
`service/engine/classify/device/device_path.py`): before that layer the decisions are still folded on the device,
but nothing is read. The bound is conservative: the score's largest attainable value after each exit, compared
with the threshold (a row never leaves earlier than this, it may leave later).

| policy    | score after exit i, at most                                   | earliest exit                     |
|-----------|---------------------------------------------------------------|-----------------------------------|
| BEEM      | sum of w_1..w_i (every exit agrees, confidence 1; w_1 only if counted) | first i with that sum >= alpha |
| max-prob  | 1                                                             | 1 if threshold <= 1               |
| entropy   | 0 (-H, entropy >= 0)                                          | 1 if threshold <= 0               |
| patience  | i - 1 (agreeing exits in a row)                               | threshold + 1                     |
| static    | i                                                             | the threshold layer               |
Otherwise (and always at the latest) the row's last layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from beem.policies.exit_policies import BeemPolicy, ExitPolicy

SLACK = 1e-9  # float sums of the weights may fall a rounding error short of the threshold they reach


def beem_earliest_exit(policy: BeemPolicy, last_layer: int) -> int:
    attainable = 0.0
    for layer, weight in enumerate(policy.weights[:last_layer], start=1):
        if layer > 1 or policy.count_first_exit:
            attainable += weight
        if attainable >= policy.threshold - SLACK:
            return layer
    return last_layer


def bounded_score_earliest_exit(highest_score: float) -> Callable[[ExitPolicy, int], int]:
    """For a score that never passes `highest_score` at any exit (max-prob: 1, entropy: 0): layer 1 if the
    threshold is within reach, else never early."""
    return lambda policy, last_layer: 1 if policy.threshold <= highest_score else last_layer


def counted_layers_earliest_exit(offset: int) -> Callable[[ExitPolicy, int], int]:
    """For a score that grows by at most 1 per exit from `1 - offset` at the first (static: the depth, offset 0;
    patience: agreeing exits in a row, offset 1)."""

    def earliest(policy: ExitPolicy, last_layer: int) -> int:
        if math.isinf(policy.threshold):
            return last_layer
        return int(min(max(math.ceil(policy.threshold) + offset, 1), last_layer))

    return earliest
