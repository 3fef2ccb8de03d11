"""One layer step of the GPU path as a pure function of fixed-shape tensors, so a CUDA graph can capture it
(`step_graphs.py`) and the CPU can run the very same code eagerly (tests).

A group is (hidden (R, T, H), padding mask (R, T), row table (R, K), `row_table.py`). Two kinds of step:
- `layer_only`: the layer, for groups whose rows need no exit head here (depth-only rows before the layer they
  leave at). Every row is depth-only, so its state is its depth.
- `with_exit`: the layer, the exit head, the array-form decision for every row, the answers of the rows that
  leave written into their table rows (label, confidence, logits, exit layer), and compaction: a stable sort puts
  the rows still in flight first, so the host can later cut the group to a smaller bucket with a slice. No index
  is built on the host and nothing is read back here: that is the packet reader's one copy.
Nothing here may synchronise with the host (tests/engine/test_device_path.py runs it under CUDA's sync debug mode).
"""

from __future__ import annotations

import torch

from beem.model.layerwise_backbone import mean_pool_weights
from beem.model.multi_exit_model import MultiExitModel
from beem.policies.array_policies import ExitObservations, decide
from service.engine.row_table import IN_FLIGHT, RowTable


class DeviceStep:
    def __init__(self, model: MultiExitModel, table: RowTable) -> None:
        self.model = model
        self.table = table

    def _layer(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        backbone = self.model.backbone
        layer_mask = backbone.sync_free_layer_mask(mask, hidden.dtype)  # (R, 1, T, T)
        return backbone.forward_layer(layer - 1, hidden, layer_mask, backbone.position_bias_for(hidden))

    def layer_only(
        self, layer: int, hidden: torch.Tensor, mask: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer` (1-based) on depth-only rows: new hidden (R, T, H) and table (R, K)."""
        hidden = self._layer(layer, hidden, mask)
        t = self.table
        table = table.clone()
        table[:, t.SEEN] += 1.0
        table[:, t.SCORE] = table[:, t.SEEN]  # a depth-only row's score is its depth (`RowStates.after_skipped_heads`)
        return hidden, table

    def with_exit(
        self, layer: int, hidden: torch.Tensor, mask: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer `layer`, its exit and every row's decision: hidden (R, T, H), mask (R, T) and table (R, K), rows in
        flight first."""
        t = self.table
        hidden = self._layer(layer, hidden, mask)
        logits = self.model.heads(layer - 1, hidden, mask, mean_pool_weights(mask, hidden.dtype))  # (R, C)
        observed = ExitObservations.from_logits(logits, with_entropy=True)
        folded, exits = decide(t.states(table), observed, t.policies(table))
        in_flight = table[:, t.DONE] == IN_FLIGHT  # (R,)
        leaving = exits & in_flight
        labels = observed.labels.double()
        new = table.clone()
        for column, value in ((t.SCORE, folded.score), (t.PREVIOUS, folded.previous_label.double()),
                              (t.RUN, folded.agreeing_run.double()), (t.SEEN, folded.layers_seen.double()),
                              (t.trace_labels.start + layer - 1, labels),
                              (t.trace_confidences.start + layer - 1, observed.confidences)):  # fmt: skip
            new[:, column] = torch.where(in_flight, value, table[:, column])
        for column, value in ((t.DONE, torch.full_like(labels, float(layer))), (t.LABEL, labels),
                              (t.CONFIDENCE, observed.confidences)):  # fmt: skip
            new[:, column] = torch.where(leaving, value, table[:, column])
        new[:, t.logits] = torch.where(leaving[:, None], logits.float().double(), table[:, t.logits])
        order = torch.argsort((new[:, t.DONE] != IN_FLIGHT).to(torch.int32), stable=True)  # (R,) in flight first
        return hidden[order], mask[order], new[order]
