"""Hand-made exit caches and outcomes shared by the calibration tests."""

from __future__ import annotations

import numpy as np

from beem.calibration.exit_cache import ExitCache
from beem.calibration.threshold_search import ExitOutcome


def make_cache(
    labels: list[list[int]],
    confidences: list[list[float]] | None = None,
    entropies: list[list[float]] | None = None,
    targets: list[int] | None = None,
) -> ExitCache:
    label_array = np.asarray(labels, dtype=np.int64)
    shape = label_array.shape
    conf = np.full(shape, 0.5) if confidences is None else np.asarray(confidences, dtype=np.float64)
    ent = np.full(shape, 0.5) if entropies is None else np.asarray(entropies, dtype=np.float64)
    tgt = np.zeros(shape[0], dtype=np.int64) if targets is None else np.asarray(targets, dtype=np.int64)
    return ExitCache(label_array, conf, ent, tgt)


def random_cache(seed: int, num_samples: int = 40, num_layers: int = 5, num_classes: int = 3) -> ExitCache:
    """Labels that mostly repeat their predecessor (so agreement runs occur), coarse confidences (so ties occur)."""
    rng = np.random.default_rng(seed)
    labels = np.empty((num_samples, num_layers), dtype=np.int64)
    labels[:, 0] = rng.integers(0, num_classes, num_samples)
    for layer in range(1, num_layers):
        keep = rng.random(num_samples) < 0.7
        labels[:, layer] = np.where(keep, labels[:, layer - 1], rng.integers(0, num_classes, num_samples))
    confidences = np.round(rng.uniform(0.34, 1.0, (num_samples, num_layers)), 2)
    entropies = np.round(rng.uniform(0.0, 1.1, (num_samples, num_layers)), 2)
    targets = rng.integers(0, num_classes, num_samples).astype(np.int64)
    return ExitCache(labels, confidences, entropies, targets)


def dummy_outcome(stops: list[int], misses: list[int], final_misses: list[int]) -> ExitOutcome:
    stops_array = np.asarray(stops, dtype=np.int64)
    layers = np.repeat(np.arange(1, len(stops) + 1), stops_array)
    return ExitOutcome(
        0.5,
        layers,
        0.0,
        float(layers.mean()) if len(layers) else 0.0,
        stops_array,
        np.asarray(misses, dtype=np.int64),
        np.asarray(final_misses, dtype=np.int64),
    )
