"""The device path's per-row state as one float64 table (R, K): the answer once the row has left, the array form's
policy state and parameters, the exit's logits and the row's exit trace. One tensor per group, so a step moves,
compacts and reads back a group's rows with one operation each, not one per field (each operation is a kernel
launch and, in a CUDA graph, a copy in and out). float64 holds every field exactly: ids, labels and layers are
small integers, scores and confidences are the float64 the array-form policies decide in
(`beem/policies/array_policies.py`).

The state and parameter columns are not listed here: they are the fields of `RowStates` and `RowPolicies`, in
their order, one column each (a 2-D field takes its width: BEEM's weights L, the exit gate's vector), so a policy
that keeps new state needs no change here.

A row is in flight while DONE is 0; DONE is the exit layer once it left, DROPPED once the host dropped it
(timeout, client gone), PLACEHOLDER for the padding rows of a bucket. ROW_ID is the row's slot in its group's host
item array: compaction reorders rows on the device, and the host reads back which slot each row is.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from beem.policies.array_policies import RowPolicies, RowStates
from beem.policies.exit_policies import FullDepthPolicy
from beem.policies.policy_table import ArrayRule

IN_FLIGHT = 0.0
DROPPED = -2.0
PLACEHOLDER = -1.0


class RowColumns:
    """The column layout for a model of `num_layers` exits and `num_labels` labels."""

    ROW_ID, DONE, LABEL, CONFIDENCE = range(4)  # the row and its answer: the device path's own columns

    def __init__(self, num_layers: int, num_labels: int) -> None:
        self.num_layers = num_layers
        self.num_labels = num_labels
        # A one-row example of each dataclass gives every field's dtype and width.
        self._state_dtypes = {f.name: getattr(RowStates.fresh(1), f.name).dtype for f in fields(RowStates)}
        example = RowPolicies.of([FullDepthPolicy()], [num_layers], num_layers, "cpu")
        self._parameter_dtypes = {f.name: getattr(example, f.name).dtype for f in fields(RowPolicies)}
        self._widths = {
            f.name: int(getattr(example, f.name).shape[1])
            for f in fields(RowPolicies)
            if getattr(example, f.name).dim() == 2
        }  # (R, W) fields: BEEM's weights, the gate's vector
        start = self.CONFIDENCE + 1
        self.of: dict[str, slice] = {}  # field name -> its columns
        for name in self._state_dtypes:
            self.of[name] = slice(start, start + 1)
            start += 1
        self.states_columns = slice(self.of[next(iter(self._state_dtypes))].start, start)
        for name in self._parameter_dtypes:
            width = self._widths.get(name, 1)
            self.of[name] = slice(start, start + width)
            start += width
        self.logits = slice(start, start + num_labels)  # the exit's logits (float32 values) once the row left
        self.trace_labels = slice(self.logits.stop, self.logits.stop + num_layers)  # every exit computed so far
        self.trace_confidences = slice(self.trace_labels.stop, self.trace_labels.stop + num_layers)
        self.width = self.trace_confidences.stop

    def column(self, name: str) -> int:
        """The one column of a state or parameter field."""
        columns = self.of[name]
        assert columns.stop == columns.start + 1, f"{name} has {columns.stop - columns.start} columns"
        return columns.start

    def new_rows(self, policies: RowPolicies, row_ids: torch.Tensor) -> torch.Tensor:
        """Fresh rows (R, K) for these policies, every state as `RowStates.fresh`."""
        count = policies.num_rows
        table = torch.zeros((count, self.width), dtype=torch.float64, device=policies.rule.device)
        table[:, self.ROW_ID] = row_ids.double()
        table[:, self.DONE] = IN_FLIGHT
        fresh = RowStates.fresh(count, policies.rule.device)
        for name in self._state_dtypes:
            table[:, self.of[name]] = getattr(fresh, name).double().reshape(count, -1)
        for name in self._parameter_dtypes:
            table[:, self.of[name]] = getattr(policies, name).double().reshape(count, -1)
        return table

    def placeholders(self, count: int, device: torch.device) -> torch.Tensor:
        """(count, K) padding rows of a bucket: never in flight, never answered."""
        table = torch.zeros((count, self.width), dtype=torch.float64, device=device)
        table[:, self.ROW_ID] = -1.0
        table[:, self.DONE] = PLACEHOLDER
        table[:, self.column("last_layer")] = float(self.num_layers)
        return table

    def _read(self, table: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
        columns = table[:, self.of[name]]
        values = columns if name in self._widths else columns[:, 0]
        if dtype == torch.bool:
            return values > 0
        return values if dtype == torch.float64 else values.to(dtype)

    def states(self, table: torch.Tensor) -> RowStates:
        return RowStates(**{name: self._read(table, name, dtype) for name, dtype in self._state_dtypes.items()})

    def policies(self, table: torch.Tensor) -> RowPolicies:
        return RowPolicies(**{name: self._read(table, name, dtype) for name, dtype in self._parameter_dtypes.items()})

    def packed_states(self, states: RowStates) -> torch.Tensor:
        """(R, S) the states as their columns (`states_columns`), in field order."""
        return torch.stack([getattr(states, name).double() for name in self._state_dtypes], dim=1)

    def as_full_depth(self, table: torch.Tensor) -> torch.Tensor:
        """The rows that read their exits turned into depth-only rows that leave at their last layer (their exit
        heads skipped): what the engine does with a group whose exits would not pay. Fresh rows only (depth 0);
        depth-only rows keep their layer."""
        table = table.clone()
        rule, threshold = self.column("rule"), self.column("threshold")
        reads_exits = table[:, rule] != float(ArrayRule.DEPTH)
        table[:, threshold] = torch.where(reads_exits, float("inf"), table[:, threshold])
        table[:, rule] = float(ArrayRule.DEPTH)
        return table
