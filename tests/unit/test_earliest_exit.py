"""The first layer a policy could let a row leave (beem/policies/earliest_exit.py, named by each policy's entry of
the table): table-driven, and checked against the per-sample reference on random exits (no row ever leaves before
it)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beem.policies.exit_policies import (
    BeemPolicy,
    EntropyPolicy,
    ExitObservation,
    ExitPolicy,
    FullDepthPolicy,
    MaxProbPolicy,
    PatiencePolicy,
    StaticPolicy,
    run_sample,
)
from beem.policies.policy_table import earliest_exit_layer

WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@pytest.mark.parametrize(
    ("policy", "last_layer", "layer"),
    [
        (BeemPolicy("b", WEIGHTS, 0.1), 6, 1),
        (BeemPolicy("b", WEIGHTS, 0.3), 6, 2),  # 0.1 + 0.2 reaches 0.3 (within float slack)
        (BeemPolicy("b", WEIGHTS, 0.61), 6, 4),  # 0.1 + 0.2 + 0.3 = 0.6 < 0.61 <= 1.0
        (BeemPolicy("b", WEIGHTS, 0.61, count_first_exit=False), 6, 4),  # 0.2 + 0.3 + 0.4 = 0.9
        (BeemPolicy("b", WEIGHTS, 0.95, count_first_exit=False), 6, 5),
        (BeemPolicy("b", WEIGHTS, 50.0), 6, 6),  # never reached: the last layer
        (BeemPolicy("b", WEIGHTS, 50.0), 3, 3),
        (MaxProbPolicy(0.9), 6, 1),
        (MaxProbPolicy(math.inf), 6, 6),
        (EntropyPolicy(0.3), 6, 1),
        (EntropyPolicy(-1.0), 4, 4),  # a negative entropy is never reached
        (PatiencePolicy(2), 6, 3),
        (PatiencePolicy(math.inf), 6, 6),
        (StaticPolicy(4), 6, 4),
        (StaticPolicy(4), 2, 2),
        (FullDepthPolicy(), 6, 6),
    ],
)
def test_earliest_exit_layer(policy: ExitPolicy, last_layer: int, layer: int) -> None:
    assert earliest_exit_layer(policy, last_layer) == layer


observations = st.lists(
    st.builds(ExitObservation, label=st.integers(0, 1), confidence=st.floats(0.5, 1.0), entropy=st.floats(0.0, 0.7)),
    min_size=6, max_size=6,
)  # fmt: skip
policies = st.one_of(
    st.builds(BeemPolicy, name=st.just("b"), weights=st.just(WEIGHTS), alpha=st.floats(0.0, 2.5),
              count_first_exit=st.booleans()),
    st.builds(MaxProbPolicy, max_prob=st.floats(0.5, 1.0)),
    st.builds(EntropyPolicy, max_entropy=st.floats(0.0, 0.7)),
    st.builds(PatiencePolicy, patience=st.integers(0, 5).map(float)),
    st.builds(StaticPolicy, layer=st.integers(1, 6).map(float)),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(policy=policies, exits=observations, last_layer=st.integers(1, 6))
def test_no_row_leaves_before_its_earliest_exit(
    policy: ExitPolicy, exits: list[ExitObservation], last_layer: int
) -> None:
    assert run_sample(policy, exits, last_layer) >= earliest_exit_layer(policy, last_layer)
