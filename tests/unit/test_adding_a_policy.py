"""Adding an exit policy is one table entry plus its rule: this test adds one of its own, here and nowhere else,
and it validates, decides in array form as its reference does, bounds its earliest exit, and is served by both
layer paths of the classification engine.

The policy, "agreeing confidence": leave once an exit agrees with the one before it and its max probability
reaches the threshold. It keeps the previous label (so the fold computes agreement for it) and reads labels and
confidences.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from beem.policies.array_policies import (
    SCORE_RULES,
    ExitObservations,
    FoldStep,
    RowPolicies,
    RowStates,
    decide,
)
from beem.policies.exit_policies import (
    ExitObservation,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    PolicyState,
    run_sample,
)
from beem.policies.policy_parameters import PolicyParameter, PolicyParameterError
from beem.policies.policy_table import (
    POLICY_TABLE,
    RULE_OF_CLASS,
    PolicyDefinition,
    build_policy,
    earliest_exit_layer,
    policy_added,
    threshold_ceiling,
)
from tests.engine.engine_driver import TEXTS, loaded_engine, submit


@dataclass(frozen=True)
class AgreeingConfidencePolicy(ExitPolicy):
    """The reference: the score is the exit's confidence when it agrees with the previous exit, else 0."""

    min_confidence: float
    name: str = "agreeing-confidence"

    @property
    def threshold(self) -> float:
        return self.min_confidence

    def next_score(self, state: PolicyState, observation: ExitObservation) -> float:
        agrees = state.previous_label is not None and observation.label == state.previous_label
        return observation.confidence if agrees else 0.0

    def with_threshold(self, threshold: float) -> AgreeingConfidencePolicy:
        return replace(self, min_confidence=threshold)

    def params(self) -> dict[str, object]:
        return {"threshold": self.min_confidence}


def agreeing_confidence_score(step: FoldStep) -> torch.Tensor:
    """Its array rule: (R,) float64."""
    assert step.agree is not None, "the table says this rule keeps previous_label, so the fold computes agreement"
    return torch.where(step.agree, step.observed.confidences, 0.0)


RULE = max(SCORE_RULES) + 1
DEFINITION = PolicyDefinition(
    "agreeing-confidence", "exit once an exit agrees with the previous one at this max probability or above",
    AgreeingConfidencePolicy, RULE,
    (PolicyParameter("threshold", "number", "minimum max probability", low=0.0, high=1.0, never=math.inf,
                     per_request=True),),
    lambda values: AgreeingConfidencePolicy(float(values["threshold"])),  # type: ignore[arg-type]
    lambda start: AgreeingConfidencePolicy(math.inf),
    earliest_exit=lambda policy, last_layer: min(2, last_layer) if policy.threshold <= 1.0 else last_layer,
    keeps=frozenset({"previous_label"}), reads=frozenset({"label", "confidence"}),
    threshold_ceiling=lambda policy: 1.0,
)  # fmt: skip


@pytest.fixture
def added(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(SCORE_RULES, RULE, agreeing_confidence_score)
    with policy_added(DEFINITION):
        yield


def test_it_is_built_and_validated_from_its_entry(added: None) -> None:
    assert build_policy("agreeing-confidence", {"threshold": 0.8}, 4) == AgreeingConfidencePolicy(0.8)
    assert build_policy("agreeing-confidence", {"threshold": "inf"}, 4) == AgreeingConfidencePolicy(math.inf)
    with pytest.raises(PolicyParameterError, match=r"must be in \[0, 1\]"):
        build_policy("agreeing-confidence", {"threshold": 1.5}, 4)
    assert RULE_OF_CLASS[AgreeingConfidencePolicy] == RULE
    assert threshold_ceiling(AgreeingConfidencePolicy(0.8)) == 1.0


def test_it_leaves_the_table_as_it_was_afterwards(added: None) -> None:
    assert "agreeing-confidence" in POLICY_TABLE


def test_the_table_is_back_to_the_built_in_entries() -> None:
    assert "agreeing-confidence" not in POLICY_TABLE and AgreeingConfidencePolicy not in RULE_OF_CLASS


def _random_rows(rng: random.Random, count: int, num_layers: int) -> list[list[ExitObservation]]:
    return [[ExitObservation(rng.randrange(2), rng.choice([0.5, 0.7, 0.9, rng.random()]), rng.random())
             for _ in range(num_layers)] for _ in range(count)]  # fmt: skip


@pytest.mark.parametrize("told_the_rules", [True, False])
def test_the_array_form_decides_as_its_reference_beside_other_policies(added: None, told_the_rules: bool) -> None:
    """Seeded random groups mixing it with max-prob, patience and full depth in one call, rows leaving between
    layers as in the engine; its rows never leave before its earliest exit."""
    rng = random.Random(0)
    num_layers = 5
    for _ in range(60):
        rows = _random_rows(rng, 8, num_layers)
        policies: list[ExitPolicy] = [
            rng.choice([AgreeingConfidencePolicy(rng.choice([0.6, 0.8, 1.0, math.inf])), MaxProbPolicy(0.85),
                        PatiencePolicy(2), FullDepthPolicy()])
            for _ in rows
        ]  # fmt: skip
        last_layers = [rng.randint(1, num_layers) for _ in rows]
        rules = frozenset(RULE_OF_CLASS[type(p)] for p in policies) if told_the_rules else None
        array_policies = RowPolicies.of(policies, last_layers, num_layers, "cpu")
        states, active = RowStates.fresh(len(rows)), list(range(len(rows)))
        expected = [run_sample(p, row, last) for p, row, last in zip(policies, rows, last_layers, strict=True)]
        for layer in range(num_layers):
            observed = [rows[r][layer] for r in active]
            column = ExitObservations(torch.tensor([o.label for o in observed]),
                                      torch.tensor([o.confidence for o in observed], dtype=torch.float64),
                                      torch.tensor([o.entropy for o in observed], dtype=torch.float64),
                                      torch.zeros(len(observed), dtype=torch.float64))  # fmt: skip
            states, exits = decide(states, column, array_policies, rules)
            for slot, row in enumerate(active):
                assert bool(exits[slot]) == (expected[row] == layer + 1), (policies[row], layer)
                assert layer + 1 >= earliest_exit_layer(policies[row], last_layers[row]) or not bool(exits[slot])
            keep = torch.tensor([s for s in range(len(active)) if not bool(exits[s])], dtype=torch.int64)
            states, array_policies = states.take(keep), array_policies.take(keep)
            active = [active[s] for s in keep.tolist()]
        assert not active


@pytest.mark.parametrize("engine_path", ["host", "device"])
def test_both_layer_paths_serve_it_as_its_reference(added: None, tiny_bundle_dir: Path, engine_path: str) -> None:
    """The rows' exits at full depth (from the engine itself) walked by the reference give each row's exit layer;
    the engine serving the new policy answers the same, with the exit's label."""
    engine = loaded_engine(tiny_bundle_dir, engine_path=engine_path, skip_unprofitable_exits=False)
    full = submit(engine, TEXTS, FullDepthPolicy(), return_exits=True)
    engine.run_until_idle()
    traces = [[ExitObservation(e.label, e.confidence, 0.0) for e in answer.exits] for answer in full.answers()]
    confidences = sorted({o.confidence for trace in traces for o in trace[1:]})
    threshold = (confidences[len(confidences) // 2 - 1] + confidences[len(confidences) // 2]) / 2  # between two
    policy = AgreeingConfidencePolicy(threshold)
    served = submit(engine, TEXTS, policy)
    engine.run_until_idle()
    expected = [run_sample(policy, trace) for trace in traces]
    assert [a.exit_layer for a in served.answers()] == expected
    exit_labels = [trace[layer - 1].label for trace, layer in zip(traces, expected, strict=True)]
    assert [a.label for a in served.answers()] == exit_labels
    assert len(set(expected)) >= 2, f"the test should see rows leave at different layers, got {expected}"
    engine.close()
