"""Read an exit head's logits into what policies and answers need: label, confidence, entropy, probabilities.

For few labels (classification) one `tolist()` and plain Python math beat five small tensor ops per layer: the
per-layer exit check is the engine's hot path. Many labels (a vocabulary) stay in torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from beem.policies.array_policies import summarize_exits as exit_summaries

PYTHON_MATH_MAX_LABELS = 64


@dataclass(frozen=True)
class ExitReadout:
    label: int
    confidence: float  # max probability
    entropy: float  # nats
    probabilities: tuple[float, ...]
    logits: tuple[float, ...]


def _readout_row(logits: list[float]) -> ExitReadout:
    top = max(logits)
    shifted = [value - top for value in logits]
    exps = [math.exp(value) for value in shifted]
    total = sum(exps)
    log_total = math.log(total)
    probabilities = tuple(value / total for value in exps)
    entropy = -sum(p * (value - log_total) for p, value in zip(probabilities, shifted, strict=True))
    label = max(range(len(probabilities)), key=probabilities.__getitem__)
    return ExitReadout(label, probabilities[label], entropy, probabilities, tuple(logits))


def read_exits(logits: torch.Tensor) -> list[ExitReadout]:
    """(B, C) logits -> one readout per row."""
    if logits.shape[-1] <= PYTHON_MATH_MAX_LABELS:
        return [_readout_row(row) for row in logits.float().tolist()]
    labels, confidences, entropies = (t.tolist() for t in exit_summaries(logits))
    probabilities = torch.softmax(logits.float(), dim=-1).tolist()
    raw = logits.float().tolist()
    return [
        ExitReadout(label, confidence, entropy, tuple(p), tuple(r))
        for label, confidence, entropy, p, r in zip(labels, confidences, entropies, probabilities, raw, strict=True)
    ]
