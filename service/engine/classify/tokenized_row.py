"""A classification row: a tokenized text (or text pair) with its own exit policy and depth limit."""

from __future__ import annotations

from dataclasses import dataclass

from service.engine.queued_row import QueuedRow


@dataclass(eq=False, kw_only=True)
class TokenizedRow(QueuedRow):
    """A tokenized text (or text pair) to classify, with its own exit policy and depth limit."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    last_layer: int  # deepest layer this row may run (1-based): the request's max_layers or the model's depth
    return_exits: bool = False  # list every computed exit in the answer
    wants_distribution: bool = False  # every label's probability and the raw scores, not only the top label

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)
