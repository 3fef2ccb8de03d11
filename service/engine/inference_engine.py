"""The engine: one thread owns the model and the device and runs micro-batches layer by layer.

For every layer it runs the layer and that layer's exit head on the rows still in the batch, lets each row's own
policy decide (the same `ExitPolicy.step` calibration used), answers the rows that exit right then, and compacts
the batch so the rest continue alone. Rows whose client left are dropped between layers. Lifecycle (DESIGN 5.2):
`load` -> `submit`* -> `close`; `health` says where it is.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from beem.bundle.bundle_reader import LoadedBundle, load_bundle
from beem.model.layerwise_backbone import EncoderState
from beem.model.multi_exit_model import MultiExitModel
from beem.policies.exit_policies import BLIND_OBSERVATION, ExitObservation, PolicyState
from service.engine.batch_scheduler import BatchScheduler
from service.engine.exit_readout import ExitReadout, read_exits
from service.engine.work_item import ExitTrace, RowOutcome, WorkItem
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TASK = "classification"


@dataclass(frozen=True)
class EngineHealth:
    loaded: bool
    warmed_up: bool
    closed: bool
    error: str | None
    queue_depth: int


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """auto -> CUDA in fp16 when a GPU is present, else CPU in fp32 (CPU half-precision matmuls are slow)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but torch sees no CUDA device")
    chosen = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    if dtype == "auto":
        return chosen, torch.float16 if chosen.type == "cuda" else torch.float32
    return chosen, DTYPES[dtype]


class InferenceEngine:
    def __init__(self, scheduler: BatchScheduler, metrics: ServiceMetrics, device: str, dtype: str) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.device, self.dtype = resolve_device(device, dtype)
        self.bundle: LoadedBundle | None = None
        self._warmed_up = False
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def load(self, bundle_path: Path, torch_threads: int | None, start_worker: bool = True) -> None:
        """Load and warm up, then start the worker thread (unless `start_worker` is False: benchmarks then call
        `run_batch` in their own thread). Blocking: call it off the event loop."""
        try:
            if torch_threads:
                torch.set_num_threads(torch_threads)
            self.bundle = load_bundle(bundle_path, device=str(self.device), dtype=self.dtype)
            self.metrics.model_info.labels(self.bundle.name, self.bundle.version).set(1)
            if start_worker:
                warmed = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(warmed,), name="beem-engine", daemon=True)
                self._thread.start()
                warmed.wait()
                if self._error is not None:
                    raise RuntimeError(self._error)
            else:
                self._warm_up()
            self._warmed_up = True
        except Exception as error:
            self._error = f"{type(error).__name__}: {error}"
            log.exception("bundle failed to load")
            raise

    def health(self) -> EngineHealth:
        return EngineHealth(
            loaded=self.bundle is not None,
            warmed_up=self._warmed_up,
            closed=self._thread is not None and not self._thread.is_alive(),
            error=self._error,
            queue_depth=self.scheduler.depth,
        )

    def submit(self, items: list[WorkItem]) -> None:
        self.scheduler.submit(items)

    def close(self, timeout_s: float = 60.0) -> None:
        """Admit nothing more, finish every admitted row, stop the worker."""
        self.scheduler.close()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the worker -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """One forward through every layer and exit head, in the thread that will serve (torch's thread pools are
        per thread), so the first client does not pay for lazy initialisation. Not counted in the metrics."""
        assert self.bundle is not None
        encoded = self.bundle.tokenizer(["warm up the engine"], return_tensors="pt")
        self.bundle.model.all_exit_logits(
            encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
        )

    def _run(self, warmed: threading.Event) -> None:
        try:
            self._warm_up()
        except Exception as error:
            self._error = f"warm-up failed: {type(error).__name__}: {error}"
            return
        finally:
            warmed.set()
        while (batch := self.scheduler.next_batch()) is not None:
            try:
                self.run_batch(batch)
            except Exception as error:  # a bug must not kill the worker: answer the batch as failed, go on
                log.exception("batch failed")
                for item in batch:
                    item.on_done(RowOutcome(dropped=f"error: {type(error).__name__}"))

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

    def _drop(self, item: WorkItem, layers_run: int, reason: str) -> None:
        """A row nobody waits for: count the layers it cost, answer it as dropped."""
        self.metrics.layers_computed.labels(TASK).inc(layers_run)
        self.metrics.dropped_rows.labels(reason).inc()
        item.on_done(RowOutcome(dropped=reason))

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
