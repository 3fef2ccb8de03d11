"""One input row travelling through an engine, and what comes back for it: text rows for the classifier, images
for the captioner. Both satisfy `QueuedItem`, what the scheduler needs of a row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from beem.policies.exit_policies import ExitPolicy


class QueuedItem(Protocol):
    """What the scheduler reads and writes on a row."""

    deadline: float
    enqueued_at: float
    cancelled: bool

    @property
    def num_tokens(self) -> int: ...

    def drop(self, reason: str) -> None:
        """Answer the row as never computed ("client_gone", "timeout", or an error)."""


@dataclass(frozen=True)
class ExitTrace:
    """What one computed exit said (returned when a request asks for `return_exits`)."""

    layer: int
    label: int
    confidence: float


@dataclass(frozen=True)
class RowOutcome:
    """The answer for one row: its exit's label and distribution, or why it has none."""

    label: int = -1
    probabilities: tuple[float, ...] = ()
    logits: tuple[float, ...] = ()
    exit_layer: int = 0
    exits: tuple[ExitTrace, ...] = ()
    dropped: str | None = None  # "client_gone", "timeout", "shutdown" when the row was never answered


@dataclass(eq=False)
class WorkItem:
    """A tokenized row with its own exit policy. The engine thread owns it once submitted; the event loop only
    flips `cancelled` (a plain bool, atomic under the GIL) when the client leaves or the request times out."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    policy: ExitPolicy
    policy_name: str
    last_layer: int  # deepest layer this row may run (1-based): the request's max_layers or the model's depth
    return_exits: bool
    deadline: float  # time.monotonic() after which the answer is useless
    on_done: Callable[[RowOutcome], None]  # thread-safe: hands the outcome back to the request's event loop
    enqueued_at: float = 0.0
    cancelled: bool = False
    traces: list[ExitTrace] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def drop(self, reason: str) -> None:
        self.on_done(RowOutcome(dropped=reason))


@dataclass(frozen=True)
class CaptionOutcome:
    """A generated caption: token ids (the end token included when produced) and each token's exit layer."""

    tokens: tuple[int, ...] = ()
    exit_layers: tuple[int, ...] = ()
    dropped: str | None = None


@dataclass(eq=False)
class CaptionWorkItem:
    """A decoded, resized image with its exit policy; owned by the engine thread once submitted."""

    image: torch.Tensor  # (3, 224, 224) in [-1, 1]
    policy: ExitPolicy
    policy_name: str
    deadline: float
    on_done: Callable[[CaptionOutcome], None]
    enqueued_at: float = 0.0
    cancelled: bool = False

    @property
    def num_tokens(self) -> int:
        """An image is one unit of the batch budget: its cost does not depend on its file size."""
        return 1

    def drop(self, reason: str) -> None:
        self.on_done(CaptionOutcome(dropped=reason))
