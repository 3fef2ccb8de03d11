"""Fit the exit gate (beem/policies/exit_gate.py) on one part of a calibration exit cache and certify its threshold
by Learn then Test on the other.

The two parts are a seeded random half each: the gate must not have seen the samples that certify it, or the
binomial test's p-values would not be valid. Nothing here needs labels: the gate learns to predict agreement with
the final layer, its BEEM-A feature weighs exit i by its agreement with the final layer on the fitting part (BEEM-A
uses accuracies; agreement is what the gate predicts and what unlabeled traffic gives), and the certifying risk is
the options' (disagreement by default; excess error reads the labels).

The gate is a 16-unit MLP over standardized features (`exit_gate.GATE_FEATURES`), trained full-batch with Adam
on binary cross-entropy over every (sample, exit) pair but the last exit, seeded: the same cache gives the same
gate.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from beem.calibration.exit_cache import ExitCache
from beem.calibration.threshold_search import ThresholdSearch, search_threshold
from beem.policies.array_policies import RowPolicies, RowStates, fold, gate_features
from beem.policies.exit_gate import HIDDEN_UNITS, NUM_FEATURES, ExitGatePolicy, GateWeights
from beem.policies.policy_table import ArrayRule

log = logging.getLogger(__name__)

SPLIT_SEED = 20261207
TRAINING_SEED = 0
TRAINING_STEPS = 400
LEARNING_RATE = 0.01
WEIGHT_DECAY = 1e-4


def split_in_two(cache: ExitCache, seed: int = SPLIT_SEED) -> tuple[ExitCache, ExitCache]:
    """A seeded random half to fit on and the other half to certify on."""
    order = np.random.default_rng(seed).permutation(cache.num_samples)
    half = cache.num_samples // 2
    return cache.take(np.sort(order[:half])), cache.take(np.sort(order[half:]))


def agreement_weights(cache: ExitCache) -> tuple[float, ...]:
    """(L,) how often each exit agrees with the final layer: the gate's BEEM-A weights."""
    return tuple(float(w) for w in (cache.exit_labels == cache.exit_labels[:, -1:]).mean(axis=0))


def feature_matrix(cache: ExitCache, beem_a_weights: tuple[float, ...]) -> torch.Tensor:
    """(N, L, F) float64: the gate's features after every exit of every sample, folded by the array form the
    engine serves with (a gate row of zero weights: only its state and features are read here)."""
    assert cache.margins is not None, "the exit gate reads margins: an exit cache written before it has none"
    num_layers = cache.num_layers
    placeholder = GateWeights(num_layers, beem_a_weights, (0.0,) * NUM_FEATURES, (1.0,) * NUM_FEATURES,
                              (0.0,) * (HIDDEN_UNITS * NUM_FEATURES), (0.0,) * HIDDEN_UNITS, (0.0,) * HIDDEN_UNITS,
                              0.0)  # fmt: skip
    policies = RowPolicies.repeated(ExitGatePolicy(placeholder, math.inf), cache.num_samples, num_layers)
    states = RowStates.fresh(cache.num_samples)
    features = []
    for layer in range(num_layers):
        observed = cache.exit_observations(layer)
        states = fold(states, observed, policies, frozenset({ArrayRule.GATE}))
        features.append(gate_features(observed, states.beem_a_score, states.beem_c_score, states.agreeing_run,
                                      states.layers_seen, policies.gate[:, 0]))  # fmt: skip
    return torch.stack(features, dim=1)


def fit_exit_gate(cache: ExitCache) -> GateWeights:
    """The gate trained on `cache` to predict, after each exit but the last, agreement with the final layer."""
    weights = agreement_weights(cache)
    features = feature_matrix(cache, weights)[:, :-1].reshape(-1, NUM_FEATURES)  # (N (L - 1), F)
    agrees = torch.from_numpy(cache.exit_labels[:, :-1] == cache.exit_labels[:, -1:]).reshape(-1).double()
    mean = features.mean(dim=0)
    scale = 1.0 / features.std(dim=0).clamp_min(1e-6)  # a constant feature (one exit's margin on a binary
    # model is 2C - 1, so never constant; but a tiny split may be) is not blown up
    x = ((features - mean) * scale).float()
    torch.manual_seed(TRAINING_SEED)
    hidden, output = torch.nn.Linear(NUM_FEATURES, HIDDEN_UNITS), torch.nn.Linear(HIDDEN_UNITS, 1)
    parameters = [*hidden.parameters(), *output.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    loss_of = torch.nn.BCEWithLogitsLoss()
    with torch.enable_grad():
        for _ in range(TRAINING_STEPS):
            optimizer.zero_grad()
            loss = loss_of(output(torch.relu(hidden(x))).squeeze(1), agrees.float())
            loss.backward()
            optimizer.step()
    log.info("exit gate trained on %d exits: final loss %.4f", len(agrees), float(loss.detach()))
    return GateWeights(
        num_layers=cache.num_layers,
        beem_a_weights=weights,
        feature_mean=tuple(mean.tolist()),
        feature_scale=tuple(scale.tolist()),
        hidden_weights=tuple(hidden.weight.detach().double().reshape(-1).tolist()),
        hidden_bias=tuple(hidden.bias.detach().double().tolist()),
        output_weights=tuple(output.weight.detach().double().reshape(-1).tolist()),
        output_bias=float(output.bias.detach().double().item()),
    )


def calibrate_exit_gate(
    cache: ExitCache, epsilon: float, delta: float, risk: str, min_count: int = 5
) -> tuple[ExitGatePolicy, ThresholdSearch] | None:
    """The gate fitted on one half and its threshold certified by Learn then Test on the other; None for a cache
    without margins (written before the gate) or too small to split."""
    if cache.margins is None or cache.num_samples < 4:
        log.warning("the exit gate is not calibrated: %s", "the exit cache has no margins" if cache.margins is None
                    else "too few calibration samples")  # fmt: skip
        return None
    fitting, certifying = split_in_two(cache)
    gate = ExitGatePolicy(fit_exit_gate(fitting), math.inf)
    search = search_threshold(gate, certifying, "ltt", min_count, epsilon=epsilon, delta=delta, risk=risk)
    return gate.with_threshold(search.chosen.threshold), search
