"""One row travelling through an engine: a tokenized text for the classifier, an image for the captioner. Both
carry what the admission queue and the ledger need (`QueuedRow`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from beem.policies.exit_policies import ExitPolicy
from service.engine.row_outcome import RowFate, RowOutcome


@dataclass(eq=False, kw_only=True)
class QueuedRow:
    """What every row has. The engine thread owns a row once submitted; the request side only flips `cancelled`
    (a plain bool, atomic under the GIL) when nobody waits for the row any more (`cancel`)."""

    policy: ExitPolicy
    policy_name: str
    deadline: float  # time.monotonic() after which the answer is useless
    on_done: Callable[[RowOutcome], None]  # thread-safe: hands the outcome to the request's event loop
    enqueued_at: float = 0.0  # time.monotonic() when admitted
    joined_at: float = 0.0  # when it left the queue for the engine (TEI's x-queue-time ends here)
    answered_at: float = 0.0  # when its answer was handed back (x-inference-time ends here)
    cancelled: bool = False
    cancelled_as: RowFate = RowFate.CLIENT_GONE  # why: the client left, or a sibling row failed the request
    settled: bool = False  # it has left and been counted (RowLedger): nothing may count or answer it again
    shadow: bool = False  # a shadow row: an answered row re-run at full depth for the agreement monitor, at low
    # priority (it joins only when no request's row waits, and is the first thing shed); no client waits for it

    @property
    def num_tokens(self) -> int:
        """Its size in the token budget."""
        return 1

    def cancel(self, fate: RowFate = RowFate.CLIENT_GONE) -> None:
        """Nobody waits for this row any more: the engine drops it at its next look, counted as `fate`."""
        self.cancelled_as, self.cancelled = fate, True


@dataclass(eq=False, kw_only=True)
class WorkItem(QueuedRow):
    """A tokenized text (or text pair) to classify, with its own exit policy and depth limit."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    last_layer: int  # deepest layer this row may run (1-based): the request's max_layers or the model's depth
    return_exits: bool = False  # list every computed exit in the answer
    wants_distribution: bool = False  # every label's probability and the raw scores, not only the top label

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


@dataclass(eq=False, kw_only=True)
class CaptionWorkItem(QueuedRow):
    """A decoded, resized image to caption with its exit policy. An image is one unit of the token budget: its
    cost does not depend on its file size."""

    image: torch.Tensor  # (3, 224, 224) in [-1, 1]
