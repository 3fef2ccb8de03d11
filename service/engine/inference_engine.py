"""The classification engine: micro-batches run layer by layer in the worker thread (`ModelWorker`).

For every layer it runs the layer and that layer's exit head on the rows still in the batch, lets each row's own
policy decide (the same `ExitPolicy.step` calibration used), answers the rows that exit right then, and compacts
the batch so the rest continue alone. Rows whose client left are dropped between layers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from beem.bundle.bundle_reader import LoadedBundle, load_bundle
from beem.model.layerwise_backbone import EncoderState
from beem.model.multi_exit_model import MultiExitModel
from beem.policies.exit_policies import BLIND_OBSERVATION, ExitObservation, PolicyState
from service.engine.exit_readout import ExitReadout, read_exits
from service.engine.model_worker import ModelWorker
from service.engine.work_item import ExitTrace, RowOutcome, WorkItem

TASK = "classification"


class InferenceEngine(ModelWorker[LoadedBundle, WorkItem]):
    """The classification engine."""

    task = TASK

    def _load_bundle(self, bundle_path: Path) -> LoadedBundle:
        return load_bundle(bundle_path, device=str(self.device), dtype=self.dtype)

    @torch.inference_mode()
    def _warm_up(self) -> None:
        assert self.bundle is not None
        encoded = self.bundle.tokenizer(["warm up the engine"], return_tensors="pt")
        self.bundle.model.all_exit_logits(
            encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
        )

    def _pad(self, batch: list[WorkItem]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        assert self.bundle is not None
        pad_id = self.bundle.tokenizer.pad_token_id or 0
        longest = max(item.num_tokens for item in batch)
        input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)  # (B, T)
        has_types = batch[0].token_type_ids is not None
        token_types = torch.zeros((len(batch), longest), dtype=torch.long) if has_types else None
        for row, item in enumerate(batch):
            input_ids[row, : item.num_tokens] = torch.tensor(item.input_ids)
            attention_mask[row, : item.num_tokens] = 1
            if token_types is not None and item.token_type_ids is not None:
                token_types[row, : item.num_tokens] = torch.tensor(item.token_type_ids)
        move = (lambda t: t.to(self.device, non_blocking=True)) if self.device.type == "cuda" else (lambda t: t)
        return move(input_ids), move(attention_mask), None if token_types is None else move(token_types)

    @torch.inference_mode()
    def run_batch(self, batch: list[WorkItem]) -> None:
        """Run one micro-batch to the end, answering each row as it exits. The worker thread's loop body."""
        assert self.bundle is not None
        model, num_layers = self.bundle.model, self.bundle.num_layers
        for item in batch:
            if item.cancelled:  # the client left while the batch was filling: spend nothing on it
                self._drop(item, 0, "client_gone")
        active = [item for item in batch if not item.cancelled]
        if not active:
            return
        self.metrics.batch_size.observe(len(active))
        state: EncoderState = model.embed(*self._pad(active))
        policy_states = [PolicyState() for _ in active]
        for layer in range(1, num_layers + 1):
            self.metrics.layer_batch_size.labels(str(layer)).observe(len(active))
            state = model.run_layer(state)
            readouts = self._read_exits_if_needed(model, state, active, policy_states, layer)
            keep: list[int] = []
            for row, item in enumerate(active):
                readout = readouts[row] if readouts is not None else None
                observation = _observation(readout)
                decision = item.policy.step(policy_states[row], observation, item.last_layer)
                policy_states[row] = decision.state
                if item.return_exits and readout is not None:
                    item.traces.append(ExitTrace(layer, readout.label, readout.confidence))
                if decision.exit_now:
                    assert readout is not None, "a row exits only at a layer whose exit head ran"
                    self._answer(item, readout, layer)
                elif item.cancelled:  # the client left: no more layers are spent on this row
                    self._drop(item, layer, "client_gone")
                else:
                    keep.append(row)
            if not keep:
                return
            if len(keep) < len(active):
                state = state.select_rows(torch.tensor(keep, device=state.hidden.device))
                active = [active[row] for row in keep]
                policy_states = [policy_states[row] for row in keep]

    @staticmethod
    def _read_exits_if_needed(
        model: MultiExitModel,
        state: EncoderState,
        active: list[WorkItem],
        policy_states: list[PolicyState],
        layer: int,
    ) -> list[ExitReadout] | None:
        """Run this layer's exit head unless no row can use it: depth-only policies (static, full) that do not
        leave here and do not want traces skip it, so `full` costs what a plain forward costs."""
        for item, policy_state in zip(active, policy_states, strict=True):
            if item.policy.reads_exits or item.return_exits or layer >= item.last_layer:
                return read_exits(model.exit_logits(state))
            if item.policy.step(policy_state, BLIND_OBSERVATION, item.last_layer).exit_now:
                return read_exits(model.exit_logits(state))
        return None

    def _answer(self, item: WorkItem, readout: ExitReadout, layer: int) -> None:
        self._account(item, layer)
        item.on_done(RowOutcome(
            label=readout.label,
            probabilities=readout.probabilities,
            logits=readout.logits,
            exit_layer=layer,
            exits=tuple(item.traces),
        ))  # fmt: skip

    def _account(self, item: WorkItem, layer: int) -> None:
        """An answered row: its exit layer, and compute used against what full depth would have used."""
        assert self.bundle is not None
        self.metrics.exit_layer.labels(item.policy_name, TASK).observe(layer)
        self.metrics.layers_computed.labels(TASK).inc(layer)
        self.metrics.layers_possible.labels(TASK).inc(self.bundle.num_layers)


def _observation(readout: ExitReadout | None) -> ExitObservation:
    if readout is None:
        return BLIND_OBSERVATION
    return ExitObservation(readout.label, readout.confidence, readout.entropy)
