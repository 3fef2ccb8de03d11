"""A classified row's answer from what its exit said (`LeftRows`), the same for every layer path: label and score;
every label's probability and the raw scores for rows that want the distribution; every computed exit for rows that
asked for them. One softmax for all the rows that left together, then plain Python per row."""

from __future__ import annotations

import torch

from service.engine.classify.layer_path import LeftRows
from service.engine.row_outcome import ClassAnswer, ExitTrace


def class_answers(left: LeftRows) -> list[ClassAnswer]:
    """One answer per row of `left`, in its order."""
    probabilities: list[list[float]] | None = None
    raw: list[list[float]] | None = None
    if left.logits is not None:
        probabilities, raw = torch.softmax(left.logits, dim=-1).tolist(), left.logits.tolist()  # (E, C) each
    answers = []
    for slot, row in enumerate(left.rows):
        layer = left.layers[slot]
        exits: tuple[ExitTrace, ...] = ()
        if row.return_exits and left.trace_labels is not None and left.trace_confidences is not None:
            labels, confidences = left.trace_labels[slot], left.trace_confidences[slot]
            exits = tuple(ExitTrace(i + 1, int(labels[i]), float(confidences[i])) for i in range(layer))
        distribution = row.wants_distribution and probabilities is not None and raw is not None
        answers.append(ClassAnswer(
            label=left.labels[slot], score=left.scores[slot], exit_layer=layer,
            probabilities=tuple(probabilities[slot]) if distribution and probabilities else None,
            logits=tuple(raw[slot]) if distribution and raw else None, exits=exits,
        ))  # fmt: skip
    return answers
