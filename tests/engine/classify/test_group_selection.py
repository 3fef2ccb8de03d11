"""Which group the engine advances next: each rule on the same groups (depth, rows, when its oldest row joined)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import pytest

from service.engine.classify.group_selection import GROUP_SELECTION_RULES, pick_group
from service.settings import ServerSettings


@dataclass(frozen=True)
class FakeGroup:
    depth: int
    num_rows: int
    oldest_at: float
    shadow_only: bool = False


SPREAD = [FakeGroup(4, 2, 1.0), FakeGroup(1, 5, 3.0), FakeGroup(0, 1, 4.0), FakeGroup(2, 3, 0.5)]
NO_NEIGHBOURS = [FakeGroup(5, 2, 2.0), FakeGroup(2, 6, 1.0), FakeGroup(0, 1, 3.0)]


@pytest.mark.parametrize(
    ("rule", "groups", "picked"),
    [
        ("deepest", SPREAD, 0),
        ("deepest", [FakeGroup(3, 1, 0.0), FakeGroup(3, 4, 1.0)], 1),  # ties: the larger
        ("shallowest", SPREAD, 2),
        ("oldest", SPREAD, 3),  # it fell behind the group at depth 4, and goes first
        ("merging", SPREAD, 1),  # depth 1 catches up with depth 2, and is older than depth 0 (catching up with 1)
        ("merging", [FakeGroup(3, 2, 0.0), FakeGroup(2, 1, 9.0)], 1),  # one layer behind: it goes first
        ("merging", NO_NEIGHBOURS, 1),  # nobody one layer behind another: the oldest
        ("oldest", NO_NEIGHBOURS, 1),
    ],
)
def test_each_rule_picks(rule: str, groups: list[FakeGroup], picked: int) -> None:
    assert pick_group(groups, rule) is groups[picked]


@pytest.mark.parametrize("rule", GROUP_SELECTION_RULES)
def test_shadow_only_groups_wait_while_another_group_does(rule: str) -> None:
    shadow = FakeGroup(5, 8, 0.0, shadow_only=True)  # deepest, largest and oldest: every rule would pick it
    request = FakeGroup(0, 1, 9.0)
    assert pick_group([shadow, request], rule) is request
    assert pick_group([shadow], rule) is shadow  # alone, it runs


def test_every_rule_is_tabled_and_an_unknown_one_is_refused() -> None:
    assert set(GROUP_SELECTION_RULES) == {"deepest", "shallowest", "oldest", "merging"}
    # the setting accepts exactly the rules pick_group knows
    assert set(get_args(ServerSettings.model_fields["group_selection"].annotation)) == set(GROUP_SELECTION_RULES)
    with pytest.raises(ValueError, match="unknown group selection rule"):
        pick_group(SPREAD, "random")
