"""The learned exit gate: its weights in the manifest (checksum), its training and certification on exit caches, and
both layer paths serving it as its reference does (beem/policies/exit_gate.py,
beem/calibration/exit_gate_calibration.py)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from beem.calibration.exit_cache import ExitCache
from beem.calibration.exit_gate_calibration import calibrate_exit_gate, feature_matrix, fit_exit_gate, split_in_two
from beem.calibration.learn_then_test import sample_losses
from beem.calibration.threshold_search import exit_layers_at, score_trajectories
from beem.policies.exit_gate import GATE_FEATURES, ExitGatePolicy
from beem.policies.exit_policies import ExitObservation, FullDepthPolicy, PolicyState, run_sample
from beem.policies.policy_parameters import PolicyParameterError
from beem.policies.policy_table import build_policy, policy_params_json
from tests.engine.engine_driver import TEXTS, loaded_engine, submit
from tests.policy_examples import example_gate_policy


def synthetic_cache(num_samples: int, num_layers: int = 4, seed: int = 0) -> ExitCache:
    """Two labels; each exit agrees with the final one with a probability that grows with its confidence, so a
    gate has something to learn."""
    rng = np.random.default_rng(seed)
    final = rng.integers(0, 2, num_samples)
    confidences = rng.uniform(0.5, 1.0, (num_samples, num_layers))
    agree = rng.random((num_samples, num_layers)) < (confidences - 0.5) * 2 * 0.9 + 0.1
    agree[:, -1] = True
    labels = np.where(agree, final[:, None], 1 - final[:, None])
    entropies = -(confidences * np.log(confidences) + (1 - confidences) * np.log1p(-confidences + 1e-12))
    return ExitCache(labels.astype(np.int64), confidences, entropies, final.astype(np.int64), 2 * confidences - 1)


def test_the_gate_travels_as_json_with_its_checksum() -> None:
    policy = example_gate_policy(4, 1.5)
    written = json.loads(json.dumps(policy_params_json(policy)))
    assert written["gate"]["features"] == list(GATE_FEATURES) and len(written["gate"]["sha256"]) == 64
    assert build_policy("gate", written, 4) == policy


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda gate: gate["hidden_bias"].__setitem__(0, gate["hidden_bias"][0] + 1e-6), "sha256 does not match"),
        (lambda gate: gate.__setitem__("num_layers", 6), "for 6 layers, the model has 4"),
        (lambda gate: gate["output_weights"].pop(), "must be 16 numbers"),
        (lambda gate: gate.__setitem__("feature_mean", [math.nan] * 7), "finite"),
        (lambda gate: gate.__setitem__("features", ["confidence"]), "must read"),
    ],
    ids=["tampered", "other-depth", "short", "nan", "features"],
)
def test_a_gate_that_is_not_the_one_trained_is_refused(edit: object, message: str) -> None:
    params = json.loads(json.dumps(policy_params_json(example_gate_policy(4, 1.5))))
    edit(params["gate"])  # type: ignore[operator]
    with pytest.raises(PolicyParameterError, match=message):
        build_policy("gate", params, 4)


def test_fitting_is_deterministic_and_learns_which_exits_agree() -> None:
    cache = synthetic_cache(600)
    gate = fit_exit_gate(cache)
    assert gate == fit_exit_gate(cache)
    scores = score_trajectories(ExitGatePolicy(gate, math.inf), cache)[:, :-1]  # (N, L - 1) log-odds
    agrees = cache.exit_labels[:, :-1] == cache.exit_labels[:, -1:]
    # Rank AUC: an agreeing exit usually scores above a disagreeing one.
    above = (scores[agrees][:, None] > scores[~agrees][None, :]).mean()
    assert above > 0.75, above


def test_features_are_the_references() -> None:
    cache = synthetic_cache(20, num_layers=3, seed=1)
    policy = example_gate_policy(3, math.inf)
    features = feature_matrix(cache, policy.gate.beem_a_weights)  # (N, L, F)
    assert features.shape == (20, 3, len(GATE_FEATURES))
    for sample in range(20):
        state = None
        for layer, observation in enumerate(cache.observations(sample)):
            state = policy.update(state or PolicyState(), observation)
            expected = [observation.confidence, observation.margin, observation.entropy, state.beem_a_score,
                        state.beem_c_score, float(state.agreeing_run), (layer + 1) / 3]  # fmt: skip
            assert features[sample, layer].tolist() == pytest.approx(expected, abs=1e-12)


def test_calibration_certifies_on_the_half_it_did_not_fit_on() -> None:
    cache = synthetic_cache(1200)
    fitted = calibrate_exit_gate(cache, epsilon=0.05, delta=0.1, risk="disagreement")
    assert fitted is not None
    policy, search = fitted
    certification = search.certification
    assert certification is not None and certification.certified
    _, certifying = split_in_two(cache)
    assert certification.num_samples == certifying.num_samples == 600
    layers = exit_layers_at(score_trajectories(policy, certifying), policy.threshold)
    assert int(sample_losses(certifying, layers, "disagreement").sum()) == certification.losses
    assert layers.mean() < cache.num_layers, "a certified gate leaves early"


def test_a_cache_without_margins_does_not_calibrate_a_gate() -> None:
    cache = synthetic_cache(100)
    old = ExitCache(cache.exit_labels, cache.confidences, cache.entropies, cache.targets)
    assert calibrate_exit_gate(old, 0.05, 0.1, "disagreement") is None


@pytest.mark.parametrize("engine_path", ["host", "device"])
def test_both_layer_paths_serve_the_gate_as_its_reference(tiny_bundle_dir: Path, engine_path: str) -> None:
    """Full-depth exits from the engine (labels, confidences) plus the margins and entropies a binary exit implies
    give the reference's exit layer for each row; the engine serving the gate answers the same. The engine computes
    margins and entropies in float32, the reference here from the confidence in float64: the threshold sits in the
    gap between two rows' first-exit scores farthest from every score."""
    engine = loaded_engine(tiny_bundle_dir, engine_path=engine_path, skip_unprofitable_exits=False)
    num_layers = engine.bundle.num_layers  # type: ignore[union-attr]
    full = submit(engine, TEXTS, FullDepthPolicy(), return_exits=True)
    engine.run_until_idle()

    def observed(confidence: float, label: int) -> ExitObservation:
        entropy = -(confidence * math.log(confidence) + (1 - confidence) * math.log(1 - confidence))
        return ExitObservation(label, confidence, entropy, 2 * confidence - 1)

    traces = [[observed(e.confidence, e.label) for e in answer.exits] for answer in full.answers()]
    reference = example_gate_policy(num_layers, math.inf, seed=3)
    every_score = [score for trace in traces for score in _scores(reference, trace)]
    first = sorted(_scores(reference, trace)[0] for trace in traces)  # some rows leave at layer 1, some later
    midpoints = [(low + high) / 2 for low, high in itertools.pairwise(first)]
    threshold = max(midpoints, key=lambda t: min(abs(t - score) for score in every_score))
    assert min(abs(threshold - score) for score in every_score) > 1e-5
    policy = reference.with_threshold(threshold)
    served = submit(engine, TEXTS, policy)
    engine.run_until_idle()
    expected = [run_sample(policy, trace) for trace in traces]
    assert [a.exit_layer for a in served.answers()] == expected
    assert len(set(expected)) >= 2, f"rows should leave at different layers, got {expected}"
    engine.close()


def _scores(policy: ExitGatePolicy, trace: list[ExitObservation]) -> list[float]:
    state, scores = PolicyState(), []
    for observation in trace:
        state = policy.update(state, observation)
        scores.append(state.score)
    return scores
