"""Rows at one depth on the GPU path: fixed-shape device tensors (rows and tokens padded to a bucket) and the
host's view of them.

The device holds hidden (R, T, H), the padding mask (R, T) and the row table (R, K, `row_table.py`); rows in
flight come first after every step that may reorder them. The host holds, per row slot (the table's ROW_ID), the
work item (None once the row has left), its length and deadline, and how many rows are still in flight by its
own count, which can only be behind the device's: rows leave on the device first and the host learns it from the
next packet it reads (`unread` counts the packets under way). The first `live` rows always hold every row in
flight, so a group can be cut to a smaller bucket at any time; merging needs the exact rows, so only groups with
nothing unread merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from service.engine.abandoned_rows import CancellationWatch
from service.engine.classify.device.row_columns import RowColumns


@dataclass(eq=False)  # a group is itself: never compared by its tensors
class DeviceGroup:
    hidden: torch.Tensor  # (R, T, H) after `depth` layers
    mask: torch.Tensor  # (R, T) 1 for a token, 0 for padding (placeholder rows: their first token only)
    table: torch.Tensor  # (R, K) float64
    items: np.ndarray  # (N,) object, by row slot: the TokenizedRow, None once it left
    lengths: np.ndarray  # (N,) int64 tokens per slot
    deadlines: np.ndarray  # (N,) float64 time.monotonic() deadlines (inf once the row left)
    live: int  # rows the host has not seen leave
    depth: int
    head_from: int  # the first layer whose exit head some row needs (before it: layer-only steps)
    exit_from: int  # the first layer at which some row can leave (before it: nothing to read back)
    last_layer: int  # the deepest layer any row may run
    oldest_at: float
    watch: CancellationWatch  # when its rows were last searched for cancelled ones
    full_depth: bool = False  # its exits were skipped (`exit_savings.py`): exit statistics learn nothing from it
    shadow_only: bool = False  # every row is a shadow row: it steps only when no other group is waiting
    unread: int = 0  # packets of this group sent and not yet read
    fitted_live: int = -1  # `live` when its shape was last fitted to its rows

    @property
    def num_rows(self) -> int:
        return self.live

    @property
    def capacity(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def width(self) -> int:
        return int(self.hidden.shape[1])

    @property
    def padded_tokens(self) -> int:
        return self.capacity * self.width

    @property
    def earliest_deadline(self) -> float:
        return float(self.deadlines.min())

    def live_slots(self) -> np.ndarray:
        """(N,) bool: the slots whose row has not left."""
        return np.fromiter((item is not None for item in self.items), dtype=bool, count=len(self.items))

    def longest_live(self) -> int:
        live = self.live_slots()
        return int(self.lengths[live].max()) if live.any() else 1

    def cut(self, rows: int, tokens: int) -> None:
        """Keep the first `rows` rows and `tokens` tokens (rows in flight first: a view, no copy)."""
        assert self.live <= rows
        self.hidden = self.hidden[:rows, :tokens]
        self.mask = self.mask[:rows, :tokens]
        self.table = self.table[:rows]

    def compact(self, columns: RowColumns) -> None:
        """Rows in flight first (after the host marked dropped rows on the device)."""
        order = torch.argsort((self.table[:, columns.DONE] != 0).to(torch.int32), stable=True)
        self.hidden, self.mask, self.table = self.hidden[order], self.mask[order], self.table[order]


def padded(tensor: torch.Tensor, rows: int, tokens: int, fill: float = 0.0) -> torch.Tensor:
    """Pad (R, T, ...) with `fill` to (rows, tokens, ...)."""
    tail = (0, 0) * (tensor.dim() - 2)
    return functional.pad(tensor, (*tail, 0, tokens - tensor.shape[1], 0, rows - tensor.shape[0]), value=fill)
