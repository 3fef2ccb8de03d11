"""What every engine shares (DESIGN 5.2): one thread owns the model and the device, takes batches from the
scheduler and runs them; lifecycle `load` -> `submit`* -> `close`, and `health` says where it is.

Subclasses say how a bundle loads (`_load_bundle`), how it warms up, and how a batch runs (`run_batch`): the
classification engine runs encoder layers with per-row exits, the caption engine decodes with per-token exits.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import torch

from beem.bundle.bundle_reader import ManifestFields
from service.engine.batch_scheduler import BatchScheduler
from service.engine.work_item import QueuedItem
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ItemT = TypeVar("ItemT", bound=QueuedItem)
BundleT = TypeVar("BundleT", bound=ManifestFields)


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


class ModelWorker(ABC, Generic[BundleT, ItemT]):
    task: ClassVar[str]  # the `task` label of this engine's metrics

    def __init__(self, scheduler: BatchScheduler[ItemT], metrics: ServiceMetrics, device: str, dtype: str) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.device, self.dtype = resolve_device(device, dtype)
        self.bundle: BundleT | None = None
        self._warmed_up = False
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _load_bundle(self, bundle_path: Path) -> BundleT: ...

    @abstractmethod
    def _warm_up(self) -> None:
        """One forward in the thread that will serve (torch's thread pools are per thread), so the first client
        does not pay for lazy initialisation. Not counted in the metrics."""

    @abstractmethod
    def run_batch(self, batch: list[ItemT]) -> None:
        """Run one batch to the end, answering each row as soon as it is done. The worker thread's loop body."""

    def _drop(self, item: ItemT, layers_run: int, reason: str) -> None:
        """A row nobody waits for, or that could not be computed: count the layers it cost, answer it as
        dropped."""
        self.metrics.layers_computed.labels(self.task).inc(layers_run)
        self.metrics.dropped_rows.labels(reason).inc()
        item.drop(reason)

    # -- lifecycle --------------------------------------------------------------------------------------------

    def load(self, bundle_path: Path, torch_threads: int | None, start_worker: bool = True) -> None:
        """Load and warm up, then start the worker thread (unless `start_worker` is False: benchmarks then call
        `run_batch` in their own thread). Blocking: call it off the event loop."""
        try:
            if torch_threads:
                torch.set_num_threads(torch_threads)
            if self.device.type == "cuda":
                # cuDNN's attention builds an execution plan for every new (rows, length) shape, and serving makes
                # new shapes all the time (batches fill unevenly, rows exit, captions grow a token per step): on an
                # H100 a batch of captions took seconds in plan building. Flash / memory-efficient kernels do not.
                torch.backends.cuda.enable_cudnn_sdp(False)
            self.bundle = self._load_bundle(bundle_path)
            self.metrics.model_info.labels(self.bundle.name, self.bundle.version, self.task).set(1)
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

    def submit(self, items: list[ItemT]) -> None:
        self.scheduler.submit(items)

    def close(self, timeout_s: float = 60.0) -> None:
        """Admit nothing more, finish every admitted row, stop the worker."""
        self.scheduler.close()
        if self._thread is not None:
            self._thread.join(timeout_s)

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
                    item.drop(f"error: {type(error).__name__}")
