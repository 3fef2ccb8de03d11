"""Which group of rows the engine advances next (DESIGN 6: "pick one group, a measured rule").

Rows at one depth form a group; groups at different depths wait for their turn. The rules:
- "deepest": the group furthest along (ties: the larger). Rows that are nearly done finish first and leave room,
  and a group is never passed over for ever; new rows start once the deeper groups have finished or while they
  are being merged with.
- "shallowest": the group least far along (least attained service). New rows run at once and catch up with the
  rows ahead of them, merging as they meet; deep rows wait while new ones keep arriving.
- "oldest" (the default): the group holding the row that joined the engine first (first come, first served).
  Mostly the deepest group too, but a group that joined earlier and fell behind is not starved by one that ran on.
`bench/group_selection.py` measures them side by side (README, "Serving"). On the 2-core CPU, at 16 clients,
"shallowest" lost most of early exit's gain (BEEM-A 1.13x full depth's throughput, p95 2.4x), since every
arrival makes new one-row steps and deep rows wait; "oldest" and "deepest" kept 1.40x and 1.33x, p95 0.64x and
0.73x, and "oldest" answered an open loop at 80/s with the lower p50 (80 against 137 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

GROUP_SELECTION_RULES = ("deepest", "shallowest", "oldest")


class Group(Protocol):
    @property
    def depth(self) -> int: ...

    @property
    def num_rows(self) -> int: ...

    @property
    def oldest_at(self) -> float: ...


GroupT = TypeVar("GroupT", bound=Group)


def pick_group(groups: Sequence[GroupT], rule: str) -> GroupT:
    if rule == "deepest":
        return max(groups, key=lambda g: (g.depth, g.num_rows))
    if rule == "shallowest":
        return min(groups, key=lambda g: (g.depth, -g.num_rows))
    if rule == "oldest":
        return min(groups, key=lambda g: g.oldest_at)
    raise ValueError(f"unknown group selection rule {rule!r}; expected one of {GROUP_SELECTION_RULES}")
