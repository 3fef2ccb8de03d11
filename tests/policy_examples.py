"""Policies for tests that calibration would otherwise have to train: a seeded exit gate of random weights."""

from __future__ import annotations

import random

from beem.policies.exit_gate import HIDDEN_UNITS, NUM_FEATURES, ExitGatePolicy, GateWeights


def example_gate(num_layers: int, seed: int = 0) -> GateWeights:
    """Random weights of a plausible size: every feature moves the log-odds, none alone decides."""
    rng = random.Random(seed)

    def numbers(count: int, scale: float = 1.0) -> tuple[float, ...]:
        return tuple(rng.uniform(-scale, scale) for _ in range(count))

    return GateWeights(
        num_layers=num_layers,
        beem_a_weights=tuple(rng.uniform(0.5, 1.0) for _ in range(num_layers)),
        feature_mean=numbers(NUM_FEATURES, 0.5),
        feature_scale=tuple(rng.uniform(0.5, 2.0) for _ in range(NUM_FEATURES)),
        hidden_weights=numbers(HIDDEN_UNITS * NUM_FEATURES),
        hidden_bias=numbers(HIDDEN_UNITS, 0.5),
        output_weights=numbers(HIDDEN_UNITS),
        output_bias=rng.uniform(-1.0, 1.0),
    )


def example_gate_policy(num_layers: int, min_log_odds: float = 0.0, seed: int = 0) -> ExitGatePolicy:
    return ExitGatePolicy(example_gate(num_layers, seed), min_log_odds)
