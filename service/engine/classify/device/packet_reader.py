"""The GPU path's one read back per step: a group's row table (R, K) copied, non-blocking, into pinned host
memory, with an event the host waits on only when it needs the answers (usually after it has queued the next
step, so the device is not idle while the host reads).

Two pinned buffers, used in turn: the engine holds at most two packets at once (the step it just queued and the
one before, which it reads next). On the CPU a packet is the table itself (already host memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Arrival(Protocol):
    """When a packet has arrived: a CUDA event, or `HeldBack` on the CPU."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


class HeldBack:
    """A CPU packet read as late as a CUDA one would be (tests of the engine's one-step run-ahead on the CPU):
    never reported as arrived until the engine has to wait for it."""

    def query(self) -> bool:
        return False

    def synchronize(self) -> None:
        return None


@dataclass
class Packet:
    """A step's row table on its way to the host."""

    table: torch.Tensor  # (R, K) float64, host memory (pinned on CUDA)
    event: Arrival | None  # recorded after the copy; None: here already (the CPU), read at once

    def read(self) -> np.ndarray:
        """(R, K): waits for the copy (releasing the GIL) if it is still under way."""
        if self.event is not None:
            self.event.synchronize()
        return self.table.numpy()


class PacketReader:
    def __init__(self, device: torch.device, width: int, rows: int = 128, hold_back_on_cpu: bool = False) -> None:
        self.device = device
        self.width = width
        self.hold_back_on_cpu = hold_back_on_cpu
        self._buffers: list[torch.Tensor] = []
        self._next = 0
        if device.type == "cuda":
            self._buffers = [self._pinned(rows) for _ in range(2)]

    def _pinned(self, rows: int) -> torch.Tensor:
        return torch.empty((rows, self.width), dtype=torch.float64, pin_memory=True)

    def send(self, table: torch.Tensor) -> Packet:
        """Start copying `table` (R, K) to the host; the packet says when it has arrived."""
        if self.device.type != "cuda":  # steps make new tables, never write old ones: the table itself will do
            return Packet(table, HeldBack() if self.hold_back_on_cpu else None)
        rows = table.shape[0]
        index, self._next = self._next, 1 - self._next
        if self._buffers[index].shape[0] < rows:  # an eager group beyond the largest bucket
            self._buffers[index] = self._pinned(rows)
        target = self._buffers[index][:rows]
        target.copy_(table, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return Packet(target, event)
