"""Which group of rows the engine advances next (DESIGN 6: "pick one group, a measured rule").

Rows at one depth form a group; groups at different depths wait for their turn. The rules:
- "deepest": the group furthest along (ties: the larger). Rows that are nearly done finish first and leave room,
  and a group is never passed over for ever; new rows start once the deeper groups have finished or while they
  are being merged with.
- "shallowest": the group least far along (least attained service). New rows run at once and catch up with the
  rows ahead of them, merging as they meet; deep rows wait while new ones keep arriving.
- "oldest" (the default): the group holding the row that joined the engine first (first come, first served).
  Mostly the deepest group too, but a group that joined earlier and fell behind is not starved by one that ran on.
- "merging": a group one layer behind another goes first (it merges into it, so later layers run one fuller step
  instead of two small ones); otherwise "oldest". A group waits at most one step per group that catches up with
  it.
`bench/group_selection.py` measures them side by side (README, "Serving"). On the 2-core CPU, at 16 clients,
"shallowest" loses the tail (BEEM-A's p95 2.6-2.8x full depth's): every arrival makes new one-row steps and deep
rows wait. "oldest" and "deepest" traded places between runs (BEEM-A / full throughput 1.25x and 1.37x against
1.32x and 1.22x, then 1.41x against 1.36x): within the machine's noise; "oldest" is kept as the default.
"merging" gave BEEM-A no more throughput than "oldest" in the same run (1.32x against 1.41x).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

GROUP_SELECTION_RULES = ("deepest", "shallowest", "oldest", "merging")


class Group(Protocol):
    @property
    def depth(self) -> int: ...

    @property
    def num_rows(self) -> int: ...

    @property
    def oldest_at(self) -> float: ...

    @property
    def shadow_only(self) -> bool: ...


GroupT = TypeVar("GroupT", bound=Group)


def pick_group(groups: Sequence[GroupT], rule: str) -> GroupT:
    """The next group to advance. Groups of shadow rows only (the agreement monitor's) wait while any other group
    does: they never delay a request's rows."""
    if len(groups) > 1 and any(g.shadow_only for g in groups):
        groups = [g for g in groups if not g.shadow_only] or groups
    if rule == "deepest":
        return max(groups, key=lambda g: (g.depth, g.num_rows))
    if rule == "shallowest":
        return min(groups, key=lambda g: (g.depth, -g.num_rows))
    if rule == "oldest":
        return min(groups, key=lambda g: g.oldest_at)
    if rule == "merging":
        depths = {g.depth for g in groups}
        catching_up = [g for g in groups if g.depth + 1 in depths]
        return min(catching_up or groups, key=lambda g: g.oldest_at)
    raise ValueError(f"unknown group selection rule {rule!r}; expected one of {GROUP_SELECTION_RULES}")
