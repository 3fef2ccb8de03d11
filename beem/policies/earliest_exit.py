"""The first layer at which a policy could possibly let a row leave, whatever its exits say.

Serving on a GPU reads decisions back to the host only where some row of a group could leave (the GPU path of
`service/engine/device_engine.py`): before that layer the decisions are still folded on the device, but nothing
is read. The bound is conservative: the score's largest attainable value after each exit, compared with the
threshold (a row never leaves earlier than this, it may leave later).

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

from beem.policies.exit_policies import (
    BeemPolicy,
    EntropyPolicy,
    ExitPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
)

SLACK = 1e-9  # float sums of the weights may fall a rounding error short of the threshold they reach


def earliest_exit_layer(policy: ExitPolicy, last_layer: int) -> int:
    """1-based: no row of `policy` allowed `last_layer` layers leaves before this layer."""
    threshold = policy.threshold
    if isinstance(policy, BeemPolicy):
        attainable = 0.0
        for layer, weight in enumerate(policy.weights[:last_layer], start=1):
            if layer > 1 or policy.count_first_exit:
                attainable += weight
            if attainable >= threshold - SLACK:
                return layer
        return last_layer
    if isinstance(policy, MaxProbPolicy):
        return 1 if threshold <= 1.0 else last_layer
    if isinstance(policy, EntropyPolicy):
        return 1 if threshold <= 0.0 else last_layer
    if isinstance(policy, PatiencePolicy | StaticPolicy):
        offset = 1 if isinstance(policy, PatiencePolicy) else 0
        if math.isinf(threshold):
            return last_layer
        return int(min(max(math.ceil(threshold) + offset, 1), last_layer))
    return 1  # a policy this table does not know: assume it may leave anywhere
