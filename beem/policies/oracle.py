"""The oracle exit: an offline bound, not a serving policy.

A sample's oracle layer is the first layer from which every later exit agrees with the final exit's label; no
policy that must answer the final layer's label can leave earlier. (It is a bound on early exits that preserve the
final answer, not on accuracy: an exit that disagrees with a wrong final layer could be right.)
"""

from __future__ import annotations

import numpy as np


def oracle_exit_layers(exit_labels: np.ndarray) -> np.ndarray:
    """(N, L) predicted labels of every exit -> (N,) 1-based oracle exit layers."""
    agrees_with_final = exit_labels == exit_labels[:, -1:]  # (N, L)
    # Suffix-all along layers: agreeing_from[n, i] is True when exits i..L all agree with the final one.
    agreeing_from = np.flip(np.cumprod(np.flip(agrees_with_final, axis=1), axis=1), axis=1).astype(bool)
    first = np.argmax(agreeing_from, axis=1)  # the final exit always agrees, so some column is True
    return (first + 1).astype(np.int64)
