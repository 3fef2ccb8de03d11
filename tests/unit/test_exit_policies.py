"""Unit tests for beem/policies/exit_policies.py (DESIGN 3.1 and 3.2)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from beem.policies.exit_policies import (
    BeemPolicy,
    Decision,
    EntropyPolicy,
    ExitObservation,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    PolicyState,
    StaticPolicy,
    run_sample,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
FIG1_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 13))  # 0.1, 0.2, ..., 1.2 (paper Fig. 1, L = 12)
W4 = (0.25, 0.5, 0.75, 1.0)
VOTE_2 = {"vote_above_chance": True, "num_labels": 2}
VOTE_5 = {"vote_above_chance": True, "num_labels": 5}


def obs(label: int, confidence: float = 0.5, entropy: float = 0.5) -> ExitObservation:
    return ExitObservation(label, confidence, entropy)


def observations(
    labels: list[int], confidences: list[float] | None = None, entropies: list[float] | None = None
) -> list[ExitObservation]:
    confidences = confidences if confidences is not None else [0.5] * len(labels)
    entropies = entropies if entropies is not None else [0.5] * len(labels)
    return [obs(y, c, h) for y, c, h in zip(labels, confidences, entropies, strict=True)]


def scores_of(policy: ExitPolicy, sequence: list[ExitObservation]) -> list[float]:
    state = PolicyState()
    trajectory = []
    for observation in sequence:
        state = policy.update(state, observation)
        trajectory.append(state.score)
    return trajectory


# --- the paper's Figure 1 example (DESIGN 3.1) ---------------------------------------------------------------------

FIG1_SEQUENCE = observations([1] * 12, [0.65, 0.70, 0.92] + [0.95] * 9)


def test_figure1_beem_scores() -> None:
    policy = BeemPolicy("beem-c", FIG1_WEIGHTS, alpha=0.2)
    state = policy.update(PolicyState(), FIG1_SEQUENCE[0])
    assert state.score == pytest.approx(0.065)
    assert state.score < 0.2
    state = policy.update(state, FIG1_SEQUENCE[1])
    assert state.score == pytest.approx(0.205)
    assert state.score >= 0.2


@pytest.mark.parametrize(
    ("policy", "expected_layer"),
    [
        (BeemPolicy("beem-c", FIG1_WEIGHTS, alpha=0.2), 2),
        (MaxProbPolicy(0.9), 3),
        (PatiencePolicy(2), 3),
    ],
    ids=["beem", "max-prob-0.9", "patience-2"],
)
def test_figure1_exit_layers(policy: ExitPolicy, expected_layer: int) -> None:
    assert run_sample(policy, FIG1_SEQUENCE) == expected_layer


# --- BEEM score trajectories ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "confidences", "kwargs", "expected"),
    [
        # neighbours agree throughout: the score accumulates w_i * C_i
        ([0, 0, 0, 0], [0.8, 0.6, 0.4, 0.5], {}, [0.2, 0.5, 0.8, 1.3]),
        # disagreement at 2 and 4, paper reset: restart at w_i * C_i
        ([0, 1, 1, 0], [0.8, 0.6, 0.4, 0.5], {"reset": "restart"}, [0.2, 0.3, 0.6, 0.5]),
        # same, released-code reset: restart at 0
        ([0, 1, 1, 0], [0.8, 0.6, 0.4, 0.5], {"reset": "zero"}, [0.2, 0.0, 0.3, 0.0]),
        # first exit does not count, then agreement accumulates
        ([0, 0, 0, 0], [0.8, 0.6, 0.4, 0.5], {"count_first_exit": False}, [0.0, 0.3, 0.6, 1.1]),
        # first exit does not count, disagreement with zero reset
        ([0, 1, 1, 1], [0.8, 0.6, 0.4, 0.5], {"count_first_exit": False, "reset": "zero"}, [0.0, 0.0, 0.3, 0.8]),
        # a long agreeing run then a switch that starts a new run
        ([2, 2, 1, 1], [1.0, 1.0, 0.2, 0.9], {}, [0.25, 0.75, 0.15, 1.05]),
        # disagreement with the immediate predecessor only (label returns to an older value)
        ([3, 4, 3, 3], [0.4, 0.4, 0.4, 0.4], {}, [0.1, 0.2, 0.3, 0.7]),
        # the vote above chance, two labels: (C - 0.5) / 0.5 = 0.6, 0.2, 0.5, 0.0 before the weights
        ([0, 0, 0, 0], [0.8, 0.6, 0.75, 0.5], VOTE_2, [0.15, 0.25, 0.625, 0.625]),
        # five labels: (C - 0.2) / 0.8 = 0.5, 0.5, 1.0, 0.0
        ([0, 0, 0, 0], [0.6, 0.6, 1.0, 0.2], VOTE_5, [0.125, 0.375, 1.125, 1.125]),
    ],
    ids=[
        "agree",
        "disagree-restart",
        "disagree-zero",
        "no-first-agree",
        "no-first-zero",
        "switch-run",
        "a-b-a",
        "vote-2",
        "vote-5",
    ],
)
def test_beem_score_trajectory(
    labels: list[int], confidences: list[float], kwargs: dict[str, object], expected: list[float]
) -> None:
    policy = BeemPolicy("beem", W4, alpha=10.0, **kwargs)  # type: ignore[arg-type]
    state = PolicyState()
    for layer, (observation, score) in enumerate(zip(observations(labels, confidences), expected, strict=True)):
        state = policy.update(state, observation)
        assert state.score == pytest.approx(score), f"after exit {layer + 1}"
        assert state.layers_seen == layer + 1
        assert state.previous_label == observation.label


@pytest.mark.parametrize(
    ("alpha", "kwargs", "expected_layer"),
    [
        (0.2, {}, 1),  # S = 0.2, 0.3, 0.6, 0.5
        (0.21, {}, 2),
        (0.31, {}, 3),
        (0.61, {}, 4),  # never reached: last layer
        (0.25, {"reset": "zero"}, 3),  # S = 0.2, 0.0, 0.3, 0.0
        (0.31, {"reset": "zero"}, 4),
        (0.1, {"count_first_exit": False}, 2),  # S = 0.0, 0.3, 0.6, 0.5
        (0.45, {"count_first_exit": False}, 3),
    ],
)
def test_beem_exit_layer(alpha: float, kwargs: dict[str, object], expected_layer: int) -> None:
    policy = BeemPolicy("beem", W4, alpha=alpha, **kwargs)  # type: ignore[arg-type]
    sequence = observations([0, 1, 1, 0], [0.8, 0.6, 0.4, 0.5])
    assert run_sample(policy, sequence) == expected_layer


# --- every policy: exit rule and layer cap ---------------------------------------------------------------------------

STEP_CASES = [
    # (policy, sequence, last_layer, expected exit layer)
    (MaxProbPolicy(0.9), observations([0, 0, 0], [0.5, 0.95, 0.99]), None, 2),
    (MaxProbPolicy(0.7), observations([0, 1, 0], [0.5, 0.7, 0.99]), None, 2),  # equality exits
    (MaxProbPolicy(0.9), observations([0, 0, 0], [0.5, 0.6, 0.7]), None, 3),  # never met: last layer
    (MaxProbPolicy(0.9), observations([0, 0, 0], [0.5, 0.6, 0.95]), 2, 2),  # cap before the confident exit
    (EntropyPolicy(0.3), observations([0, 0, 0], entropies=[1.0, 0.3, 0.1]), None, 2),  # equality exits
    (EntropyPolicy(0.3), observations([0, 0, 0], entropies=[0.2, 0.1, 0.1]), None, 1),
    (EntropyPolicy(0.3), observations([0, 0, 0], entropies=[1.0, 0.5, 0.4]), None, 3),
    (EntropyPolicy(0.05), observations([0, 0, 0, 0], entropies=[1.0, 0.5, 0.4, 0.3]), 2, 2),
    (PatiencePolicy(0), observations([0, 1, 2]), None, 1),
    (PatiencePolicy(1), observations([0, 0, 1]), None, 2),
    (PatiencePolicy(1), observations([0, 1, 1]), None, 3),
    (PatiencePolicy(2), observations([0, 0, 0, 1]), None, 3),
    (PatiencePolicy(2), observations([0, 0, 1, 1, 1]), None, 5),  # counter 0,1,0,1,2: reset on disagreement
    (PatiencePolicy(2), observations([0, 1, 0, 1, 0]), None, 5),  # never agrees: last layer
    (PatiencePolicy(3), observations([0, 0, 0, 0, 0]), 3, 3),  # cap
    (StaticPolicy(1), observations([0, 1, 2]), None, 1),
    (StaticPolicy(2), observations([0, 1, 2]), None, 2),
    (StaticPolicy(3), observations([0, 1, 2, 3]), None, 3),
    (StaticPolicy(5), observations([0, 1, 2]), None, 3),  # deeper than the model: last layer
    (StaticPolicy(3), observations([0, 1, 2, 3]), 2, 2),
    (FullDepthPolicy(), observations([0, 0, 0, 0], [1.0] * 4, [0.0] * 4), None, 4),
    (FullDepthPolicy(), observations([0, 0, 0, 0], [1.0] * 4, [0.0] * 4), 2, 2),
    (BeemPolicy("beem", W4, 0.5), observations([0, 0, 0, 0], [0.9, 0.9, 0.9, 0.9]), None, 2),  # 0.225, 0.675
    (BeemPolicy("beem", W4, 5.0), observations([0, 0, 0, 0], [0.9, 0.9, 0.9, 0.9]), None, 4),
    (BeemPolicy("beem", W4, 5.0), observations([0, 0, 0, 0], [0.9, 0.9, 0.9, 0.9]), 3, 3),
    (BeemPolicy("beem", W4, 0.5), observations([0, 0, 0, 0], [0.9, 0.9, 0.9, 0.9]), 10, 2),  # cap beyond L
]


@pytest.mark.parametrize(("policy", "sequence", "last_layer", "expected"), STEP_CASES)
def test_run_sample_exit_layer(
    policy: ExitPolicy, sequence: list[ExitObservation], last_layer: int | None, expected: int
) -> None:
    assert run_sample(policy, sequence, last_layer) == expected


@pytest.mark.parametrize(
    ("policy", "observation", "expected_exit"),
    [
        (MaxProbPolicy(0.8), obs(0, confidence=0.8), True),
        (MaxProbPolicy(0.8), obs(0, confidence=0.79), False),
        (EntropyPolicy(0.4), obs(0, entropy=0.4), True),
        (EntropyPolicy(0.4), obs(0, entropy=0.41), False),
        (StaticPolicy(1), obs(0), True),
        (StaticPolicy(2), obs(0), False),
        (PatiencePolicy(0), obs(0), True),
        (PatiencePolicy(1), obs(0), False),
        (FullDepthPolicy(), obs(0, 1.0, 0.0), False),
        (BeemPolicy("beem", W4, 0.25), obs(0, confidence=1.0), True),
        (BeemPolicy("beem", W4, 0.25), obs(0, confidence=0.99), False),
    ],
)
def test_step_first_exit_threshold(policy: ExitPolicy, observation: ExitObservation, expected_exit: bool) -> None:
    decision = policy.step(PolicyState(), observation, last_layer=4)
    assert isinstance(decision, Decision)
    assert decision.exit_now is expected_exit
    assert decision.state.layers_seen == 1
    assert decision.state.previous_label == observation.label


@pytest.mark.parametrize(
    "policy",
    [
        MaxProbPolicy(0.99),
        EntropyPolicy(0.0),
        PatiencePolicy(5),
        StaticPolicy(10),
        FullDepthPolicy(),
        BeemPolicy("beem", W4, 100.0),
    ],
    ids=lambda p: p.name,
)
def test_step_always_exits_at_last_layer(policy: ExitPolicy) -> None:
    low = obs(0, confidence=0.1, entropy=2.0)
    first = policy.step(PolicyState(), low, last_layer=2)
    assert first.exit_now is False
    second = policy.step(first.state, obs(1, confidence=0.1, entropy=2.0), last_layer=2)
    assert second.exit_now is True
    assert second.state.layers_seen == 2
    # a one-layer cap exits at once
    assert policy.step(PolicyState(), low, last_layer=1).exit_now is True


@pytest.mark.parametrize("length", [1, 3, 6, 12])
def test_full_depth_never_exits_early(length: int) -> None:
    perfect = observations([7] * length, [1.0] * length, [0.0] * length)
    assert run_sample(FullDepthPolicy(), perfect) == length
    state = PolicyState()
    for layer in range(1, length):
        decision = FullDepthPolicy().step(state, perfect[layer - 1], last_layer=length)
        assert decision.exit_now is False
        state = decision.state
    assert FullDepthPolicy().threshold == math.inf


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_static_exits_exactly_at_k(k: int) -> None:
    sequence = observations([0, 0, 0, 0, 0], [1.0] * 5, [0.0] * 5)
    assert run_sample(StaticPolicy(k), sequence) == k
    assert scores_of(StaticPolicy(k), sequence) == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("labels", "expected_counter"),
    [
        ([0, 0, 0, 0], [0, 1, 2, 3]),
        ([0, 1, 1, 1], [0, 0, 1, 2]),
        ([0, 0, 1, 1], [0, 1, 0, 1]),
        ([0, 0, 0, 5], [0, 1, 2, 0]),
        ([0, 1, 0, 1], [0, 0, 0, 0]),
    ],
)
def test_patience_counter(labels: list[int], expected_counter: list[int]) -> None:
    assert scores_of(PatiencePolicy(10), observations(labels)) == [float(c) for c in expected_counter]


@pytest.mark.parametrize(
    ("entropies", "max_entropy", "expected"),
    [
        ([0.9, 0.6, 0.2, 0.1], 0.25, 3),
        ([0.9, 0.6, 0.2, 0.1], 0.6, 2),
        ([0.9, 0.6, 0.2, 0.1], 0.05, 4),
        ([0.0, 0.6, 0.2, 0.1], 0.0, 1),
    ],
)
def test_entropy_exits_at_or_below_max_entropy(entropies: list[float], max_entropy: float, expected: int) -> None:
    sequence = observations([0] * len(entropies), entropies=entropies)
    assert run_sample(EntropyPolicy(max_entropy), sequence) == expected


def test_run_sample_last_layer_beyond_observations() -> None:
    assert run_sample(PatiencePolicy(10), observations([0, 1, 2]), last_layer=8) == 3
