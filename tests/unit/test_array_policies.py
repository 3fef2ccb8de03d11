"""The array form (beem/policies/array_policies.py) equals the per-sample reference, decision for decision.

Hypothesis draws random exit caches (labels with few classes, so neighbours agree often; confidences and
entropies) and a random policy per row from the whole table, thresholds often set to a score the row actually
reaches (the `>=` boundary), and a random depth limit per row. Rows of different policies share every call, and
exited rows leave the group between layers as they do in the engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from beem.calibration.exit_cache import ExitCache
from beem.calibration.threshold_search import exit_layers_at, score_trajectories
from beem.policies.array_policies import (
    ExitObservations,
    RowPolicies,
    RowStates,
    decide,
    summarize_exits,
)
from beem.policies.exit_policies import (
    BLIND_OBSERVATION,
    BeemPolicy,
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
from beem.policies.policy_table import POLICY_TABLE, RULE_OF_CLASS
from tests.policy_examples import example_gate_policy

CONFIDENCES = st.one_of(st.sampled_from([0.5, 0.65, 0.7, 0.9, 1.0]), st.floats(0.0, 1.0))
ENTROPIES = st.one_of(st.sampled_from([0.0, 0.25, 0.5]), st.floats(0.0, 2.0))
MARGINS = st.one_of(st.sampled_from([0.0, 0.3, 1.0]), st.floats(0.0, 1.0))
# The exit gate's matrix products sum in another order than its reference: its scores agree within this, and its
# thresholds are drawn away from the scores it reaches, so a decision never rests on the last bit.
GATE_TOLERANCE = 1e-9


@st.composite
def observation_rows(draw: st.DrawFn, num_layers: int, num_labels: int) -> list[ExitObservation]:
    return [
        ExitObservation(draw(st.integers(0, num_labels - 1)), draw(CONFIDENCES), draw(ENTROPIES), draw(MARGINS))
        for _ in range(num_layers)
    ]


def reference_scores(policy: ExitPolicy, row: list[ExitObservation]) -> list[float]:
    state, scores = PolicyState(), []
    for observation in row:
        state = policy.update(state, observation)
        scores.append(state.score)
    return scores


@st.composite
def row_policy(draw: st.DrawFn, num_layers: int, row: list[ExitObservation], kind: str | None = None) -> ExitPolicy:
    """A policy of the table (any, or of `kind`); the threshold is often one of the scores this row reaches."""
    kind = kind or draw(st.sampled_from(sorted(POLICY_TABLE)))
    policy: ExitPolicy
    if kind in ("beem-a", "beem-c"):
        weights = tuple(draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.8, 1.0]) | st.floats(0, 2),
                                      min_size=num_layers, max_size=num_layers)))  # fmt: skip
        vote = draw(st.booleans())  # the vote above chance, for a model of 2-5 labels
        policy = BeemPolicy(kind, weights, 0.0, draw(st.booleans()), draw(st.sampled_from(["restart", "zero"])),
                            vote, draw(st.integers(2, 5)) if vote else 0)  # fmt: skip
    elif kind == "max-prob":
        policy = MaxProbPolicy(0.0)
    elif kind == "entropy":
        policy = EntropyPolicy(0.0)
    elif kind == "patience":
        policy = PatiencePolicy(0.0)
    elif kind == "static":
        return StaticPolicy(draw(st.integers(1, num_layers)))
    elif kind == "gate":
        return example_gate_policy(num_layers, draw(st.floats(-5, 5) | st.just(math.inf)), draw(st.integers(0, 9)))
    else:
        return FullDepthPolicy()
    reached = reference_scores(policy, row)
    threshold = draw(st.one_of(st.sampled_from(reached), st.floats(-3, 3), st.just(math.inf)))
    return policy.with_threshold(threshold)


@st.composite
def groups(draw: st.DrawFn) -> tuple[int, list[list[ExitObservation]], list[ExitPolicy], list[int]]:
    num_layers = draw(st.integers(1, 7))
    num_labels = draw(st.integers(1, 4))
    rows = draw(st.lists(observation_rows(num_layers, num_labels), min_size=1, max_size=10))
    kind = draw(st.none() | st.sampled_from(sorted(POLICY_TABLE)))  # None: every row its own kind
    policies = [draw(row_policy(num_layers, row, kind)) for row in rows]
    last_layers = [draw(st.integers(1, num_layers)) for _ in rows]
    return num_layers, rows, policies, last_layers


def _column(rows: list[list[ExitObservation]], active: list[int], layer: int) -> ExitObservations:
    observed = [rows[r][layer] for r in active]
    return ExitObservations(
        torch.tensor([o.label for o in observed], dtype=torch.int64),
        torch.tensor([o.confidence for o in observed], dtype=torch.float64),
        torch.tensor([o.entropy for o in observed], dtype=torch.float64),
        torch.tensor([o.margin for o in observed], dtype=torch.float64),
    )


def _same_score(array_score: float, policy: ExitPolicy, reference_score: float) -> bool:
    if policy.name == "gate":
        return array_score == pytest.approx(reference_score, rel=GATE_TOLERANCE, abs=GATE_TOLERANCE)
    return array_score == reference_score


@settings(max_examples=300, deadline=None)
@given(groups(), st.booleans())
def test_array_form_equals_the_reference_decision_for_decision(
    group: tuple[int, list[list[ExitObservation]], list[ExitPolicy], list[int]], told_the_rules: bool
) -> None:
    """With every rule computed, and with only the rules present (as the engine tells it per group)."""
    num_layers, rows, policies, last_layers = group
    rules = frozenset(RULE_OF_CLASS[type(p)] for p in policies) if told_the_rules else None
    array_policies = RowPolicies.of(policies, last_layers, num_layers, "cpu")
    array_states = RowStates.fresh(len(rows))
    reference = [PolicyState() for _ in rows]
    active = list(range(len(rows)))  # original index of each row still in the group
    for layer in range(num_layers):
        if not active:
            break
        array_states, exits = decide(array_states, _column(rows, active, layer), array_policies, rules)
        survivors = []
        for slot, row in enumerate(active):
            decision = policies[row].step(reference[row], rows[row][layer], last_layers[row])
            reference[row] = decision.state
            assert bool(exits[slot]) == decision.exit_now, (policies[row], layer)
            assert _same_score(float(array_states.score[slot]), policies[row], decision.state.score)
            assert int(array_states.previous_label[slot]) == decision.state.previous_label
            assert int(array_states.layers_seen[slot]) == decision.state.layers_seen
            if not decision.exit_now:
                survivors.append(slot)
        keep = torch.tensor(survivors, dtype=torch.int64)
        array_states, array_policies = array_states.take(keep), array_policies.take(keep)
        active = [active[slot] for slot in survivors]
    assert not active, "every row leaves by its last layer"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.lists(st.sampled_from(["static", "full"]), min_size=1, max_size=6), st.data())
def test_states_after_skipped_heads_equal_the_blind_reference(
    num_layers: int, kinds: list[str], data: st.DataObject
) -> None:
    """Depth-only rows whose exit heads were skipped: the states the engine builds when they next meet an exit
    head, and the exits decided there, equal the reference fed `BLIND_OBSERVATION` at every skipped layer."""
    policies: list[ExitPolicy] = [
        StaticPolicy(data.draw(st.integers(1, num_layers))) if kind == "static" else FullDepthPolicy() for kind in kinds
    ]
    array_policies = RowPolicies.of(policies, [num_layers] * len(policies), num_layers, "cpu")
    reference = [PolicyState() for _ in policies]
    for layers_seen in range(num_layers):
        states = RowStates.after_skipped_heads(len(policies), layers_seen)
        zeros = torch.zeros(len(policies), dtype=torch.float64)
        _, exits = decide(states, ExitObservations(zeros.long(), zeros, zeros, zeros), array_policies)
        for row, policy in enumerate(policies):
            assert float(states.score[row]) == (reference[row].score if layers_seen else 0.0)
            assert int(states.layers_seen[row]) == reference[row].layers_seen
            decision = policy.step(reference[row], BLIND_OBSERVATION, num_layers)
            assert bool(exits[row]) == decision.exit_now
            reference[row] = decision.state


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 30), st.data())
def test_calibration_scan_equals_the_reference_on_a_cache(
    num_layers: int, num_labels: int, num_samples: int, data: st.DataObject
) -> None:
    """score_trajectories and exit_layers_at (the array form) against `update` and `run_sample` per sample."""
    rows = [data.draw(observation_rows(num_layers, num_labels)) for _ in range(num_samples)]
    cache = ExitCache(
        np.array([[o.label for o in row] for row in rows], dtype=np.int64),
        np.array([[o.confidence for o in row] for row in rows], dtype=np.float64),
        np.array([[o.entropy for o in row] for row in rows], dtype=np.float64),
        np.zeros(num_samples, dtype=np.int64),
        np.array([[o.margin for o in row] for row in rows], dtype=np.float64),
    )
    policy = data.draw(row_policy(num_layers, rows[0]))
    scores = score_trajectories(policy, cache)
    for row, reference in zip(scores.tolist(), (reference_scores(policy, row) for row in rows), strict=True):
        assert all(_same_score(a, policy, b) for a, b in zip(row, reference, strict=True))
    assert exit_layers_at(scores, policy.threshold).tolist() == [run_sample(policy, row) for row in rows]


def test_observations_from_logits_are_float32_widened() -> None:
    """Serving decides on the numbers the calibration cache stores: float32 softmax values, widened."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]], dtype=torch.float16)
    observed = ExitObservations.from_logits(logits)
    labels, confidences, entropies = summarize_exits(logits)
    assert observed.labels.tolist() == [0, 2] == labels.tolist()
    assert observed.confidences.dtype == torch.float64
    assert observed.confidences.tolist() == confidences.double().tolist()
    assert observed.entropies.tolist() == entropies.double().tolist()
    probabilities = torch.softmax(logits.float(), -1)
    assert observed.confidences.tolist() == pytest.approx(probabilities.max(-1).values.tolist())


def test_rows_of_every_policy_share_one_call() -> None:
    """Worked example: the paper's Figure 1 setting next to the baselines, one group, one call per layer."""
    weights = tuple(round(0.1 * i, 1) for i in range(1, 4))  # 0.1, 0.2, 0.3
    policies: list[ExitPolicy] = [BeemPolicy("beem-c", weights, 0.2), MaxProbPolicy(0.9), PatiencePolicy(1),
                                  StaticPolicy(2), FullDepthPolicy()]  # fmt: skip
    group = RowPolicies.of(policies, [3] * 5, 3, "cpu")
    states = RowStates.fresh(5)
    exit_layers = [0] * 5
    for layer, confidence in enumerate((0.65, 0.70, 0.92)):
        zeros = torch.zeros(5, dtype=torch.float64)
        observed = ExitObservations(torch.ones(5, dtype=torch.int64), torch.full((5,), confidence, dtype=torch.float64),
                                    zeros, zeros)  # fmt: skip
        states, exits = decide(states, observed, group)
        for row in range(5):
            if exits[row] and not exit_layers[row]:
                exit_layers[row] = layer + 1
    # BEEM: 0.065, then 0.065 + 0.14 = 0.205 >= 0.2; max-prob waits for 0.92; patience-1 after one agreement.
    assert exit_layers == [2, 3, 2, 2, 3]
