"""One input row travelling through the engine, and what comes back for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from beem.policies.exit_policies import ExitPolicy


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
