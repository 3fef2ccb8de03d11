"""The GPU path's per-row state as one float64 table (R, K): policy state, parameters, the answer once the row
has left, and its exit trace. One tensor per group, so a step moves, compacts and reads back a group's rows with
one operation each, not one per field (each operation is a kernel launch and, in a CUDA graph, a copy in and
out). float64 holds every field exactly: ids, labels and layers are small integers, scores and confidences are
the float64 the array-form policies decide in (`beem/policies/array_policies.py`).

A row is in flight while DONE is 0; DONE is the exit layer once it left, DROPPED once the host dropped it
(timeout, client gone), PLACEHOLDER for the padding rows of a bucket. ROW_ID is the row's slot in its group's host
item array: compaction reorders rows on the device, and the host reads back which slot each row is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beem.policies.array_policies import NO_LABEL, RowPolicies, RowStates
from beem.policies.policy_table import ArrayRule

IN_FLIGHT = 0.0
DROPPED = -2.0
PLACEHOLDER = -1.0
FIXED_COLUMNS = ("row_id", "done", "label", "confidence", "score", "previous_label", "agreeing_run", "layers_seen",
                 "rule", "threshold", "count_first_exit", "restart_on_disagree", "last_layer")  # fmt: skip


@dataclass(frozen=True)
class RowTable:
    """The column layout for a model of `num_layers` exits and `num_labels` labels."""

    num_layers: int
    num_labels: int

    ROW_ID, DONE, LABEL, CONFIDENCE, SCORE, PREVIOUS, RUN, SEEN, RULE, THRESHOLD, COUNT_FIRST, RESTART, LAST = range(
        len(FIXED_COLUMNS)
    )

    @property
    def weights(self) -> slice:  # BEEM's w_1..w_L
        return slice(len(FIXED_COLUMNS), len(FIXED_COLUMNS) + self.num_layers)

    @property
    def logits(self) -> slice:  # the exit's logits (float32 values) once the row left
        return slice(self.weights.stop, self.weights.stop + self.num_labels)

    @property
    def trace_labels(self) -> slice:  # label of every exit computed so far
        return slice(self.logits.stop, self.logits.stop + self.num_layers)

    @property
    def trace_confidences(self) -> slice:
        return slice(self.trace_labels.stop, self.trace_labels.stop + self.num_layers)

    @property
    def width(self) -> int:
        return self.trace_confidences.stop

    def new_rows(self, policies: RowPolicies, row_ids: torch.Tensor) -> torch.Tensor:
        """Fresh rows (R, K) for these policies, every state as `RowStates.fresh`."""
        count = policies.num_rows
        table = torch.zeros((count, self.width), dtype=torch.float64, device=policies.rule.device)
        table[:, self.ROW_ID] = row_ids.double()
        table[:, self.DONE] = IN_FLIGHT
        table[:, self.PREVIOUS] = NO_LABEL
        table[:, self.RULE] = policies.rule.double()
        table[:, self.THRESHOLD] = policies.threshold
        table[:, self.COUNT_FIRST] = policies.count_first_exit.double()
        table[:, self.RESTART] = policies.restart_on_disagree.double()
        table[:, self.LAST] = policies.last_layer.double()
        table[:, self.weights] = policies.weights
        return table

    def placeholders(self, count: int, device: torch.device) -> torch.Tensor:
        """(count, K) padding rows of a bucket: never in flight, never answered."""
        table = torch.zeros((count, self.width), dtype=torch.float64, device=device)
        table[:, self.ROW_ID] = -1.0
        table[:, self.DONE] = PLACEHOLDER
        table[:, self.LAST] = float(self.num_layers)
        return table

    def states(self, table: torch.Tensor) -> RowStates:
        return RowStates(score=table[:, self.SCORE], previous_label=table[:, self.PREVIOUS].long(),
                         agreeing_run=table[:, self.RUN].long(), layers_seen=table[:, self.SEEN].long())  # fmt: skip

    def policies(self, table: torch.Tensor) -> RowPolicies:
        return RowPolicies(rule=table[:, self.RULE].long(), threshold=table[:, self.THRESHOLD],
                           weights=table[:, self.weights], count_first_exit=table[:, self.COUNT_FIRST] > 0,
                           restart_on_disagree=table[:, self.RESTART] > 0,
                           last_layer=table[:, self.LAST].long())  # fmt: skip

    def as_full_depth(self, table: torch.Tensor) -> torch.Tensor:
        """The rows that read their exits turned into depth-only rows that leave at their last layer (their exit
        heads skipped): what the engine does with a group whose exits would not pay. Fresh rows only (depth 0);
        depth-only rows keep their layer."""
        table = table.clone()
        reads_exits = table[:, self.RULE] != float(ArrayRule.DEPTH)
        table[:, self.THRESHOLD] = torch.where(reads_exits, float("inf"), table[:, self.THRESHOLD])
        table[:, self.RULE] = float(ArrayRule.DEPTH)
        return table
