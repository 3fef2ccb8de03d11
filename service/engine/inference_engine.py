"""The engine: one thread owns the model and the device and runs micro-batches layer by layer.

For every layer it runs the layer and that layer's exit head on the rows still in the batch, lets each row's own
policy decide (the same `ExitPolicy.step` calibration used), answers the rows that exit right then, and compacts
the batch so the rest continue alone. Rows whose client left are dropped between layers. Lifecycle (DESIGN 5.2):
`load` -> `submit`* -> `close`; `health` says where it is.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from beem.bundle.bundle_reader import LoadedBundle, load_bundle
from beem.calibration.exit_cache import exit_summaries
from beem.model.layerwise_backbone import EncoderState
from beem.policies.exit_policies import ExitObservation, PolicyState
from service.engine.batch_scheduler import BatchScheduler
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

    def load(self, bundle_path: Path, torch_threads: int | None) -> None:
        """Load and warm up, then start the worker thread. Blocking: call it off the event loop."""
        try:
            if torch_threads:
                torch.set_num_threads(torch_threads)
            self.bundle = load_bundle(bundle_path, device=str(self.device), dtype=self.dtype)
            self.metrics.model_info.labels(self.bundle.name, self.bundle.version).set(1)
            self._warm_up(self.bundle)
            self._thread = threading.Thread(target=self._run, name="beem-engine", daemon=True)
            self._thread.start()
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

    def _warm_up(self, bundle: LoadedBundle) -> None:
        encoded = bundle.tokenizer(["warm up the engine"], return_tensors="pt")
        with torch.inference_mode():
            bundle.model.all_exit_logits(
                encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
            )

    def _run(self) -> None:
        while (batch := self.scheduler.next_batch()) is not None:
            try:
                with torch.inference_mode():
                    self._run_batch(batch)
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

    def _run_batch(self, batch: list[WorkItem]) -> None:
        assert self.bundle is not None
        model, num_layers = self.bundle.model, self.bundle.num_layers
        for item in batch:
            if item.cancelled:  # the client left while the batch was filling: spend nothing on it
                self._drop(item, 0, "client_gone")
        batch = [item for item in batch if not item.cancelled]
        if not batch:
            return
        self.metrics.batch_size.observe(len(batch))
        state: EncoderState = model.embed(*self._pad(batch))
        active = batch
        policy_states = [PolicyState() for _ in batch]
        for layer in range(1, num_layers + 1):
            self.metrics.layer_batch_size.labels(str(layer)).observe(len(active))
            state = model.run_layer(state)
            logits = model.exit_logits(state).float()  # (B_active, C)
            labels, confidences, entropies = (t.tolist() for t in exit_summaries(logits))
            keep: list[int] = []
            exiting: list[int] = []
            for row, item in enumerate(active):
                observation = ExitObservation(labels[row], confidences[row], entropies[row])
                decision = item.policy.step(policy_states[row], observation, item.last_layer)
                policy_states[row] = decision.state
                if item.return_exits:
                    item.traces.append(ExitTrace(layer, labels[row], confidences[row]))
                (exiting if decision.exit_now else keep).append(row)
            if exiting:
                self._answer(active, exiting, labels, logits, layer)
            # Rows whose client left stop here: no more layers are spent on them.
            still_wanted = [row for row in keep if not active[row].cancelled]
            for row in keep:
                if active[row].cancelled:
                    self._drop(active[row], layer, "client_gone")
            if not still_wanted:
                return
            if len(still_wanted) < len(active):
                state = state.select_rows(torch.tensor(still_wanted, device=state.hidden.device))
                active = [active[row] for row in still_wanted]
                policy_states = [policy_states[row] for row in still_wanted]

    def _answer(
        self, active: list[WorkItem], rows: list[int], labels: list[int], logits: torch.Tensor, layer: int
    ) -> None:
        chosen = logits[rows]  # (E, C)
        probabilities = torch.softmax(chosen, dim=-1).tolist()
        raw = chosen.tolist()
        for position, row in enumerate(rows):
            item = active[row]
            self._account(item, layer)
            item.on_done(RowOutcome(
                label=labels[row],
                probabilities=tuple(probabilities[position]),
                logits=tuple(raw[position]),
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


def monotonic_deadline(timeout_s: float) -> float:
    return time.monotonic() + timeout_s
