"""Whether early exit pays for a group on the GPU path (service/engine/exit_savings.py): table-driven."""

from __future__ import annotations

import pytest

from beem.policies.exit_policies import ExitPolicy, MaxProbPolicy
from service.engine.classify.device.exit_savings import ExitSavings
from service.engine.classify.device.step_buckets import StepBuckets

POLICY = MaxProbPolicy(0.9)
BUCKETS = StepBuckets(rows=(1, 2, 4, 8), tokens=(16,))


def _savings(exit_layers: list[int], layer_cost: float, head_cost: float, flat: bool) -> ExitSavings:
    """Rows of POLICY that left at these layers; steps cost `layer_cost` (+ `head_cost` with the exit), the same
    for every row bucket when `flat` (a launch-bound GPU), else in proportion to the rows."""
    savings = ExitSavings(num_layers=4, min_rows=len(exit_layers))
    for layer in exit_layers:
        savings.record(POLICY, layer)
    for rows in BUCKETS.rows:
        scale = 1.0 if flat else rows / 8
        savings.costs[("layer_only", rows, 16)] = layer_cost * scale
        savings.costs[("with_exit", rows, 16)] = (layer_cost + head_cost) * scale
    return savings


def _pays(savings: ExitSavings, rows: int, policies: list[ExitPolicy] | None = None) -> bool:
    shape = BUCKETS.shape(rows, 16)
    return savings.exits_pay(policies or [POLICY] * rows, shape.rows, 16, lambda n: BUCKETS.shape(n, 16).rows)


@pytest.mark.parametrize(
    ("exit_layers", "head_cost", "flat", "rows", "pays"),
    [
        ([1] * 8, 0.1, True, 1, True),  # everyone leaves at once: 1.1 against 3 + 1.1
        ([4] * 8, 0.1, True, 1, False),  # nobody leaves early: the heads are pure cost
        ([2] * 8, 0.1, True, 1, True),  # 2 x 1.1 against 4.1
        ([2] * 8, 2.5, True, 1, False),  # heads dearer than the layers they save: 2 x 3.5 against 3 + 3.5
        ([1, 1, 1, 1, 4, 4, 4, 4], 0.1, True, 8, False),  # launch-bound at 8 rows: the late half keeps the group
        ([1, 1, 1, 1, 4, 4, 4, 4], 0.1, False, 8, True),  # compute-bound: the halved bucket pays
    ],
)
def test_exits_pay_when_the_expected_steps_cost_less_than_full_depth(
    exit_layers: list[int], head_cost: float, flat: bool, rows: int, pays: bool
) -> None:
    assert _pays(_savings(exit_layers, 1.0, head_cost, flat), rows) is pays


def test_until_enough_rows_were_seen_or_without_costs_exits_are_assumed_to_pay() -> None:
    savings = _savings([4] * 8, 1.0, 0.1, flat=True)
    savings.min_rows = 9
    assert _pays(savings, 1)
    savings.min_rows = 8
    assert not _pays(savings, 1)
    assert _pays(savings, 1, [MaxProbPolicy(0.5)])  # a policy never seen
    savings.costs.clear()
    assert _pays(savings, 1)


def test_the_share_still_in_flight_after_each_layer() -> None:
    savings = _savings([1, 2, 2, 4], 1.0, 0.1, flat=True)
    assert savings.in_flight_after(POLICY) == [1.0, 0.75, 0.25, 0.25, 0.0]
