"""Unit tests for beem/policies/oracle.py: first layer from which every later exit agrees with the final one."""

from __future__ import annotations

import numpy as np
import pytest

from beem.policies.oracle import oracle_exit_layers


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([[1, 1, 1]], [1]),
        ([[0, 1, 1]], [2]),
        ([[1, 0, 1]], [3]),
        ([[1, 1, 0]], [3]),
        ([[0, 0, 1]], [3]),
        ([[2, 1, 0]], [3]),
        ([[5]], [1]),  # a single exit is its own final exit
        ([[4], [7]], [1, 1]),
        ([[3, 3], [2, 3]], [1, 2]),
        # an early run that agrees with the final label but is interrupted does not count
        ([[1, 1, 0, 1, 1]], [4]),
        ([[1, 0, 0, 1, 1, 1]], [4]),
        ([[2, 2, 2, 2], [0, 1, 2, 2], [3, 3, 3, 1], [0, 1, 0, 1]], [1, 3, 4, 4]),
    ],
)
def test_oracle_exit_layers(labels: list[list[int]], expected: list[int]) -> None:
    layers = oracle_exit_layers(np.asarray(labels, dtype=np.int64))
    assert layers.shape == (len(labels),)
    assert layers.dtype == np.int64
    assert layers.tolist() == expected


def test_oracle_matches_brute_force_on_random_labels() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, size=(200, 6))
    layers = oracle_exit_layers(labels)
    for row, layer in zip(labels, layers, strict=True):
        expected = next(i + 1 for i in range(labels.shape[1]) if np.all(row[i:] == row[-1]))
        assert layer == expected


def test_oracle_label_at_exit_is_final_label() -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, size=(100, 5))
    layers = oracle_exit_layers(labels)
    assert np.all(labels[np.arange(100), layers - 1] == labels[:, -1])
    assert np.all((layers >= 1) & (layers <= 5))


def test_oracle_does_not_modify_input() -> None:
    labels = np.array([[1, 0, 1], [2, 2, 2]], dtype=np.int64)
    copy = labels.copy()
    oracle_exit_layers(labels)
    assert np.array_equal(labels, copy)
