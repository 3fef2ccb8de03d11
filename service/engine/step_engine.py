"""What every engine shares (DESIGN 5.2 and 6): one thread owns the model and the device and runs a loop of steps;
lifecycle `load` -> `submit`* -> `close`, and `health` says where it is.

The loop: when nothing is in flight, wait for work; between any two steps, admit queued rows within the budgets
(which count the rows already in flight); run one step (a layer for a group of rows, or a token for every caption);
answer the rows that finish at once. A step that raises fails only its own rows (500) and the loop goes on. The
rows that leave per busy second feed the drain rate that admission divides by.

Each task's engine (`classify/`, `caption/`) says how a bundle loads and warms up, how queued rows join (`_join`),
what one step is (`_step`), and which rows a failed step takes with it (`_rows_of_failed_step`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch

from beem.bundle.bundle_reader import ManifestFields
from beem.bundle.manifest import Manifest
from service.engine.admission_queue import AdmissionQueue
from service.engine.drain_rate import DrainRate
from service.engine.queued_row import QueuedRow
from service.engine.row_ledger import RowLedger
from service.engine.row_outcome import RowAnswer, RowFate
from service.engine.thread_priority import background_priority
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ItemT = TypeVar("ItemT", bound=QueuedRow)
BundleT = TypeVar("BundleT", bound=ManifestFields)


@dataclass(frozen=True)
class EngineBudget:
    """What may be in flight at once, and how the next group is chosen."""

    """The server settings of the same names."""

    max_batch_size: int  # rows in the engine at once, at any depth
    max_batch_tokens: int  # padded tokens in the engine at once (rows x their group's longest row, summed)
    group_selection: str = "oldest"  # classification's rule (classify/group_selection.py); it checks the name


@dataclass(frozen=True)
class EngineHealth:
    loaded: bool
    warmed_up: bool
    closed: bool
    error: str | None
    queue_depth: int
    inflight_rows: int


@dataclass(frozen=True)
class ServingThread:
    """The thread that serves, as its set-up left it: what a regression in its configuration shows up in."""

    native_id: int  # the OS thread id (its nice value is read live from it)
    torch_threads: int  # torch.get_num_threads() in that thread once set-up finished (OpenMP's count is per thread)

    def nice(self) -> int | None:
        """The thread's nice value now; None where threads have no priority of their own (not Linux)."""
        try:
            return os.getpriority(os.PRIO_PROCESS, self.native_id)
        except (AttributeError, OSError):
            return None


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """auto -> CUDA in fp16 when a GPU is present, else CPU in fp32 (CPU half-precision matmuls are slow)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but torch sees no CUDA device")
    chosen = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    if dtype == "auto":
        return chosen, torch.float16 if chosen.type == "cuda" else torch.float32
    return chosen, DTYPES[dtype]


class StepEngine(ABC, Generic[BundleT, ItemT]):
    def __init__(
        self,
        *,
        task: str,
        queue: AdmissionQueue[ItemT],
        ledger: RowLedger,
        drain: DrainRate,
        metrics: ServiceMetrics,
        budget: EngineBudget,
        device: str,
        dtype: str,
    ) -> None:
        self.task = task  # the `task` label of this engine's metrics (service/tasks.py)
        self.queue = queue
        self.ledger = ledger
        self.drain = drain
        self.metrics = metrics
        self.budget = budget
        self.device, self.dtype = resolve_device(device, dtype)
        self.bundle: BundleT | None = None
        self._warmed_up = False
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._stop_now = False
        self._rows_left = 0  # rows that left the engine (answered or dropped after joining it), for the drain rate
        self._cancellations = 0  # bumped by the event loop when a client leaves: rows in flight need a look
        self.loading_threads: int | None = None  # torch threads while loading (default: serving's)
        self.serving_thread: ServingThread | None = None  # set once loaded, warmed up and set up

    # -- what each engine says -------------------------------------------------------------------------------

    @abstractmethod
    def _load_bundle(self, bundle_path: Path, manifest: Manifest | None) -> BundleT: ...

    @abstractmethod
    def _warm_up(self) -> None:
        """Run the model in the thread that will serve (torch's thread pools are per thread), so the first
        client does not pay for lazy initialisation. Not counted in the metrics."""

    @property
    @abstractmethod
    def inflight_rows(self) -> int: ...

    @property
    @abstractmethod
    def inflight_tokens(self) -> int: ...

    @abstractmethod
    def _join(self, items: list[ItemT]) -> None:
        """Queued rows enter the engine (embedded or encoded), ready for their first step."""

    @abstractmethod
    def _step(self) -> None:
        """One step: answer the rows it finishes, keep the others."""

    @abstractmethod
    def _rows_of_failed_step(self) -> Sequence[tuple[ItemT, int]]:
        """After `_step` raised: the rows it was running (with the layers each had run); they leave with 500."""

    @abstractmethod
    def _all_rows(self) -> Sequence[tuple[ItemT, int]]:
        """Every row in flight, with the layers it has run (shutdown cuts them off when draining takes too
        long)."""

    # -- how rows leave: through the ledger, counted for the drain rate ---------------------------------------

    def _answer(self, item: ItemT, answer: RowAnswer) -> None:
        self._rows_left += self.ledger.answer(item, answer)

    def _drop(self, items: Iterable[ItemT], fate: RowFate, layers_run: int, detail: str = "") -> None:
        self._rows_left += self.ledger.drop(items, fate, layers_run, detail)

    def notice_cancellation(self) -> None:
        """A client left (event loop thread): its rows are dropped before the next step spends anything on them."""
        self._cancellations += 1

    # -- lifecycle --------------------------------------------------------------------------------------------

    def load(
        self,
        bundle_path: Path,
        torch_threads: int | None,
        start_worker: bool = True,
        manifest: Manifest | None = None,
        set_up: Callable[[BundleT], None] | None = None,
    ) -> None:
        """Load and warm up in the engine thread, which then serves (unless `start_worker` is False: then here, and
        benchmarks call `run_until_idle` in this thread). Blocking: call it off the event loop. `manifest`: the
        bundle's, when the caller has read and verified it already (the server, at start-up). `set_up`: the
        caller's own work on the loaded bundle that uses torch (the shadow monitor's calibration agreement levels),
        run there too, after warm-up; an error in it fails the load.

        Every torch op of the process runs in that one thread, loading and set-up included. Why: each thread that
        runs a parallel torch op gets an OpenMP thread pool of its own, and once libgomp manages more threads than
        there are cores it stops spinning between parallel regions, so every one of the hundreds of regions in a
        forward pays a futex wake-up. Measured on the 2-core CPU: a MiniLM forward at batch 1 took 6.4 ms when one
        thread did everything, 8.2-9.2 ms in a thread after another thread had loaded the model; a served caption
        took 221 ms instead of 69 ms at full depth after the shadow monitor's levels were computed in the loading
        caller's thread (issue 21)."""
        if not start_worker:
            self._load_and_warm_up(bundle_path, torch_threads, manifest, set_up)
            return
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(bundle_path, torch_threads, ready, manifest, set_up),
                                        name="beem-engine", daemon=True)  # fmt: skip
        self._thread.start()
        ready.wait()
        if self._error is not None:
            raise RuntimeError(self._error)

    def _load_and_warm_up(
        self,
        bundle_path: Path,
        torch_threads: int | None,
        manifest: Manifest | None,
        set_up: Callable[[BundleT], None] | None = None,
    ) -> None:
        serving_threads = torch_threads or torch.get_num_threads()
        try:
            torch.set_num_threads(self.loading_threads or serving_threads)
            if self.device.type == "cuda":
                # cuDNN's attention builds an execution plan for every new (rows, length) shape, and serving makes
                # new shapes all the time (groups merge and shrink, captions grow a token per step): on an H100 a
                # batch of captions took seconds in plan building. Flash / memory-efficient kernels do not.
                torch.backends.cuda.enable_cudnn_sdp(False)
            with background_priority() if self.loading_threads else contextlib.nullcontext():
                self.bundle = self._load_bundle(bundle_path, manifest)
            self.metrics.model_info.labels(self.bundle.name, self.bundle.version, self.task).set(1)
        except Exception as error:
            self._error = f"{type(error).__name__}: {error}"
            log.exception("bundle failed to load")
            raise
        torch.set_num_threads(serving_threads)  # warm up as it will serve: its thread pool is made here
        try:
            self._warm_up()
        except Exception as error:
            self._error = f"warm-up failed: {type(error).__name__}: {error}"
            log.exception("warm-up failed")
            raise
        if set_up is not None:
            try:
                set_up(self.bundle)
            except Exception as error:
                self._error = f"set-up failed: {type(error).__name__}: {error}"
                log.exception("set-up after loading failed")
                raise
        self.serving_thread = ServingThread(threading.get_native_id(), torch.get_num_threads())
        self._warmed_up = True

    def health(self) -> EngineHealth:
        return EngineHealth(
            loaded=self.bundle is not None,
            warmed_up=self._warmed_up,
            closed=self._thread is not None and not self._thread.is_alive(),
            error=self._error,
            queue_depth=self.queue.depth,
            inflight_rows=self.inflight_rows,
        )

    def submit(self, items: list[ItemT]) -> None:
        self.queue.submit(items)

    def close(self, timeout_s: float = 60.0) -> None:
        """Admit nothing more, finish every admitted row, stop the engine thread. Rows still in flight after
        `timeout_s` leave as shutdown."""
        self.queue.close()
        if self._thread is None:
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._stop_now = True
            self._thread.join(10.0)

    def release(self) -> None:
        """Let the weights go, after `close` (the engine holds the last references: freed by reference counting)."""
        self.bundle = None
        self._release_loaded()

    @abstractmethod
    def _release_loaded(self) -> None:
        """Drop everything made from the bundle at load (it references the weights)."""

    # -- the loop ---------------------------------------------------------------------------------------------

    def _run(
        self,
        bundle_path: Path,
        torch_threads: int | None,
        ready: threading.Event,
        manifest: Manifest | None,
        set_up: Callable[[BundleT], None] | None,
    ) -> None:
        try:
            self._load_and_warm_up(bundle_path, torch_threads, manifest, set_up)
        except Exception:
            return  # `load` raises the error in its caller's thread
        finally:
            ready.set()
        fate, detail = RowFate.SHUTDOWN, ""
        try:
            while self.run_until_idle() or self.queue.wait_for_work():
                if self._stop_now:
                    break
        except Exception as error:
            # A fault outside a step's own guard (the queue, the bookkeeping): nothing says the engine's state is
            # sound, so it stops. New requests get 503 with the reason, /readyz says it, and no admitted row is
            # left waiting for its timeout.
            self._error = f"engine loop failed: {type(error).__name__}: {error}"
            log.exception("the engine loop stopped")
            fate, detail = RowFate.ERROR, self._error
            self.queue.close(f"the engine stopped: {self._error}")
        for item, layers in self._all_rows():
            self._drop([item], fate, layers, detail)
        self.ledger.drop(self.queue.take(1 << 30, 1 << 62, engine_empty=True), fate, 0, detail)

    def run_until_idle(self) -> bool:
        """Admit and step until nothing is in flight or queued; False when there was nothing to do. The engine
        thread's loop body (benchmarks call it in their own thread)."""
        did_work = False
        while not self._stop_now and self.step_once():
            did_work = True
        return did_work

    def step_once(self) -> bool:
        """Admit what fits, then run one step; False when nothing was in flight (no step ran)."""
        started = time.perf_counter()
        left_before = self._rows_left
        self._admit()
        if not self.inflight_rows:
            self._publish(0)
            return False
        try:
            self._step()
        except Exception as error:  # a bug or a bad input must not kill the engine: fail this step's rows
            failed = self._rows_of_failed_step()
            if not failed:
                raise  # no rows to blame: the engine itself is at fault, and the same step would fail again
            log.exception("engine step failed")
            for item, layers in failed:
                self._drop([item], RowFate.ERROR, layers, f"{type(error).__name__}: {error}")
        self.drain.record(self._rows_left - left_before, time.perf_counter() - started)
        if self._rows_left != left_before:
            self.metrics.drain_rate.set(self.drain.rows_per_s or 0.0)
            self._publish(self.inflight_rows)
        return True

    def _publish(self, inflight: int) -> None:
        """The room admission may count on, and the in-flight gauge (only when rows came or went: a step's Python
        runs with cold caches, so the loop does no bookkeeping it does not need)."""
        self.queue.report_load(inflight)
        self.metrics.inflight_rows.set(inflight)

    def _admit(self) -> None:
        room_rows = self.budget.max_batch_size - self.inflight_rows
        if room_rows <= 0:
            return
        if not self.queue.depth and not self.queue.shadow_depth:
            return
        items = self.queue.take(room_rows, self.budget.max_batch_tokens - self.inflight_tokens, not self.inflight_rows)
        if not items:
            return
        self.metrics.batch_size.observe(len(items))
        self._publish(self.inflight_rows + len(items))
        try:
            self._join(items)
        except Exception as error:
            log.exception("rows could not join the engine")
            self._drop(items, RowFate.ERROR, 0, f"{type(error).__name__}: {error}")
            self._publish(self.inflight_rows)
