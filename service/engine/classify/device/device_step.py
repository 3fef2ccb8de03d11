"""One layer step of the GPU path as a pure function of fixed-shape tensors, so a CUDA graph can capture it
(`step_graphs.py`) and the CPU can run the very same code eagerly (tests).

A group is (hidden (R, T, H), padding mask (R, T), row table (R, K), `row_columns.py`). Two kinds of step:
- `layer_only`: the layer, for groups whose rows need no exit head here (depth-only rows before the layer they
  leave at). Every row is depth-only, so its state is its depth.
- `with_exit`: the layer, the exit head, the array-form decision for every row, the answers of the rows that
  leave written into their table rows (label, confidence, logits, exit layer), and compaction: a stable sort puts
  the rows still in flight first, so the host can later cut the group to a smaller bucket with a slice. No index
  is built on the host and nothing is read back here: that is the packet reader's one copy.
Nothing here may synchronise with the host (tests/engine/classify/device/test_device_path.py runs it under CUDA's
sync debug mode).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from beem.model.layerwise_backbone import mean_pool_weights
from beem.model.multi_exit_model import MultiExitModel
from beem.policies.array_policies import ExitObservations, decide
from service.engine.classify.device.row_columns import IN_FLIGHT, RowColumns

log = logging.getLogger(__name__)


class DeviceStep:
    def __init__(self, model: MultiExitModel, columns: RowColumns) -> None:
        self.model = model
        self.columns = columns
        self.decide: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        self.decide = self.decide_rows
        self._layer_values: dict[int, torch.Tensor] = {}
        self._layer_numbers: torch.Tensor | None = None  # (L,) float64: 1..L, for the trace column of a layer

    def compile_decisions(self, sample_logits: torch.Tensor, sample_table: torch.Tensor) -> str | None:
        """Fuse the decision's elementwise kernels with torch.compile (one compilation for every row count and
        layer), tried once on sample rows; on any failure (no compiler, no Triton) decisions stay eager. Returns
        the error, or None. The fused kernels compute softmax in their own order: confidences may differ from the
        eager ones in the last bit of float32."""
        compiled = torch.compile(self.decide_rows, dynamic=True, fullgraph=True)
        try:
            for rows in (1, 2):  # torch.compile specialises a dimension of size 1: both compilations now
                compiled(
                    self._layer_value(1, sample_table.device),
                    sample_logits[:1].expand(rows, -1).contiguous(),
                    sample_table[:1].expand(rows, -1).contiguous(),
                )  # contiguous, as the steps pass them
        except Exception as error:
            log.warning("decisions stay eager: torch.compile failed: %s", error)
            return f"{type(error).__name__}: {error}"
        self.decide = compiled
        return None

    def eager_decisions(self) -> None:
        self.decide = self.decide_rows

    def _layer(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        backbone = self.model.backbone
        layer_mask = backbone.sync_free_layer_mask(mask, hidden.dtype)  # (R, 1, T, T)
        return backbone.forward_layer(layer - 1, hidden, layer_mask, backbone.position_bias_for(hidden))

    def layer_only(
        self, layer: int, hidden: torch.Tensor, mask: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer` (1-based) on depth-only rows: new hidden (R, T, H) and table (R, K)."""
        hidden = self._layer(layer, hidden, mask)
        seen, score = self.columns.column("layers_seen"), self.columns.column("score")
        table = table.clone()
        table[:, seen] += 1.0
        table[:, score] = table[:, seen]  # a depth-only row's score is its depth (`RowStates.after_skipped_heads`)
        return hidden, table

    def with_exit(
        self, layer: int, hidden: torch.Tensor, mask: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer `layer`, its exit and every row's decision: hidden (R, T, H), mask (R, T) and table (R, K), rows in
        flight first."""
        hidden = self._layer(layer, hidden, mask)
        logits = self.model.heads(layer - 1, hidden, mask, mean_pool_weights(mask, hidden.dtype))  # (R, C)
        new, order = self.decide(self._layer_value(layer, table.device), logits, table)
        return hidden[order], mask[order], new[order]

    def make_layer_values(self, num_layers: int, device: torch.device) -> None:
        """Every layer's value, before any graph is captured: made inside a capture, it would live in the graphs'
        shared pool, where another graph's replay may overwrite it."""
        for layer in range(1, num_layers + 1):
            self._layer_value(layer, device)
        self._numbers(device)

    def _numbers(self, device: torch.device) -> torch.Tensor:
        """1..L on the device, made once (not a new tensor in every step's decision)."""
        if self._layer_numbers is None:
            count = self.columns.num_layers
            self._layer_numbers = torch.arange(1, count + 1, device=device, dtype=torch.float64)
        return self._layer_numbers

    def _layer_value(self, layer: int, device: torch.device) -> torch.Tensor:
        """The layer as a 0-dim device tensor, one per layer for good: the decision reads the layer as data, so
        one compiled decision serves every layer, and a captured graph reads the same memory at each replay."""
        value = self._layer_values.get(layer)
        if value is None:
            value = self._layer_values[layer] = torch.full((), float(layer), dtype=torch.float64, device=device)
        return value

    def decide_rows(
        self, layer: torch.Tensor, logits: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The array-form decision for every row from the exit of `layer` (0-dim float64, 1-based), its logits
        (R, C): the new table (R, K) and the order (R,) that puts the rows still in flight first. Elementwise work
        on a few hundred numbers in about fifty small kernels: `compile_decisions` fuses them (torch.compile),
        where the backend allows."""
        c = self.columns  # the column layout
        observed = ExitObservations.from_logits(logits, with_entropy=True, with_margin=True)
        folded, exits = decide(c.states(table), observed, c.policies(table))
        in_flight = table[:, c.DONE] == IN_FLIGHT  # (R,)
        leaving = exits & in_flight
        labels = observed.labels.double()
        new = table.clone()
        # Kept for rows in flight: the policy state (R, S), and this exit in the trace (R, L) at the layer's column.
        states = c.states_columns
        new[:, states] = torch.where(in_flight[:, None], c.packed_states(folded), table[:, states])
        this_layer = self._numbers(table.device) == layer  # (L,)
        traced = in_flight[:, None] & this_layer[None, :]  # (R, L)
        new[:, c.trace_labels] = torch.where(traced, labels[:, None], table[:, c.trace_labels])
        new[:, c.trace_confidences] = torch.where(traced, observed.confidences[:, None], table[:, c.trace_confidences])
        # Written for rows that leave: the answer. (R, 3 + C)
        answer = torch.cat((layer.expand(labels.shape)[:, None], labels[:, None], observed.confidences[:, None],
                            logits.float().double()), dim=1)  # fmt: skip
        answer_columns = [c.DONE, c.LABEL, c.CONFIDENCE, *range(c.logits.start, c.logits.stop)]
        new[:, answer_columns] = torch.where(leaving[:, None], answer, table[:, answer_columns])
        order = torch.argsort((new[:, c.DONE] != IN_FLIGHT).to(torch.int32), stable=True)  # (R,) in flight first
        return new, order
